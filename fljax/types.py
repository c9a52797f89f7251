"""Core types of fljax: pairs of pure functions in NamedTuples, in the style of optax.

Every piece of a federated round is a pure function over arrays, so a whole round (cohort
sampling, local training, poisoning, robust aggregation, server step) traces into one XLA
program. Aggregators and model attacks see a cohort's updates as one flat ``[n, d]`` matrix
(``n`` clients of the round, ``d`` parameters); the round flattens the clients' pytrees once.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Optional

import jax

Array = jax.Array
PyTree = Any


class EmptyState(NamedTuple):
    """The state of a rule or attack that keeps none (a pytree without leaves, as
    ``optax.EmptyState``)."""


def no_state(params) -> EmptyState:
    """The ``init`` of a rule or attack without state (``fljax.aggregators.stateless``,
    ``fljax.attacks.stateless``)."""
    del params
    return EmptyState()


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True, eq=False)
class ModelAccess:
    """The model behind the flat vectors, for rules that inspect it (``Aggregator.needs_model``).

    ``make_round`` supplies it when the rule declares ``needs_model`` (it is given the model's
    ``apply``); it is static under jit (a pytree without leaves), so a context that carries it can
    be passed through ``jax.jit`` and ``vmap``.

    Attributes:
      unravel: flat ``[d]`` vector (the global model, or a client's model ``params + x_i``) to
        the parameter pytree ``apply`` takes.
      apply: ``apply(params, x) -> logits`` on a batch ``x`` of inputs.
      inputs: ``jax.ShapeDtypeStruct`` of ONE input example (e.g. ``(28, 28, 1)`` float32), for
        rules that probe the model on inputs of their own (DeepSight's noise inputs).
    """

    unravel: Callable[[Array], PyTree]
    apply: Callable[[PyTree, Array], Array]
    inputs: jax.ShapeDtypeStruct


class AggregationContext(NamedTuple):
    """What a rule may read besides the updates, all arrays (shapes static under jit).

    Attributes:
      weights: ``[n]`` example counts of the round's clients (the weights of plain FedAvg).
      key: PRNG key of this aggregation (bucketing shuffles, noise of weak DP / FLAME).
      client_ids: ``[n]`` population ids of the round's clients, for rules that keep a
        per-client history across rounds (FoolsGold, AFA, CONTRA).
      params: ``[d]`` flat global model the updates were computed from.
      reference: ``[d]`` the server's own update on its clean root set (FLTrust), or zeros
        when the round computes none.
      model: the model's layout and forward (``ModelAccess``) for a rule that sets
        ``Aggregator.needs_model`` (DeepSight), else ``None``.
    """

    weights: Array
    key: Array
    client_ids: Array
    params: Array
    reference: Array
    model: Optional[ModelAccess] = None


class Aggregator(NamedTuple):
    """A robust aggregation rule as a pair of pure functions.

    Attributes:
      init: ``init(params [d]) -> state``; a rule without state returns ``EmptyState()``
        (``fljax.aggregators.stateless`` builds such a rule from its update alone), a stateful
        rule a state type of its own (e.g. ``AFAState``).
      update: ``update(updates [n, d], state, context) -> (aggregate [d], state, info)`` where
        ``info["weights"]`` is the ``[n]`` effective weight each client got in the aggregate
        (non-negative, summing to 1, or all 0 with a zero aggregate when the rule accepts no one;
        0 for an excluded client; for coordinate-wise rules the
        share of coordinates it contributed), so every rule can be scored as a detector
        (``fljax.rounds.flagged_clients``). Coordinate-wise rules also report
        ``info["kept_share"]`` ``[n]``, the share of each client's update (entries weighed by
        magnitude) in the values they kept, which their detection verdict reads instead.
      requirement: ``requirement(n) -> None`` raises ``ValueError`` naming the rule, the values
        and the condition when the rule cannot work with ``n`` clients per round (checked at
        build time, outside jit).
      needs_reference: the rule reads ``context.reference`` (the round must compute it).
      count_weighted: when the rule excludes no one it weighs clients by their example counts
        (FedAvg's mean); otherwise (the default) equally. Detection compares a client's weight
        with this equal treatment, so a rule that excludes no one flags no one.
      needs_model: the rule reads ``context.model`` (``ModelAccess``: the model's layout and
        forward); ``make_round`` then needs the model's ``apply`` (``model_apply``).
      evaluate: for a rule that changes how the server PREDICTS (CRFL's randomized smoothing),
        ``evaluate(apply, params, x, y) -> dict`` of extra test metrics of the global model
        ``params`` (a pytree) on the test set; ``fljax.metrics.with_rule_metrics`` adds them to
        the run's evaluation. ``None`` (the default): the server predicts with the global model.
    """

    init: Callable[[Array], Any]
    update: Callable[[Array, Any, AggregationContext], tuple[Array, Any, dict]]
    requirement: Callable[[int], None] = lambda n: None
    needs_reference: bool = False
    count_weighted: bool = False
    needs_model: bool = False
    evaluate: Optional[Callable[..., dict]] = None


class AttackContext(NamedTuple):
    """What a model attack may read: the threat model's knowledge of the round.

    Attributes:
      params: ``[d]`` flat global model of the round.
      weights: ``[n]`` example counts of the round's clients.
      round: the round number (int32 scalar).
      aggregator: the server's aggregation rule (attacks that target a rule or differentiate
        through it); ``None`` when unknown.
      agg_state: the aggregator's state at this round (for stateful rules).
      client_ids: ``[n]`` population ids of the round's clients.
      reference: ``[d]`` the server's reference update (``Aggregator.needs_reference``: FLTrust's
        root-data update), given with ``aggregator``; ``None`` when the rule reads none or is unknown.
      model: the model behind the flat vectors (``Aggregator.needs_model``: DeepSight), given with
        ``aggregator``; ``None`` otherwise. Attacks that run the server's rule pass both on.
    """

    params: Array
    weights: Array
    round: Array
    aggregator: Optional[Aggregator]
    agg_state: Any
    client_ids: Array
    reference: Optional[Array] = None
    model: Optional[ModelAccess] = None


class ModelAttack(NamedTuple):
    """A model-poisoning attack on the updates the malicious clients send.

    Attributes:
      init: ``init(params [d]) -> state``: ``EmptyState()`` for an attack without state
        (``fljax.attacks.stateless``), a state type of its own otherwise (``AdaptiveState``).
      update: ``update(updates [n, d], malicious bool[n], state, key, context) -> (updates,
        state)``; rewrites only the malicious rows (with ``jnp.where``, never a shape change),
        and is the identity when no malicious client is in the round.
      requirement: ``requirement(n, num_byzantine) -> None`` build-time check.
      active: the attack's schedule, ``active(round) -> bool`` (traced), or ``None`` for every
        round (``fljax.attacks.scheduled`` sets it). ``make_round`` gates the WHOLE attack with
        it: outside the active rounds the malicious clients also train on clean data, with the
        honest local training, and so send exactly what an honest client would.
    """

    init: Callable[[Array], Any]
    update: Callable[..., tuple[Array, Any]]
    requirement: Callable[[int, int], None] = lambda n, f: None
    active: Optional[Callable[[Array], Array]] = None


class DataAttack(NamedTuple):
    """A data-poisoning attack on a malicious client's training batches.

    Attributes:
      poison: ``poison(x, y, mask, key, attacker) -> (x, y)`` on one batch of one malicious
        client; ``mask`` marks the batch's real examples (padding must never count: a share of
        the batch is a share of its real examples), ``attacker`` is the client's population id
        (e.g. to pick its part of a distributed trigger). Applied with ``jnp.where`` under vmap,
        so it must keep shapes and dtypes.
      targeted: ``targeted(x, y) -> (x, y_target, valid)`` turns a test set into the attack's
        success test: inputs with the trigger (if any), the label the attacker wants, and which
        examples count (e.g. source-class examples, or non-target examples for a backdoor).
        ``None`` for untargeted attacks (no success rate).
      own_test_inputs: the success test brings inputs of its own instead of transforming the
        test set's (``edge_case``: held-out edge-case images laid over the test set's first
        positions, the rest not valid). Their true labels are not the test set's, so
        ``make_evaluate`` reports no ``source_recall``, and the targeted adaptive attack refuses
        the attack (its loss would read the held-out inputs).
    """

    poison: Callable[..., tuple[Array, Array]]
    targeted: Optional[Callable[[Array, Array], tuple[Array, Array, Array]]] = None
    own_test_inputs: bool = False


class ServerState(NamedTuple):
    """Everything a run carries from one round to the next (``momenta``: the population's worker
    momenta ``[num_clients, d]`` with ``fljax.momentum``, else empty)."""

    params: PyTree
    opt_state: Any
    agg_state: Any
    attack_state: Any
    round: Array
    momenta: Any = ()
