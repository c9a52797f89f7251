"""A whole federated run: rounds under ``lax.scan`` with evaluation folded in.

``train = make_train(round, data, init_params, evaluate, num_rounds=R, eval_every=k)``;
``state, history = train(key)`` runs everything as one XLA program, and
``jax.vmap(train)(keys)`` runs a seed sweep as one program. The runner drives the same
computation block by block (``train.init`` / ``train.run_block``) to report progress and
checkpoint between blocks, with identical results.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.flatten_util import ravel_pytree

from fljax.data.federated import FederatedData
from fljax.rounds import Round
from fljax.types import Array, PyTree, ServerState


class TrainState(NamedTuple):
    """The run's full state: server state, run key, and the round after which the model went
    non-finite (1-based, as the rounds done that ``server.round`` counts; -1 while finite).
    From then on rounds are skipped (no training on NaN) but still counted, so that progress,
    evaluations and checkpoints name each round once."""

    server: ServerState
    key: Array
    diverged_round: Array


class History(NamedTuple):
    """Per-round metrics ``[R]`` and per-evaluation metrics ``[E]`` with their rounds."""

    rounds: dict
    evals: dict
    eval_rounds: Array


def eval_schedule(num_rounds: int, eval_every: int) -> list[int]:
    """Block lengths: evaluate after every ``eval_every`` rounds and after the last round."""
    blocks = [eval_every] * (num_rounds // eval_every)
    if num_rounds % eval_every:
        blocks.append(num_rounds % eval_every)
    return blocks


class Train:
    """A federated run (see module docstring)."""

    def __init__(
        self,
        round: Round,
        data: FederatedData,
        init_params: Callable[[Array], PyTree],
        evaluate: Callable,
        *,
        num_rounds: int,
        eval_every: int,
    ):
        for name, value in (("num_rounds", num_rounds), ("eval_every", eval_every)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"make_train: {name} must be an integer >= 1, got {value!r}")
        self.round, self.data, self.init_params, self.evaluate = round, data, init_params, evaluate
        self.num_rounds, self.eval_every = num_rounds, eval_every
        self.blocks = eval_schedule(num_rounds, eval_every)
        self.run_block = jax.jit(self._run_block, static_argnames="num_rounds")
        self._jitted = jax.jit(lambda key: self.run(self.init(key)))

    def init(self, key: Array) -> TrainState:
        k_params, k_run = jax.random.split(key)
        server = self.round.init(self.init_params(k_params))
        return TrainState(server, k_run, jnp.full((), -1, jnp.int32))

    def _run_block(self, state: TrainState, data: FederatedData, num_rounds: int):
        """``num_rounds`` rounds, then one evaluation: ``(state, round_metrics, eval_metrics)``."""

        def step(st: TrainState):
            return self.round.step(st.server, data, st.key)

        def skip(st: TrainState):
            # A stopped run computes nothing (a real branch, except under vmap over seeds): the
            # state stays as it was but for the round count, float metrics are NaN ("not
            # measured"), ints 0, bools False.
            fill = lambda s: jnp.full(s.shape, jnp.nan if jnp.issubdtype(s.dtype, jnp.inexact) else 0, s.dtype)
            return st.server._replace(round=st.server.round + 1), jax.tree.map(fill, jax.eval_shape(step, st)[1])

        def one_round(st: TrainState, _):
            stopped = st.diverged_round >= 0
            server, metrics = lax.cond(stopped, skip, step, st)
            diverged = jnp.where(~stopped & ~metrics["finite"], server.round, st.diverged_round)
            metrics = dict(metrics, skipped=stopped)
            return TrainState(server, st.key, diverged), metrics

        state, round_metrics = lax.scan(one_round, state, None, length=num_rounds)
        evals = self.evaluate(state.server.params, data.x_test, data.y_test)
        evals["finite"] = jnp.all(jnp.isfinite(ravel_pytree(state.server.params)[0]))
        return state, round_metrics, evals

    def run(self, state: TrainState, data: FederatedData | None = None):
        """All blocks from a fresh ``state`` as one program: a ``lax.scan`` over the full blocks
        of ``eval_every`` rounds (each itself a scan), then the remainder block."""
        data = self.data if data is None else data
        full, rest = divmod(self.num_rounds, self.eval_every)

        def block(st, _):
            st, r, e = self._run_block(st, data, self.eval_every)
            return st, (r, e, st.server.round)

        state, (rounds, evals, eval_rounds) = lax.scan(block, state, None, length=full)
        rounds = jax.tree.map(lambda a: a.reshape(-1, *a.shape[2:]), rounds)
        if rest:
            state, r, e = self._run_block(state, data, rest)
            rounds = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), rounds, r)
            evals = jax.tree.map(lambda a, b: jnp.concatenate([a, b[None]]), evals, e)
            eval_rounds = jnp.concatenate([eval_rounds, state.server.round[None]])
        return state, History(rounds, evals, eval_rounds)

    def __call__(self, key: Array):
        """The whole run from a PRNG key: ``(final TrainState, History)``; jit/vmap friendly."""
        return self._jitted(key)


def make_train(
    round: Round,
    data: FederatedData,
    init_params: Callable[[Array], PyTree],
    evaluate: Callable,
    *,
    num_rounds: int,
    eval_every: int = 1,
) -> Train:
    """Builds a run of ``num_rounds`` rounds evaluated every ``eval_every`` rounds (and at the end)."""
    return Train(round, data, init_params, evaluate, num_rounds=num_rounds, eval_every=eval_every)
