"""CIFAR-10 with ResNet-18 (CIFAR stem, GroupNorm), 100 clients with Dirichlet(0.5) labels, the
setting most robust-aggregation papers and the peer kits publish on: untargeted model poisoning
and a pixel backdoor against mean, median, trimmed mean, Krum, centered clipping and FLAME.

Needs TFDS's cifar10 prepared (offline: ``tfds.load(..., download=False)``); on a CPU this is
hours per cell: run it on an accelerator. ``--dataset=synthetic:cifar10`` runs the grid on a
stand-in with CIFAR-10's shapes (labelled synthetic in every output).

    python -m experiments.sweep --config=experiments/configs/cifar10_resnet18.py --output_dir=results/cifar10_resnet18
"""

from experiments.configs import SweepSpec
from fljax.experiment import ExperimentConfig


def get_config() -> SweepSpec:
    base = ExperimentConfig(
        dataset="cifar10",
        model="resnet18",
        partition="dirichlet",
        dirichlet_alpha=0.5,
        num_clients=100,
        clients_per_round=10,
        num_malicious=20,
        attack="none",
        aggregator="mean",
        protocol="fedavg",
        local_epochs=2,
        batch_size=64,
        client_lr=0.01,
        rounds=200,
        eval_every=20,
        seed=0,
    )
    return SweepSpec(
        base=base,
        attacks=["none", "sign_flip(scale=10.0)", "alie", "ipm(epsilon=0.5)", "backdoor(target_label=0)"],
        aggregators=["mean", "median", "trimmed_mean", "krum", "centered_clipping(clip_radius=1.0)", "flame"],
        malicious_fractions=[0.2],
        partitions=["dirichlet:0.5"],
        seeds=[0],
        description="CIFAR-10 ResNet-18, Dirichlet(0.5), 100 clients: attacks vs six rules.",
    )
