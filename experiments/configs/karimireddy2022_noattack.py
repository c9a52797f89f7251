"""Karimireddy, He, Jaggi, "Byzantine-Robust Learning on Heterogeneous Datasets via Bucketing",
ICLR 2022, Experiment 1 (the table is in ../shared/PAPERS.md): no attacker, n = 24 workers,
IID and sorted non-IID, average / Krum / coordinate-wise median / RFA / centered clipping, each
with and without bucketing (s = 2): what the robust rules cost on heterogeneous data alone.

    python -m experiments.sweep --config=karimireddy2022_noattack --output_dir=results/karimireddy2022_noattack

Their settings, as in ``karimireddy2022_mimic`` (learning rate 0.01, batches of 32, one batch
per worker per iteration, RFA T = 8, centered clipping tau = 10 on gradients = 0.1 on updates,
bucketing s = 2), here for 4,500 iterations; the rules' f is the experiment's, 0 (Krum then scores each
update by its n - 2 nearest neighbours and still keeps one: its cost on non-IID data).

Where this differs from the paper (say so next to any number): ``mnist5k`` and fljax's ``cnn``
as in ``karimireddy2022_mimic``; PAPERS.md calls the setting "long-tailed", which fljax's
partitions do not reproduce (every worker holds about the same number of examples; non-IID is
one label-sorted shard per worker). The accuracy is the authors' metric, each seed's mean over
its last five evaluations (every 30 rounds, their epoch of 30 batches).
4,500 rounds x 20 cells x 3 seeds of the CNN is hours of CPU: on a CPU run ``--rounds=600``
first and say so.
"""

import dataclasses

from experiments.configs import SweepSpec, karimireddy2022_mimic


def get_config() -> SweepSpec:
    mimic = karimireddy2022_mimic.get_config()  # the same settings, rules and partitions
    base = dataclasses.replace(
        mimic.base, num_clients=24, clients_per_round=24, num_malicious=0, attack="none", rounds=4500, eval_every=30
    )
    return dataclasses.replace(
        mimic,
        base=base,
        attacks=["none"],
        malicious_fractions=[0.0],
        description="Karimireddy et al. 2022, Experiment 1: no attacker, n = 24, IID and sorted non-IID, "
        "with and without bucketing.",
    )
