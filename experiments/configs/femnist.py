"""LEAF FEMNIST with its natural clients (one per writer), Fang et al.'s CNN: untargeted model
poisoning (sign flipping, ALIE, the Fang trim attack) and a pixel backdoor against mean, median,
trimmed mean, Krum and FLAME.

Needs LEAF's FEMNIST JSON files (``--data_dir``); ``--dataset=synthetic:femnist`` runs the same grid
on a stand-in with FEMNIST's shapes (labelled synthetic in every output).

    python -m experiments.sweep --config=experiments/configs/femnist.py --data_dir=DIR --output_dir=results/femnist
"""

from experiments.configs import SweepSpec
from fljax.experiment import ExperimentConfig


def get_config() -> SweepSpec:
    base = ExperimentConfig(
        dataset="femnist",
        model="cnn",
        partition="natural",
        num_clients=100,
        clients_per_round=20,
        num_malicious=20,
        attack="none",
        aggregator="mean",
        protocol="fedavg",
        local_epochs=1,
        batch_size=32,
        client_lr=0.05,
        rounds=500,
        eval_every=50,
        seed=0,
    )
    return SweepSpec(
        base=base,
        attacks=["none", "sign_flip(scale=10.0)", "alie", "fang_trim", "backdoor(target_label=0)"],
        aggregators=["mean", "median", "trimmed_mean", "krum", "flame"],
        malicious_fractions=[0.2],
        partitions=["natural"],
        seeds=[0],
        description="FEMNIST (LEAF, natural clients), CNN: untargeted and backdoor attacks vs five rules.",
    )
