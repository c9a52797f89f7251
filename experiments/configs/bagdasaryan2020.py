"""Bagdasaryan, Veit, Hua, Estrin, Shmatikov, "How To Backdoor Federated Learning", AISTATS
2020: one attacker trains on backdoored data (a pixel-pattern trigger relabelled to the target
class) and sends a model-replacement update scaled by gamma = n / eta; the defenses are norm
clipping and weak differential privacy (Sun et al. 2019, "Can You Really Backdoor Federated
Learning?"), against the undefended mean.

    python -m experiments.sweep --config=experiments/configs/bagdasaryan2020.py --output_dir=results/bagdasaryan2020

Here the attacker (client 0) is in every round's cohort (all clients take part) and attacks
from round ``attack_start_round`` = 20 on. The ``attack_single_shot`` axis compares the paper's
single shot (True: in round 20 only it trains on backdoored batches and sends its update; in
every other round it trains and sends exactly what an honest client would, since the schedule
gates the whole attack) with an attacker that keeps attacking in every round from round 20
(False). The ``backdoor(target_label=0)`` row poisons data with no boost (the naive attack);
the ``+model_replacement`` row boosts it by gamma = n / eta. ``max_norm`` and ``noise_std`` of
the defenses are preset settings to tune to the model's update norms.
"""

from experiments.configs import SweepSpec
from fljax.experiment import ExperimentConfig

BACKDOOR = "backdoor(target_label=0)"


def get_config() -> SweepSpec:
    base = ExperimentConfig(
        dataset="mnist5k",
        model="mlp",
        partition="dirichlet",
        dirichlet_alpha=0.9,
        num_clients=20,
        clients_per_round=20,
        num_malicious=1,
        attack=f"{BACKDOOR}+model_replacement",
        aggregator="mean",
        attack_start_round=20,
        attack_single_shot=True,
        protocol="fedavg",
        local_epochs=2,
        batch_size=32,
        client_lr=0.1,
        rounds=30,
        eval_every=1,
        seed=0,
    )
    return SweepSpec(
        base=base,
        attacks=[BACKDOOR, f"{BACKDOOR}+model_replacement"],
        aggregators=["mean", "norm_clipping(max_norm=1.0)", "weak_dp(max_norm=1.0, noise_std=0.01)"],
        malicious_fractions=[0.05],  # one attacker among 20 clients
        partitions=["dirichlet:0.9"],
        seeds=[0, 1, 2],
        grid={"attack_single_shot": [True, False]},
        description="Bagdasaryan et al. 2020: one model-replacement backdoor attacker vs norm clipping and weak DP.",
    )
