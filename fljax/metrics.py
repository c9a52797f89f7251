"""Evaluation of the global model: clean accuracy and loss, attack success rate; the test metrics of
rules that change how the server predicts (CRFL's smoothed accuracy and certified radius)."""

from __future__ import annotations

import math
from typing import Callable, Optional

import jax.numpy as jnp
import jax.scipy.stats  # noqa: F401  (jax.scipy.stats.norm in crfl_contraction)
import optax
from jax import lax
from jax.flatten_util import ravel_pytree

from fljax.client import label_mask
from fljax.types import Array, DataAttack, PyTree


def _padded_batches(arrays, batch_size: int):
    """Pads the leading axis to a multiple of ``batch_size`` and reshapes to
    ``[num_batches, batch_size, ...]``; also returns the mask of real entries."""
    n = arrays[0].shape[0]
    num_batches = max(1, -(-n // batch_size))
    pad = num_batches * batch_size - n
    out = [
        jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1)).reshape(num_batches, batch_size, *a.shape[1:]) for a in arrays
    ]
    mask = (jnp.arange(num_batches * batch_size) < n).reshape(num_batches, batch_size)
    return out, mask


def make_evaluate(
    apply_fn: Callable[[PyTree, Array], Array], data_attack: Optional[DataAttack] = None, batch_size: int = 1000
) -> Callable[[PyTree, Array, Array], dict]:
    """Builds ``evaluate(params, x_test, y_test) -> {accuracy, loss[, attack_success_rate]}``.

    Accuracy and loss are per example, or per token for sequence labels ``y_test [N, T]``
    (logits ``[N, T, classes]``; negative labels are padding and do not count).

    The attack success rate is the share of the attack's test examples (``DataAttack.targeted``:
    e.g. source-class examples for a targeted flip, triggered non-target examples for a
    backdoor) that the model classifies as the attacker's label; ``source_recall`` the share it
    classifies as their true label (for a targeted flip, Tolpegin et al.'s source-class recall;
    for a backdoor, the accuracy on triggered inputs; not for an attack whose success test brings
    inputs of its own, ``DataAttack.own_test_inputs``). Runs in test batches of
    ``batch_size`` (``lax.map``) so memory stays bounded for large test sets.
    """

    def counts(params, x, labels, mask):
        """Over the masked examples of ``x``: hits against each label array of ``labels`` (one
        forward pass), the summed loss against the first, and their number."""
        (xb, mb, *lb), real = _padded_batches((x, mask, *labels), batch_size)

        def one(batch):
            bx, bm, br, *bl = batch
            logits = apply_fn(params, bx)
            keep = label_mask(bl[0], bm & br)  # per token for sequence labels [B, T]
            predicted = jnp.argmax(logits, -1)
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(keep, bl[0], 0))
            hits = jnp.stack([jnp.sum((predicted == by) & keep) for by in bl])
            return hits, jnp.sum(jnp.where(keep, loss, 0.0)), jnp.sum(keep)

        hits, loss, total = lax.map(one, (xb, mb, real, *lb))
        return jnp.sum(hits, axis=0), jnp.sum(loss), jnp.sum(total)

    def evaluate(params, x, y):
        hits, loss, total = counts(params, x, (y,), jnp.ones(y.shape[:1], bool))
        out = {"accuracy": hits[0] / total, "loss": loss / total}
        if data_attack is not None and data_attack.targeted is not None:
            xt, yt, valid = data_attack.targeted(x, y)
            true_labels = () if data_attack.own_test_inputs else (y,)
            hits, _, total_t = counts(params, xt, (yt, *true_labels), valid)
            share = lambda hits: jnp.where(total_t > 0, hits / jnp.maximum(total_t, 1), jnp.nan)
            out["attack_success_rate"] = share(hits[0])
            if true_labels:
                out["source_recall"] = share(hits[1])
        return out

    return evaluate


def with_rule_metrics(
    evaluate: Callable[[PyTree, Array, Array], dict], aggregator, apply_fn: Callable[[PyTree, Array], Array]
) -> Callable[[PyTree, Array, Array], dict]:
    """``evaluate`` plus the test metrics of a rule that changes how the server predicts
    (``Aggregator.evaluate``: CRFL's smoothed accuracy and certified radius); ``evaluate``
    itself for any other rule."""
    if aggregator.evaluate is None:
        return evaluate

    def combined(params, x, y):
        return {**evaluate(params, x, y), **aggregator.evaluate(apply_fn, params, x, y)}

    return combined


def crfl_radius(p_a: Array, p_b: Array, sigma_train: float, contraction: Array = 1.0) -> Array:
    """CRFL's certified radius (Xie et al., ICML 2021, Theorem 2): with ``p_a`` a lower bound
    on the probability of the smoothed model's top class and ``p_b`` an upper bound on the
    runner-up's, the prediction cannot change while the poisoning moves the global model by at
    most

        sqrt( -ln(1 - (sqrt(p_a) - sqrt(p_b))^2) * sigma_train^2 / (2 * contraction) )

    in L2 (``contraction``: ``crfl_contraction``, the product over the rounds after the
    poisoned one of what clipping and noise shrink it by). The paper states the radius in
    the trigger's magnitude ``||delta||``: divide by its bound on the model shift per unit of
    trigger, ``sqrt(R sum_i p_i^2) tau L_z gamma eta q_B / n_B`` (R attackers of aggregation
    weights p_i, tau local steps, L_z the loss's Lipschitz constant, gamma the scaling, eta the
    learning rate, q_B / n_B the poisoned share of a batch), a property of the attack. 0 where
    ``p_a <= p_b`` (the vote is not certified).

    Examples:
      >>> float(crfl_radius(0.9, 0.05, sigma_train=0.01))  # sqrt(-ln(1 - 0.7251^2) 0.01^2 / 2)
      0.00610...
    """
    gap = (jnp.sqrt(jnp.clip(p_a, 0.0, 1.0)) - jnp.sqrt(jnp.clip(p_b, 0.0, 1.0))) ** 2
    radius = jnp.sqrt(-jnp.log1p(-jnp.minimum(gap, 1.0 - 1e-7)) * sigma_train**2 / (2.0 * contraction))
    return jnp.where(p_a > p_b, radius, 0.0)


def crfl_contraction(clip_norms, sigma_train: float, clip_norm_test: float, sigma_test: float) -> Array:
    """``prod_t (2 Phi(rho_t / sigma_train) - 1) * (2 Phi(rho_T / sigma_test) - 1)``: CRFL's
    factor for a shift of the model before the rounds clipped at ``clip_norms`` (``rho_t``,
    possibly none) and the test-time smoothing of a model clipped at ``clip_norm_test``."""
    factor = lambda rho, sigma: 2.0 * jax.scipy.stats.norm.cdf(jnp.asarray(rho, jnp.float32) / sigma) - 1.0
    return jnp.prod(factor(jnp.asarray(clip_norms, jnp.float32), sigma_train)) * factor(clip_norm_test, sigma_test)


def smoothed_metrics(
    apply_fn: Callable[[PyTree, Array], Array],
    params: PyTree,
    x: Array,
    y: Array,
    *,
    sigma_train: float,
    sigma_test: float,
    clip_norm: float,
    num_samples: int,
    alpha: float,
    key: Optional[Array] = None,
    batch_size: int = 1000,
) -> dict:
    """CRFL's test-time prediction and certificate on ``(x, y)``.

    The smoothed classifier votes: ``num_samples`` (M) copies of the global model plus
    ``N(0, sigma_test^2 I)`` noise (from ``key``, a fixed key by default: every evaluation draws
    the same copies) each predict; the prediction is the top class A (ties: the lower class).
    With the vote shares ``pA``, ``pB`` (the runner-up), Hoeffding's bound at confidence
    ``1 - alpha`` gives ``p_a = pA - sqrt(ln(1/alpha) / (2M))``, ``p_b = pB + sqrt(...)``, and the
    radius is ``crfl_radius(p_a, p_b, sigma_train, contraction)`` for a poisoning of the last round
    (``crfl_contraction`` without training rounds, ``rho_T = clip_norm``: the largest clipping
    norm gives the smallest, a safe, radius). Per example (per token for sequence labels;
    negative labels do not count).

    Returns ``smoothed_accuracy`` (the vote's accuracy), ``certified_accuracy`` (correct and
    ``p_a > p_b``) and ``certified_radius`` (the mean over the examples of the radius of the
    certified correct ones, 0 for the others: the average certified radius).
    """
    flat, unravel = ravel_pytree(params)
    key = jax.random.PRNGKey(0) if key is None else key
    (xb, yb), real = _padded_batches((x, y), batch_size)
    classes = jax.eval_shape(apply_fn, params, xb[0]).shape[-1]

    def one_copy(votes, m):
        noisy = unravel(flat + sigma_test * jax.random.normal(jax.random.fold_in(key, m), flat.shape, flat.dtype))
        predicted = lax.map(lambda bx: jnp.argmax(apply_fn(noisy, bx), axis=-1), xb)
        return votes + jax.nn.one_hot(predicted, classes, dtype=jnp.int32), None

    votes, _ = lax.scan(one_copy, jnp.zeros(yb.shape + (classes,), jnp.int32), jnp.arange(num_samples))
    ranked = jnp.sort(votes, axis=-1)
    top = jnp.argmax(votes, axis=-1)
    margin = math.sqrt(math.log(1.0 / alpha) / (2.0 * num_samples))
    p_a = ranked[..., -1] / num_samples - margin
    p_b = ranked[..., -2] / num_samples + margin
    contraction = crfl_contraction([], sigma_train, clip_norm, sigma_test)
    radius = crfl_radius(p_a, p_b, sigma_train, contraction)
    keep = label_mask(yb, real)
    total = jnp.maximum(jnp.sum(keep), 1)
    correct = (top == yb) & keep
    certified = correct & (p_a > p_b)
    return {
        "smoothed_accuracy": jnp.sum(correct) / total,
        "certified_accuracy": jnp.sum(certified) / total,
        "certified_radius": jnp.sum(jnp.where(certified, radius, 0.0)) / total,
    }
