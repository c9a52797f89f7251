"""An fljax rule applied round after round to updates held outside fljax, keeping its state."""

from __future__ import annotations

from typing import Any, Hashable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fljax.types import AggregationContext, Aggregator


def as_jax(array, dtype) -> jax.Array:
    """``array`` (NumPy, PyTorch, JAX or anything with ``__dlpack__``) as a JAX array of ``dtype``,
    through DLPack without a copy where the source is contiguous, aligned and already ``dtype``."""
    if isinstance(array, jax.Array):
        return array.astype(dtype)
    if hasattr(array, "detach"):  # a PyTorch tensor: DLPack refuses one that requires grad
        array = array.detach()
    if isinstance(array, np.ndarray):
        array = np.ascontiguousarray(array, dtype)
        if not array.flags.writeable:  # DLPack cannot export a read-only NumPy array
            return jnp.array(array)
    same_dtype = str(getattr(array, "dtype", "")).removeprefix("torch.") == np.dtype(dtype).name
    if same_dtype and hasattr(array, "__dlpack__") and getattr(array, "is_contiguous", lambda: True)():
        return jax.dlpack.from_dlpack(array)
    return jnp.asarray(np.asarray(array), dtype)


class Session:
    """An ``fljax.Aggregator`` with its state, called once per round on an ``[n, d]`` matrix of
    updates that lives outside fljax (a Flower server, a PyTorch simulator).

    Each call runs the rule's jitted ``update`` (compiled once per cohort size ``n``) and keeps
    the returned state for the next round, so stateful rules (FoolsGold's histories, AFA's
    Beta posteriors, CONTRA's reputations, centered clipping's momentum) work across rounds.

    Clients are named by any hashable id (Flower's node ids, names); the session gives each new
    one the next POPULATION id ``0, 1, 2, ...`` in order of first appearance and passes those as
    ``context.client_ids``, the row of the rule's per-client state. The rule's own requirement
    is checked against the cohort size and against the number of distinct clients seen so far,
    so a rule whose state holds fewer rows than clients (``foolsgold(num_clients=4)`` with a
    fifth client) stops with its own error instead of silently sharing a row.

    Args:
      aggregator: any ``fljax.Aggregator`` (also ``with_preaggregation(...)``).
      seed: the rule's randomness: round ``r`` (counted from 0) uses
        ``fold_in(PRNGKey(seed), r)`` (bucketing's shuffle, FLAME's and weak DP's noise).

    Examples:
      >>> session = Session(fljax.aggregators.krum(num_byzantine=1))
      >>> updates = np.array([[0.0], [0.1], [0.15], [0.3], [9.0]])
      >>> aggregate, info = session(updates, client_ids=["a", "b", "c", "d", "e"])
      >>> aggregate, info["weights"]  # effective weight per client, 0 for an excluded one
      (Array([0.1], dtype=float32), array([0., 1., 0., 0., 0.], dtype=float32))
    """

    def __init__(self, aggregator: Aggregator, seed: int = 0):
        if not isinstance(aggregator, Aggregator):
            raise ValueError(f"Session: aggregator must be an fljax.Aggregator, got {type(aggregator).__name__}")
        self.aggregator = aggregator
        self.state: Any = None
        self.population: dict[Hashable, int] = {}
        self.rounds = 0
        self._key = jax.random.PRNGKey(seed)
        self._update = jax.jit(aggregator.update)
        self._dim: Optional[int] = None

    def population_ids(self, client_ids: Optional[Sequence[Hashable]], n: int) -> np.ndarray:
        """The ``[n]`` population ids of ``client_ids`` (default ``0..n-1``), naming new clients."""
        if client_ids is None:
            client_ids = range(n)
        client_ids = list(client_ids)
        if len(client_ids) != n:
            raise ValueError(f"Session: client_ids must name the n={n} rows of updates, got {len(client_ids)} ids")
        if len(set(client_ids)) != n:
            raise ValueError(f"Session: client_ids must be distinct within a round, got {client_ids}")
        for c in client_ids:
            self.population.setdefault(c, len(self.population))
        return np.asarray([self.population[c] for c in client_ids], np.int32)

    def __call__(
        self, updates, weights=None, client_ids: Optional[Sequence[Hashable]] = None, params=None, reference=None
    ) -> tuple[jax.Array, dict[str, np.ndarray]]:
        """Aggregates one round of ``updates`` ``[n, d]``; returns ``(aggregate [d], info)``.

        Args:
          updates: ``[n, d]`` (NumPy, PyTorch, JAX; taken through DLPack when possible).
          weights: ``[n]`` example counts (finite, >= 0; default ones).
          client_ids: ``n`` distinct hashable ids (default ``0..n-1``).
          params: ``[d]`` flat global model the updates were computed from (default zeros).
          reference: ``[d]`` the server's own update on its root set (rules with
            ``needs_reference``, FLTrust).

        Returns:
          The aggregate as a JAX array and the rule's ``info`` as NumPy arrays;
          ``info["weights"]`` is each client's effective weight (summing to 1, 0 if excluded).
        """
        dtype = jnp.result_type(float)  # float32, or float64 under jax_enable_x64
        x = as_jax(updates, dtype)
        if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
            raise ValueError(f"Session: updates must be [n, d] with n >= 1 and d >= 1, got shape {tuple(x.shape)}")
        n, d = x.shape
        if self._dim is not None and d != self._dim:
            raise ValueError(f"Session: updates have d={d} parameters but earlier rounds had d={self._dim}")
        w = np.ones(n) if weights is None else np.asarray(weights, np.float64)
        if w.shape != (n,) or not np.all(np.isfinite(w)) or np.any(w < 0):
            raise ValueError(f"Session: weights must be [n={n}] finite example counts >= 0, got {w!r}")
        if self.aggregator.needs_reference and reference is None:
            raise ValueError(
                "Session: this rule reads the server's reference update (e.g. FLTrust): pass reference [d]"
            )
        self.aggregator.requirement(n)
        ids = self.population_ids(client_ids, n)
        if len(self.population) > n:
            try:
                self.aggregator.requirement(len(self.population))
            except ValueError as err:
                raise ValueError(
                    f"{err} [the session has seen {len(self.population)} distinct clients, each "
                    f"needs its own row of the rule's per-client state]"
                ) from None
        flat_params = jnp.zeros(d, dtype) if params is None else as_jax(params, dtype).reshape(-1)
        ref = jnp.zeros(d, dtype) if reference is None else as_jax(reference, dtype).reshape(-1)
        for name, v in (("params", flat_params), ("reference", ref)):
            if v.shape != (d,):
                raise ValueError(f"Session: {name} must hold d={d} values, got {v.shape[0]}")
        if self.state is None:
            self.state = self.aggregator.init(flat_params)
            self._dim = d
        ctx = AggregationContext(
            weights=jnp.asarray(w, dtype),
            key=jax.random.fold_in(self._key, self.rounds),
            client_ids=jnp.asarray(ids),
            params=flat_params,
            reference=ref,
        )
        aggregate, self.state, info = self._update(x, self.state, ctx)
        self.rounds += 1
        return aggregate, {k: np.asarray(v) for k, v in info.items()}
