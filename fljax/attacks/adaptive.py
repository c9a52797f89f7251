"""A differentiable adaptive attack: malicious updates optimised THROUGH the aggregation rule.

fljax's aggregators are pure JAX functions, so an attacker that knows the rule can take
``jax.grad`` of a function that writes its crafted update into the round's update matrix,
aggregates, and scores the aggregate, and climb that objective with optax. Fang et al. and
Shejwalkar & Houmansadr craft rule-specific updates by hand or by a 1-D search; here the rule
is a black box to differentiate.

Which rules give useful gradients:
  * mean, geometric median (unrolled Weiszfeld), centered clipping, norm clipping: smooth or
    piecewise smooth; the gradient is exact.
  * coordinate-wise median, trimmed mean (and Bulyan's last step): piecewise linear; the
    (sub)gradient reaches a malicious row in the coordinates where it is one of the order
    statistics averaged, which is where moving it moves the aggregate.
  * Krum / multi-Krum (and any selection rule): the selection (an ``argsort`` of scores) has no
    gradient; the gradient reaches the crafted update only while it is selected. Every step
    is scored through the real rule and the best point seen is kept, so the result is never
    worse than the initial point, but while no malicious row is selected the ascent cannot
    move. The ``best`` initial point (the best of the ALIE, IPM, -mean and own points for this
    rule) does most of the work there.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax
from jax import lax

from fljax.aggregators.averaging import mean
from fljax.attacks._common import check_number, replace_rows, simulated_server_context
from fljax.attacks.threat import check_knowledge, masked_mean_std, observed_rows
from fljax.attacks.untargeted import alie_z
from fljax.types import Aggregator, Array, DataAttack, ModelAttack

OBJECTIVES = ("untargeted", "deviation", "targeted")
CONSTRAINTS = ("max_norm", "distance", "none")
INIT_POINTS = ("best", "alie", "ipm", "negative_mean", "own")
_TINY = 1e-12


class AdaptiveState(NamedTuple):
    """The adaptive attack's last round: the objective at the initial point (``objective_init``)
    and at the crafted update (``objective``), float32 scalars, 0 in a round without attackers."""

    objective_init: Array
    objective: Array


def _safe_norm(x: Array) -> Array:
    sq = jnp.sum(x * x)
    return jnp.where(sq > 0, jnp.sqrt(jnp.where(sq > 0, sq, 1.0)), 0.0)


def _choice(name: str, value, allowed) -> str:
    if value not in allowed:
        raise ValueError(f"adaptive: {name} must be one of {', '.join(allowed)}, got {value!r}")
    return value


def _candidates(updates: Array, malicious: Array, mu: Array, sigma: Array) -> dict:
    """The starting points: ALIE (``mu + z sigma``), IPM (``-0.1 mu``), ``-mu``, and the mean of
    the malicious clients' own updates (e.g. trained on backdoor data)."""
    own, _ = masked_mean_std(updates, malicious)
    return {
        "alie": mu + alie_z(updates.shape[0], jnp.sum(malicious)) * sigma,
        "ipm": -0.1 * mu,
        "negative_mean": -mu,
        "own": own,
    }


def triggered_loss(
    apply_fn: Callable, unravel: Callable, data_attack: DataAttack, x: Array, y: Array
) -> Callable[[Array], Array]:
    """A ``target_loss`` for ``adaptive(objective="targeted")``: the model's mean cross-entropy
    on the attack's success test built from the attacker's own examples ``x, y``
    (``data_attack.targeted``: the trigger applied, labels set to the target, only the examples
    the attack counts), as a function of the flat parameters (``unravel`` rebuilds the tree).

    Raises:
      ValueError: the data attack has no success test (an untargeted one such as
        ``label_flip_all``), or none of ``x, y`` counts for it.
    """
    if not isinstance(data_attack, DataAttack) or data_attack.targeted is None:
        raise ValueError(
            "adaptive: objective 'targeted' needs a targeted data attack (backdoor, dba, feature_trigger "
            f"or label_flip) to define the attacker's loss, got {data_attack!r}"
        )
    if data_attack.own_test_inputs:
        raise ValueError(
            "adaptive: objective 'targeted' reads the data attack's success test, whose inputs here "
            "are the held-out ones (own_test_inputs, e.g. edge_case): pair that attack with pgd or "
            "alter_min instead"
        )
    xt, yt, valid = data_attack.targeted(jnp.asarray(x), jnp.asarray(y))
    if not bool(jnp.any(valid)):
        raise ValueError(
            "adaptive: none of the attacker's examples counts for the targeted objective (e.g. a "
            "label flip whose source class the malicious clients do not hold)"
        )
    weights = valid.astype(jnp.float32) / jnp.sum(valid)

    def loss(flat_params: Array) -> Array:
        logits = apply_fn(unravel(flat_params), xt)
        return jnp.sum(weights * optax.softmax_cross_entropy_with_integer_labels(logits, yt))

    return loss


def adaptive(
    objective: str = "untargeted",
    attack_steps: int = 50,
    attack_lr: float = 0.25,
    constraint: str = "max_norm",
    knowledge: str = "full",
    init_point: str = "best",
    optimizer: Optional[optax.GradientTransformation] = None,
    rule: Optional[Aggregator] = None,
    target_loss: Optional[Callable[[Array], Array]] = None,
    server_lr: float = 1.0,
) -> ModelAttack:
    """Adaptive attack: one crafted update, optimised by gradient ascent through the rule.

    All malicious clients send the same vector z (colluding, as ALIE, IPM, Fang and Min-Max).
    With ``mu`` the mean of the benign updates the attacker knows, z maximises:

    * ``untargeted``: ``-<agg(z) - mu, mu / ||mu||>``, how far the aggregate falls behind the
      honest mean along the honest direction (negative progress of the round);
    * ``deviation``: ``||agg(z) - mu||``;
    * ``targeted``: ``-target_loss(params + server_lr * agg(z))``, the attacker's loss (e.g. on a
      triggered batch) after the server's step, for a plain SGD server.

    subject to ``constraint`` (a projection after every step): ``max_norm``: ``||z||`` at most
    the largest benign norm; ``distance``: ``||z - mu||`` at most the largest benign distance
    to ``mu``; ``none``. The optimiser runs on ``w = (z - center) / radius`` (the constraint
    ball is ``||w|| <= 1``; with ``none`` the radius is the largest benign norm), so
    ``attack_lr`` is a fraction of the radius per step; the default optimiser is normalised
    gradient ascent with a cosine-decayed step. The best point seen (initial point included)
    is returned, so the objective never ends below the initial point's. The attack's state
    (``AdaptiveState``) holds the last round's ``objective_init`` and ``objective``.

    The rule runs with the round's state (stateful rules) and a zero ``reference`` (the attacker
    does not see FLTrust's server update). Knowledge: ``full`` aggregates the real honest rows; ``partial`` knows only its own
    clients' benign updates: ``mu``, the constraint and the honest rows of the simulated round
    come from them (honest rows are drawn from the Gaussian fitted to them, per coordinate,
    as Fang et al.'s partial-knowledge estimate).

    Args:
      objective: ``untargeted``, ``deviation`` or ``targeted``.
      attack_steps: optimisation steps (>= 0; 0 returns the projected initial point).
      attack_lr: step size in units of the constraint radius (> 0), for the default optimiser.
      constraint: ``max_norm``, ``distance`` or ``none``.
      knowledge: ``full`` or ``partial``.
      init_point: ``alie``, ``ipm`` (``-0.1 mu``), ``negative_mean``, ``own`` (the malicious
        clients' mean update) or ``best`` (whichever of these scores highest).
      optimizer: any optax transformation (minimising ``-objective`` in ``w``); default
        ``normalize_by_update_norm`` + SGD with cosine decay from ``attack_lr``.
      rule: the aggregation rule to attack; default the round's (``context.aggregator``), else mean.
      target_loss: ``target_loss(flat_params [d]) -> scalar`` for ``objective="targeted"``.
      server_lr: the server's learning rate, for ``targeted``.

    References:
      The objective and constraints follow Shejwalkar & Houmansadr, "Manipulating the Byzantine:
      Optimizing Model Poisoning Attacks and Defenses for Federated Learning", NDSS 2021 and
      Fang et al., "Local Model Poisoning Attacks to Byzantine-Robust Federated Learning",
      USENIX Security 2020; the starting points are Baruch et al. (ALIE, NeurIPS 2019) and Xie
      et al. (IPM, UAI 2019). Optimising through a differentiable aggregator is fljax's own.

    Examples:
      >>> updates = 1.0 + 0.1 * jax.random.normal(jax.random.PRNGKey(0), (7, 3))
      >>> malicious, median = jnp.arange(7) < 2, fljax.aggregators.median()
      >>> attack = adaptive(objective="untargeted", attack_steps=10, constraint="max_norm")
      >>> attacked = fljax.apply_attack(attack, updates, malicious, aggregator=median)
      >>> mu = updates[2:].mean(0)
      >>> [round(float(fljax.aggregate(median, u) @ mu / jnp.linalg.norm(mu)), 3) for u in (updates, attacked)]
      [1.738, 1.608]

      The median's progress along the honest direction, with the attackers honest, then attacking.
    """
    _choice("objective", objective, OBJECTIVES)
    _choice("constraint", constraint, CONSTRAINTS)
    _choice("init_point", init_point, INIT_POINTS)
    check_knowledge("adaptive", knowledge)
    if isinstance(attack_steps, bool) or not isinstance(attack_steps, int) or attack_steps < 0:
        raise ValueError(f"adaptive: attack_steps must be an integer >= 0, got {attack_steps!r}")
    check_number("adaptive", "attack_lr", attack_lr, positive=True)
    check_number("adaptive", "server_lr", server_lr, positive=True)
    if optimizer is not None and not isinstance(optimizer, optax.GradientTransformation):
        raise ValueError(
            f"adaptive: optimizer must be an optax.GradientTransformation (or None for the default), got {optimizer!r}"
        )
    if rule is not None and not isinstance(rule, Aggregator):
        raise ValueError(f"adaptive: rule must be an fljax.Aggregator (or None for the round's), got {rule!r}")
    if target_loss is not None and not callable(target_loss):
        raise ValueError(
            f"adaptive: target_loss must be a function flat_params -> scalar (or None), got {target_loss!r}"
        )
    if objective == "targeted" and not callable(target_loss):
        raise ValueError(
            "adaptive: objective 'targeted' needs target_loss(flat_params) -> scalar (e.g. the "
            "model's loss on a triggered batch relabelled to the target)"
        )
    if optimizer is None:
        schedule = optax.cosine_decay_schedule(attack_lr, max(attack_steps, 1), alpha=0.05)
        optimizer = optax.chain(optax.normalize_by_update_norm(), optax.sgd(schedule))

    def init(params):
        return AdaptiveState(objective_init=jnp.zeros((), jnp.float32), objective=jnp.zeros((), jnp.float32))

    def update(updates, malicious, state, key, context):
        k_honest, k_agg = jax.random.split(key)
        agg_rule = rule if rule is not None else (context.aggregator or mean())
        agg_state = context.agg_state if agg_rule is context.aggregator else agg_rule.init(context.params)
        known = observed_rows(malicious, knowledge)
        mu, sigma = masked_mean_std(updates, known)
        if knowledge == "full":
            base = updates
        else:
            base = mu + sigma * jax.random.normal(k_honest, updates.shape, updates.dtype)
        agg_ctx = simulated_server_context(context, updates.dtype, k_agg)
        direction = mu / jnp.maximum(_safe_norm(mu), _TINY)

        def score(z):
            agg, _, _ = agg_rule.update(jnp.where(malicious[:, None], z[None, :], base), agg_state, agg_ctx)
            if objective == "untargeted":
                return -jnp.dot(agg - mu, direction)
            if objective == "deviation":
                return _safe_norm(agg - mu)
            return -target_loss(context.params + server_lr * agg)

        known_rows = jnp.where(known[:, None], updates, 0.0)
        max_norm = jnp.max(jnp.where(known, jnp.linalg.norm(known_rows, axis=1), 0.0))
        max_dist = jnp.max(jnp.where(known, jnp.linalg.norm(known_rows - mu, axis=1), 0.0))
        center = mu if constraint == "distance" else jnp.zeros_like(mu)
        radius = max_dist if constraint == "distance" else max_norm
        scale = jnp.maximum(radius, _TINY)

        def project(w):
            return w if constraint == "none" else w / jnp.maximum(1.0, jnp.linalg.norm(w))

        to_z = lambda w: center + scale * w
        to_w = lambda z: project((z - center) / scale)

        def value(w):
            v = score(to_z(w))
            return jnp.where(jnp.isfinite(v), v, -jnp.inf)

        points = _candidates(updates, malicious, mu, sigma)
        names = list(points) if init_point == "best" else [init_point]
        starts = jnp.stack([to_w(points[name]) for name in names])
        start_values = jnp.stack([value(w) for w in starts])
        w0 = starts[jnp.argmax(start_values)]
        v0 = jnp.max(start_values)

        def step(carry, _):
            w, opt_state, best_w, best_v = carry
            v, g = jax.value_and_grad(lambda w_: -score(to_z(w_)))(w)
            v = jnp.where(jnp.isfinite(v), -v, -jnp.inf)
            better = v > best_v
            best_w, best_v = jnp.where(better, w, best_w), jnp.where(better, v, best_v)
            g = jnp.where(jnp.isfinite(g), g, 0.0)
            upd, opt_state = optimizer.update(g, opt_state, w)
            return (project(w + upd), opt_state, best_w, best_v), None

        (w, _, best_w, best_v), _ = lax.scan(step, (w0, optimizer.init(w0), w0, v0), None, length=attack_steps)
        v_last = value(w)
        best_w = jnp.where(v_last > best_v, w, best_w)
        best_v = jnp.maximum(best_v, v_last)
        crafted = to_z(best_w)
        any_mal = jnp.any(malicious)
        new_state = AdaptiveState(
            objective_init=jnp.where(any_mal, v0, 0.0).astype(jnp.float32),
            objective=jnp.where(any_mal, best_v, 0.0).astype(jnp.float32),
        )
        return replace_rows(updates, malicious, crafted), new_state

    return ModelAttack(init=init, update=update)
