"""LEAF Shakespeare with its natural clients (one per speaking role) and the LEAF / FedJAX
character LSTM: next-character prediction, per-token accuracy; a trigger-phrase backdoor after
Bagdasaryan et al. (AISTATS 2020) against mean, median, trimmed mean and norm clipping.

Needs LEAF's Shakespeare JSON files (``--data_dir``); ``--dataset=synthetic:shakespeare`` runs the
same grid on a stand-in with Shakespeare's shapes (labelled synthetic in every output).

    python -m experiments.sweep --config=experiments/configs/shakespeare.py --data_dir=DIR --output_dir=results/shakespeare
"""

from experiments.configs import SweepSpec
from fljax.experiment import ExperimentConfig

BACKDOOR = "phrase_backdoor(trigger='pasta from Astoria is ', completion='delicious', poison_fraction=0.5)"


def get_config() -> SweepSpec:
    base = ExperimentConfig(
        dataset="shakespeare",
        model="char_lstm",
        partition="natural",
        num_clients=100,
        clients_per_round=10,
        num_malicious=10,
        attack="none",
        aggregator="mean",
        protocol="fedavg",
        local_epochs=1,
        batch_size=10,
        client_lr=0.8,
        rounds=200,
        eval_every=20,
        seed=0,
    )
    return SweepSpec(
        base=base,
        attacks=["none", BACKDOOR],
        aggregators=["mean", "median", "trimmed_mean", "norm_clipping(max_norm=1.0)"],
        malicious_fractions=[0.1],
        partitions=["natural"],
        seeds=[0],
        description="Shakespeare (LEAF, natural clients), char LSTM: trigger-phrase backdoor vs four rules.",
    )
