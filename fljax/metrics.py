"""Evaluation of the global model: clean accuracy and loss, attack success rate."""

from __future__ import annotations

from typing import Callable, Optional

import jax.numpy as jnp
import optax
from jax import lax

from fljax.client import label_mask
from fljax.types import Array, DataAttack, PyTree


def _padded_batches(arrays, batch_size: int):
    """Pads the leading axis to a multiple of ``batch_size`` and reshapes to
    ``[num_batches, batch_size, ...]``; also returns the mask of real entries."""
    n = arrays[0].shape[0]
    num_batches = max(1, -(-n // batch_size))
    pad = num_batches * batch_size - n
    out = [jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1)).reshape(num_batches, batch_size, *a.shape[1:]) for a in arrays]
    mask = (jnp.arange(num_batches * batch_size) < n).reshape(num_batches, batch_size)
    return out, mask


def make_evaluate(apply_fn: Callable[[PyTree, Array], Array], data_attack: Optional[DataAttack] = None,
                  batch_size: int = 1000) -> Callable[[PyTree, Array, Array], dict]:
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
