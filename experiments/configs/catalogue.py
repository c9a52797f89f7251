"""Every registered attack against mean, median, trimmed mean and Krum at the runner's default
setting: mnist5k, MLP, 100 clients (all per round), 20% malicious, 30 rounds of FedAvg.

    python -m experiments.sweep --config=experiments/configs/catalogue.py --output_dir=results/catalogue

Targeted model attacks train on backdoored data (``data_attack="backdoor"``, target class 0 as
``backdoor``'s own cells) and their attack success rate is the backdoor's. With 20 attackers
sending every round, ``gamma = 5`` (= n / (eta * attackers), also the default ``boost_factor``
here) makes their joint boosted update replace the model under the mean, as the paper's
``n / eta`` does for one attacker.
``adaptive`` runs 10 ascent steps a round (50 is its default; at 100 clients on 2 CPU cores the
steps through median / trimmed mean dominate the run); ``adaptive:targeted`` ascends the
attackers' backdoor loss after the server step through the rule.
"""

from experiments.configs import SweepSpec
from fljax.experiment import ExperimentConfig

BACKDOORED = {"data_attack": "backdoor", "target_class": 0}


def get_config() -> SweepSpec:
    base = ExperimentConfig(attack="none", aggregator="mean")
    return SweepSpec(
        base=base,
        attacks=["none", "label_flip", "label_flip_all", "backdoor", "dba",
                 "gaussian", "sign_flip", "zero", "nan", "inf", "ipm", "alie", "mimic",
                 "fang_krum", "fang_trim", "min_max", "min_sum", "adaptive", "adaptive:targeted",
                 "model_replacement", "constrain_and_scale", "pgd", "neurotoxin"],
        aggregators=["mean", "median", "trimmed_mean", "krum"],
        malicious_fractions=[0.2],
        partitions=["iid"],
        seeds=[0],
        attack_settings={
            "backdoor": {"target_class": 0},
            "dba": {"target_class": 0},
            "adaptive": {"attack_steps": 10},
            "adaptive:targeted": dict(BACKDOORED, attack="adaptive", objective="targeted", attack_steps=10),
            "model_replacement": dict(BACKDOORED, gamma=5.0),
            "constrain_and_scale": dict(BACKDOORED, gamma=5.0),
            "pgd": dict(BACKDOORED),
            "neurotoxin": dict(BACKDOORED),
        },
        description="The attack catalogue (issue 4): every attack vs mean / median / trimmed mean / Krum, 20% malicious.")
