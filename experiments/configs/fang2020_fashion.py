"""Fang, Cao, Jia, Gong, USENIX Security 2020, Table 2 (c): Fashion-MNIST with the paper's DNN.

The paper's setting (Sec. 4.1): 100 workers, 20 compromised, all in every iteration; bias
p = 0.5 (Fang et al.'s groups, workers permuted afterwards); one local SGD step of batch 64 per
iteration; 2,000 iterations; the DNN conv 3x3x30 -> pool -> conv 3x3x50 -> pool -> FC 200
(fljax's ``cnn``); rules Krum, trimmed mean (beta = c), median against no attack, Gaussian, label
flipping (l -> C - 1 - l) and the paper's attack with partial / full knowledge (``fang_krum``
against Krum, ``fang_trim`` against trimmed mean and median). No learning rate is stated: pick
it by a clean run (``--aggregators=mean --attacks=none --grid=client_lr=...``) and report it.

Run each rule with its own attack (the paper's table), e.g.:

    python -m experiments.sweep --config=experiments/configs/fang2020_fashion.py \\
        --aggregators=krum --attacks="none,gaussian(std=10.0),label_flip_all,fang_krum(knowledge='partial'),fang_krum(knowledge='full')"
    python -m experiments.sweep --config=experiments/configs/fang2020_fashion.py \\
        --aggregators=trimmed_mean,median \\
        --attacks="none,gaussian(std=10.0),label_flip_all,fang_trim(knowledge='partial'),fang_trim(knowledge='full')"

Needs the full Fashion-MNIST (``apt-get install dataset-fashion-mnist``, or ``--data_dir`` with
the four IDX files); ~4 ms a round on an H200, about 15 min a cell on the 2-core CPU.
"""

from experiments.configs import SweepSpec
from fljax.experiment import ExperimentConfig

KNOWLEDGE = [f"{attack}(knowledge={k!r})" for attack in ("fang_krum", "fang_trim") for k in ("partial", "full")]


def get_config() -> SweepSpec:
    base = ExperimentConfig(
        dataset="fashion_mnist",
        model="cnn",
        partition="bias",
        bias=0.5,
        num_clients=100,
        clients_per_round=100,
        num_malicious=20,
        attack="none",
        aggregator="krum",
        protocol="fedavg",
        local_steps=1,
        local_epochs=None,
        batch_size=64,
        client_lr=0.1,
        rounds=2000,
        eval_every=200,
        seed=0,
    )
    return SweepSpec(
        base=base,
        attacks=["none", "gaussian(std=10.0)", "label_flip_all", *KNOWLEDGE],  # gaussian: the std of N(0, std^2 I)
        aggregators=["krum", "trimmed_mean", "median"],
        malicious_fractions=[0.2],
        partitions=["bias:0.5"],
        seeds=[0],
        description="Fang et al. 2020, Table 2 (c): Fashion-MNIST, DNN, bias p = 0.5, 20% malicious; test "
        "accuracy (the paper reports error rate = 1 - accuracy).",
    )
