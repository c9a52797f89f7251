"""Karimireddy, He, Jaggi, "Byzantine-Robust Learning on Heterogeneous Datasets via Bucketing",
ICLR 2022: MNIST over 25 clients, 5 of them Byzantine, sorted (label-sorted shards) non-IID
data; Krum, coordinate-wise median, RFA (geometric median) and centered clipping, each with and
without bucketing (s = 2), against mimic, ALIE and IPM (and bit flipping / label flipping).

    python -m experiments.sweep --config=experiments/configs/karimireddy2022.py --output_dir=results/karimireddy2022

Variants: ``bucketing(bucket_size=2)+<rule>`` is the rule behind fljax's ``bucketing``
pre-aggregation. The paper's attack tables use worker momentum 0.9 (the authors' heavy-ball form);
this preset was measured with server momentum (FedAvgM) before fljax had worker momentum, and
keeps it so that it matches the table in experiments/reproductions/README.md. The paper's setting
is ``--grid=worker_momentum=0.9 --grid=server_momentum=0.0
--grid=worker_momentum_convention=heavy_ball`` (``fljax.momentum``). Centered clipping's radius tau is a preset setting
(``clip_radius``) to tune per model scale. Bit flipping is ``sign_flip(scale=1.0)`` (-x), IPM's
epsilon is 0.1.
"""

from experiments.configs import SweepSpec
from fljax.experiment import ExperimentConfig

RULES = ["krum", "median", "rfa", "centered_clipping(clip_radius=1.0)"]


def get_config() -> SweepSpec:
    base = ExperimentConfig(
        dataset="mnist5k",
        model="mlp",
        partition="shards",
        shards_per_client=1,
        num_clients=25,
        clients_per_round=25,
        num_malicious=5,
        attack="alie",
        aggregator="krum",
        protocol="fedavg",
        local_steps=1,
        batch_size=32,
        client_lr=0.1,
        server_momentum=0.9,
        rounds=300,
        eval_every=25,
        seed=0,
    )
    return SweepSpec(
        base=base,
        attacks=["none", "sign_flip(scale=1.0)", "label_flip_all", "mimic", "alie", "ipm(epsilon=0.1)"],
        aggregators=["mean"] + [r for rule in RULES for r in (rule, f"bucketing(bucket_size=2)+{rule}")],
        malicious_fractions=[0.2],
        partitions=["shards:1"],
        seeds=[0, 1, 2],
        pending=[],  # bucketing (pre_aggregation), rfa, centered_clipping, mimic, alie, ipm: pending when written, registered now
        description="Karimireddy et al. 2022 (bucketing): MNIST, 25 clients, 5 Byzantine, sorted non-IID.",
    )
