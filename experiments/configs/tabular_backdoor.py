"""A feature-space backdoor on tabular data (Severi et al., USENIX Security 2021) on
scikit-learn's Wisconsin breast cancer set (569 examples, 30 features; Fang et al. 2020 also
used it): 20 clients, 4 malicious, the trigger sets features 20-24 (the "worst" measurements) to
their 99th training percentile and relabels to class 1 (benign).

    python -m experiments.sweep --config=experiments/configs/tabular_backdoor.py --output_dir=results/tabular_backdoor
"""

from experiments.configs import SweepSpec
from fljax.experiment import ExperimentConfig

TRIGGER = "feature_trigger(target_label=1, trigger_features='20,21,22,23,24')"


def get_config() -> SweepSpec:
    base = ExperimentConfig(
        dataset="breast_cancer",
        model="mlp",
        partition="iid",
        num_clients=20,
        clients_per_round=20,
        num_malicious=4,
        attack=TRIGGER,
        aggregator="mean",
        protocol="fedavg",
        local_epochs=2,
        batch_size=16,
        client_lr=0.05,
        rounds=30,
        eval_every=5,
        seed=0,
    )
    return SweepSpec(
        base=base,
        attacks=["none", TRIGGER],
        aggregators=["mean", "median", "trimmed_mean", "krum"],
        malicious_fractions=[0.2],
        partitions=["iid"],
        seeds=[0, 1, 2],
        description="Feature-space (tabular) backdoor vs mean / median / trimmed mean / Krum, 20% malicious.",
    )
