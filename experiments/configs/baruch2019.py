"""Baruch, Baruch, Goldberg, "A Little Is Enough: Circumventing Defenses For Distributed
Learning", NeurIPS 2019: ALIE (mu + z * sigma, z from n and f) against Krum, trimmed mean and
Bulyan (and the mean / median), on MNIST with 20% of the workers Byzantine.

    python -m experiments.sweep --config=experiments/configs/baruch2019.py --output_dir=results/baruch2019

Bulyan needs n >= 4f + 3: with 50 clients per round it tolerates f <= 11.
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
        num_malicious=10,
        attack="alie",
        aggregator="krum",
        protocol="fedavg",
        local_steps=1,
        batch_size=32,
        client_lr=0.1,
        server_momentum=0.9,
        rounds=200,
        eval_every=20,
        seed=0,
    )
    return SweepSpec(
        base=base,
        attacks=["none", "alie"],
        aggregators=["mean", "krum", "trimmed_mean", "bulyan", "median"],
        malicious_fractions=[0.2],
        partitions=["iid"],
        seeds=[0, 1, 2],
        pending=[],  # alie and bulyan: pending when written, registered now
        description="Baruch et al. 2019 (ALIE): MNIST, 20% Byzantine.",
    )
