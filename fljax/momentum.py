"""Worker momentum: each client keeps a momentum across rounds and sends it instead of its fresh
update (Karimireddy, He, Jaggi, "Learning from History for Byzantine Robust Optimization",
ICML 2021; "Byzantine-Robust Learning on Heterogeneous Datasets via Bucketing", ICLR 2022).

Averaging over rounds shrinks the honest clients' noise, so robust rules can tell them from
attackers. Two conventions are in public code, and they differ by about ``1 / (1 - beta)`` in
scale (which matters to fixed clipping radii and to learning rates):

* ``"ema"``: ``m <- beta m + (1 - beta) u`` with ``m = 0`` at the start (the papers' equations,
  ByzFL);
* ``"heavy_ball"``: ``m <- beta m + u`` started at the first ``u`` (the authors' code, PyTorch's
  SGD momentum without dampening; the bucketing tables were produced with it).

Here ``u`` is the client's update of the round (FedSGD: ``-lr`` times its gradient; FedAvg: its
model difference). The state is one row per client of the POPULATION, indexed by client id: a
client's momentum advances only in the rounds it is sampled in (with partial participation it is
as stale as the client's last round). Malicious clients' rows advance with what they trained;
the model attack then rewrites what they send, so it sees the honest clients' momenta.

This is not ``--client_momentum``, the momentum of the SGD steps inside one round.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp

from fljax.types import Array

CONVENTIONS = ("ema", "heavy_ball")


class WorkerMomentum(NamedTuple):
    """Worker momentum ``beta`` in ``[0, 1)`` with its ``convention`` (module docstring)."""

    beta: float
    convention: str = "ema"

    def init(self, num_clients: int, dim: int, dtype=jnp.float32) -> Array:
        """The population's momenta ``[num_clients, dim]``, zero (no client has trained yet)."""
        return jnp.zeros((num_clients, dim), dtype)

    def update(self, momenta: Array, updates: Array, client_ids: Array) -> tuple[Array, Array]:
        """``(sent [n, d], momenta')``: the cohort's new momenta, which its clients send, and the
        population's momenta with the cohort's rows replaced."""
        previous = momenta[client_ids]
        scale = 1.0 - self.beta if self.convention == "ema" else 1.0
        sent = self.beta * previous + scale * updates
        return sent, momenta.at[client_ids].set(sent)


def worker_momentum(beta: float, convention: str = "ema") -> WorkerMomentum:
    """Validated ``WorkerMomentum`` (see the module docstring for the two conventions)."""
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0.0 <= beta < 1.0:
        raise ValueError(f"worker_momentum: beta must be a number in [0, 1), got {beta!r}")
    if convention not in CONVENTIONS:
        raise ValueError(f"worker_momentum: convention must be one of {', '.join(CONVENTIONS)}, got {convention!r}")
    return WorkerMomentum(float(beta), convention)
