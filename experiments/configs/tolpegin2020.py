"""Tolpegin, Truex, Gursoy, Liu, "Data Poisoning Attacks Against Federated Learning Systems",
ESORICS 2020: targeted label flipping (source class -> target class) as the malicious share of
the population grows from 2% to 50%, under plain FedAvg (and robust rules for comparison).
The paper reports the source class's recall and the global accuracy; fljax measures both
(``source_recall``: the share of source-class test images classified as the source class) and
the attack success rate (the share classified as the target class).

    python -m experiments.sweep --config=experiments/configs/tolpegin2020.py --output_dir=results/tolpegin2020

The paper uses CIFAR-10 (dog -> cat) and Fashion-MNIST (shirt -> T-shirt); offline this runs on
``mnist5k`` with 5 -> 3; ``--dataset=tfds:fashion_mnist --attacks='none,label_flip(source=6, target=0)'``
reproduces the Fashion-MNIST pair. Krum / trimmed mean cells beyond their tolerated f are
reported as invalid, not run.
"""

from experiments.configs import SweepSpec
from fljax.experiment import ExperimentConfig


def get_config() -> SweepSpec:
    base = ExperimentConfig(
        dataset="mnist5k",
        model="mlp",
        partition="iid",
        num_clients=50,
        clients_per_round=50,
        num_malicious=5,
        attack="label_flip(source=5, target=3)",
        aggregator="mean",
        protocol="fedavg",
        local_epochs=1,
        batch_size=32,
        client_lr=0.1,
        rounds=50,
        eval_every=10,
        seed=0,
    )
    return SweepSpec(
        base=base,
        attacks=["none", "label_flip(source=5, target=3)"],
        aggregators=["mean", "median", "trimmed_mean", "krum"],
        malicious_fractions=[0.02, 0.04, 0.1, 0.2, 0.3, 0.4, 0.5],
        partitions=["iid"],
        seeds=[0, 1, 2],
        description="Tolpegin et al. 2020: targeted label flipping 5 -> 3 as the malicious share grows.",
    )
