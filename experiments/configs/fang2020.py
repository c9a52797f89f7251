"""Fang, Cao, Jia, Gong, "Local Model Poisoning Attacks to Byzantine-Robust Federated Learning",
USENIX Security 2020, Table 2 (MNIST part): 100 clients, 20 of them malicious, Fang et al.'s
non-IID "bias" partition with p = 0.5, a logistic regression and a CNN, and the rules Krum,
trimmed mean and median (and the mean as the undefended baseline) against no attack, the
Gaussian attack, label flipping (l -> C - 1 - l) and their optimized attacks with partial and
full knowledge (``fang_krum`` against Krum, ``fang_trim`` against trimmed mean and median).

    python -m experiments.sweep --config=experiments/configs/fang2020.py --output_dir=results/fang2020
    python -m experiments.sweep --config=experiments/configs/fang2020.py --dataset=tfds:mnist   # full MNIST

Offline this runs on ``mnist5k`` (5,000 real MNIST images: 40 per client); the paper trains on
the full 60,000-image MNIST (``--dataset=tfds:mnist``). Training here is FedAvg (fljax's
protocol), not the paper's exact local procedure; see experiments/reproductions/README.md.
"""

from experiments.configs import SweepSpec
from fljax.experiment import ExperimentConfig


def get_config() -> SweepSpec:
    base = ExperimentConfig(
        dataset="mnist5k",
        model="logreg",
        partition="bias",
        bias=0.5,
        num_clients=100,
        clients_per_round=100,
        num_malicious=20,
        attack="fang_krum",
        aggregator="krum",
        protocol="fedavg",
        local_epochs=1,
        batch_size=32,
        client_lr=0.1,
        rounds=100,
        eval_every=10,
        seed=0,
    )
    return SweepSpec(
        base=base,
        attacks=[
            "none",
            "gaussian(std=10.0)",  # the std of the crafted N(0, std^2 I) updates
            "label_flip_all",
            "fang_krum(knowledge='partial')",
            "fang_krum(knowledge='full')",
            "fang_trim(knowledge='partial')",
            "fang_trim(knowledge='full')",
        ],
        aggregators=["mean", "krum", "trimmed_mean", "median"],
        malicious_fractions=[0.2],
        partitions=["bias:0.5"],
        seeds=[0, 1, 2],
        grid={"model": ["logreg", "cnn"]},
        pending=[],  # fang_krum / fang_trim were pending when this preset was written; both are registered now
        description="Fang et al. 2020, Table 2 (MNIST, bias p=0.5, 20% malicious): test accuracy "
        "(the paper reports error rate = 1 - accuracy).",
    )
