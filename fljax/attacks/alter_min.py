"""Bhagoji et al.'s alternating minimisation: stealthy targeted model poisoning with boosting.

The attacker wants its target examples (inputs with the labels it chose) classified as
targeted by the GLOBAL model, while its update looks like a benign one. Within its local budget
it alternates: a few stealth steps on its clean examples' loss plus ``rho/2 ||w - w_ref||^2``,
then, while the malicious loss on the target examples is positive, one step on that loss whose
effect is boosted by ``boost`` (lambda), about 1 / the attackers' share of the aggregate, so
that averaging with the honest updates does not wash it out.

In fljax the target examples come from the data attack before it in the chain (``--attack=
'label_flip(source=5, target=3)+alter_min'``; also ``backdoor``, ``edge_case``, ...): they are
the attacker's examples that the data attack changes (relabelled, triggered or replaced), the
clean examples the others. Success is that data attack's success test (the runner's attack
success rate): for the targeted label flip, the share of held-out source-class test examples
classified as the target. Alone (no data attack) there is no target example, and the attacker
only trains stealthily (a benign update pulled towards w_ref).
"""

from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp
import optax
from jax import lax

from fljax.attacks._common import check_number, stateless
from fljax.attacks.targeted import _local
from fljax.client import Batch, ClientData, ClientUpdate, LossFn, fedavg
from fljax.types import Array, ModelAttack, PyTree


def _check(boost, rho, stealth_steps, confidence) -> None:
    check_number("alter_min", "boost", boost, positive=True)
    if not math.isfinite(boost):
        raise ValueError(f"alter_min: boost must be a finite number > 0, got {boost!r}")
    check_number("alter_min", "rho", rho, nonnegative=True)
    if not math.isfinite(rho):
        raise ValueError(f"alter_min: rho must be a finite number >= 0, got {rho!r}")
    if isinstance(stealth_steps, bool) or not isinstance(stealth_steps, int) or stealth_steps < 1:
        raise ValueError(f"alter_min: stealth_steps must be an integer >= 1, got {stealth_steps!r}")
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0 < confidence < 1:
        raise ValueError(f"alter_min: confidence must be in (0, 1), got {confidence!r}")


def alter_min(boost: float = 5.0, rho: float = 0.1, stealth_steps: int = 2, confidence: float = 0.5) -> ModelAttack:
    """What an alternating-minimisation attacker sends: its update as trained (the boosting is
    inside its local training, ``alter_min_training``); the arguments are the training's,
    checked here too so that a spec fails before any data is loaded.

    References:
      Bhagoji, Chakraborty, Mittal, Calo, "Analyzing Federated Learning through an Adversarial
      Lens", ICML 2019 (Section 4, alternating minimization).

    Examples:
      >>> make_round(
      ...     ...,
      ...     data_attack=label_flip(10, 5, 3),
      ...     model_attack=alter_min(),  # doctest: +SKIP
      ...     malicious_client_update=alter_min_training(loss_fn, optax.sgd(0.1), boost=5.0, local_steps=10),
      ... )
    """
    _check(boost, rho, stealth_steps, confidence)
    return stateless(_as_trained)


def _as_trained(updates, malicious, key, context):
    return updates


def _sq_distance(a: PyTree, b: PyTree) -> Array:
    return sum(jnp.sum((x - y) ** 2) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _select(on: Array, a: PyTree, b: PyTree) -> PyTree:
    return jax.tree.map(lambda x, y: jnp.where(on, x, y), a, b)


def changed_rows(x: Array, y: Array, px: Array, py: Array) -> Array:
    """``bool [B]``: the rows whose input or label a data attack changed."""
    flat = lambda a: a.reshape(a.shape[0], -1)
    return jnp.any(flat(px) != flat(x), axis=1) | jnp.any(flat(py) != flat(y), axis=1)


def malicious_loss(loss_fn: LossFn, confidence: float) -> LossFn:
    """The attacker's loss on its target examples (``batch.mask``): the mean over them of
    ``max(0, l_i - log(1 / confidence))``, ``l_i`` the example's own ``loss_fn`` (a one-example
    batch: its cross-entropy). Positive exactly while some target example gets less than
    ``confidence`` probability for its target label; 0 without target examples."""
    margin = -math.log(confidence)

    def loss(params, batch: Batch, key=None):
        one = lambda x, y: loss_fn(params, Batch(x[None], y[None], jnp.ones((1,), bool)), key)
        hinge = jnp.maximum(jax.vmap(one)(batch.x, batch.y) - margin, 0.0)
        return jnp.sum(jnp.where(batch.mask, hinge, 0.0)) / jnp.maximum(jnp.sum(batch.mask), 1)

    return loss


def alter_min_training(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    boost: float = 5.0,
    rho: float = 0.1,
    stealth_steps: int = 2,
    confidence: float = 0.5,
    *,
    local_steps: Optional[int] = None,
    local_epochs: Optional[int] = None,
    batch_size: int = 32,
    protocol: str = "fedavg",
) -> ClientUpdate:
    """Alternating minimisation with boosting, the malicious clients' local training.

    From the global model G (``w_ref = G``), for each of the honest clients' ``K`` local steps
    (``local_steps``, or ``local_epochs * ceil(count / batch_size)``):

    1. a stealth step on ``loss_fn(w, clean batch) + rho/2 ||w - G||^2``, the batch
       ``batch_size`` of the attacker's clean examples drawn without replacement;
    2. after every ``stealth_steps``-th stealth step and after the last one: if
       ``malicious_loss(w, target examples) > 0`` (some target example below ``confidence``),
       one step on that loss with its update multiplied by ``boost``:
       ``w <- w + boost * optimizer(grad)`` (the optimizer keeps a separate state for it).

    Target examples: the client's examples that the data attack (``transform``) changes when
    applied to all of them at once; clean examples: the others. Bhagoji et al. take the previous
    round's global update as the estimate of the benign update in the stealth term; a client
    update in fljax sees only G, so ``w_ref = G`` (as constrain-and-scale's distance term).

    Args:
      loss_fn, optimizer: the task loss and the client optimizer.
      boost: lambda, the malicious step's boost (finite, > 0): about 1 / the attackers' share of
        the aggregate, ``n / f`` for f colluding attackers of equal weight among n (the paper's
        K for one attacker of K agents; the default 5 for the runner's 20 attackers of 100).
        Over-boosting (10 for 4 attackers of 20) can make the global model diverge.
      rho: weight of the stealth term (>= 0).
      stealth_steps: stealth steps between two malicious steps (>= 1).
      confidence: the target probability every target example must reach, in (0, 1).
      local_steps, local_epochs, batch_size, protocol: as ``fljax.client.fedavg`` (``local_steps``
        wins); needs protocol fedavg.

    References:
      Bhagoji, Chakraborty, Mittal, Calo, "Analyzing Federated Learning through an Adversarial
      Lens", ICML 2019 (Section 4: explicit boosting, stealth, alternating minimization).

    Examples:
      >>> mal = alter_min_training(loss_fn, optax.sgd(0.1), boost=5.0, rho=0.1, local_steps=10)  # doctest: +SKIP
    """
    _check(boost, rho, stealth_steps, confidence)
    local = _local("alter_min", protocol, local_steps, local_epochs)
    fedavg(loss_fn, optimizer, batch_size=batch_size, **local)  # validates the settings at build time
    target_loss = malicious_loss(loss_fn, confidence)

    def update(params, data: ClientData, key, transform=None):
        width = data.indices.shape[0]
        count = data.count
        real = jnp.arange(width) < count
        x, y = data.x[data.indices], data.y[data.indices]
        k_poison, k_steps = jax.random.split(key)
        if transform is None:
            targets, px, py = jnp.zeros(width, bool), x, y
        else:
            px, py = transform(x, y, real, k_poison)
            targets = real & changed_rows(x, y, px, py)
        clean = real & ~targets
        if local["local_steps"] is not None:
            total = active = local["local_steps"]
        else:
            total = local["local_epochs"] * max(1, math.ceil(width / batch_size))
            active = local["local_epochs"] * jnp.maximum((count + batch_size - 1) // batch_size, 1)
        take = min(batch_size, width)

        def stealth_loss(p, batch, k):
            return loss_fn(p, batch, k) + 0.5 * rho * _sq_distance(p, params)

        def malicious_step(p, state, k):
            value, grads = jax.value_and_grad(target_loss)(p, Batch(px, py, targets), k)
            upd, new_state = optimizer.update(grads, state, p)
            boosted = optax.apply_updates(p, jax.tree.map(lambda u: boost * u, upd))
            return _select(value > 0, boosted, p), _select(value > 0, new_state, state)

        def step(carry, t):
            p, s_state, m_state = carry
            k_batch, k_loss, k_mal = jax.random.split(jax.random.fold_in(k_steps, t), 3)
            on = t < active
            keys = jnp.where(clean, jax.random.uniform(k_batch, (width,)), 2.0)
            picked = lax.top_k(-keys, take)[1]
            grads = jax.grad(stealth_loss)(p, Batch(x[picked], y[picked], clean[picked]), k_loss)
            upd, new_s = optimizer.update(grads, s_state, p)
            p, s_state = _select(on, optax.apply_updates(p, upd), p), _select(on, new_s, s_state)
            slot = on & (((t + 1) % stealth_steps == 0) | (t + 1 == active))
            p, m_state = lax.cond(slot, malicious_step, lambda p, s, k: (p, s), p, m_state, k_mal)
            return (p, s_state, m_state), None

        start = (params, optimizer.init(params), optimizer.init(params))
        (local_params, _, _), _ = lax.scan(step, start, jnp.arange(total))
        return jax.tree.map(lambda a, b: jnp.where(count > 0, a - b, 0), local_params, params)  # as fedavg's

    return update
