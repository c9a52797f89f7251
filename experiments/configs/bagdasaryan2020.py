"""Bagdasaryan, Veit, Hua, Estrin, Shmatikov, "How To Backdoor Federated Learning", AISTATS
2020: one attacker trains on backdoored data (a pixel-pattern trigger relabelled to the target
class) and sends a model-replacement update scaled by gamma = n / eta; the defenses are norm
clipping and weak differential privacy (Sun et al. 2019, "Can You Really Backdoor Federated
Learning?"), against the undefended mean.

    python -m experiments.sweep --config=experiments/configs/bagdasaryan2020.py --output_dir=results/bagdasaryan2020

Here the attacker (client 0) is in every round's cohort (all clients take part) and attacks
once, in round ``attack_start_round`` (``attack_single_shot``), as in the paper's single-shot
experiments: in that round it trains on backdoored batches and sends its boosted update; in
every other round it trains and sends exactly what an honest client would (the schedule gates
the whole attack; ``--continuous_data_poisoning`` would keep its backdoor training in every
round). The ``backdoor`` row poisons data in every round with no boost. ``max_norm`` and
``noise_std`` of the defenses are preset settings to tune to the model's update norms.
"""

from experiments.configs import SweepSpec
from fljax.experiment import ExperimentConfig


def get_config() -> SweepSpec:
    base = ExperimentConfig(
        dataset="mnist5k", model="mlp", partition="dirichlet", dirichlet_alpha=0.9,
        num_clients=20, clients_per_round=20, num_malicious=1,
        attack="model_replacement", data_attack="backdoor", target_class=0, aggregator="mean",
        attack_start_round=20, attack_single_shot=True,
        protocol="fedavg", local_epochs=2, batch_size=32, client_lr=0.1,
        rounds=30, eval_every=1, seed=0)
    return SweepSpec(
        base=base,
        attacks=["backdoor", "model_replacement"],
        aggregators=["mean", "norm_clipping", "weak_dp"],
        malicious_fractions=[0.05],  # one attacker among 20 clients
        partitions=["dirichlet:0.9"],
        seeds=[0, 1, 2],
        attack_settings={"backdoor": {"data_attack": None, "attack_start_round": 0, "attack_single_shot": False},
                         "model_replacement": {"data_attack": "backdoor"}},
        aggregator_settings={"norm_clipping": {"max_norm": 1.0},
                             "weak_dp": {"max_norm": 1.0, "noise_std": 0.01}},
        description="Bagdasaryan et al. 2020: one model-replacement backdoor attacker vs norm clipping and weak DP.")
