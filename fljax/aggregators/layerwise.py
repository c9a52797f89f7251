"""LASA, layer-adaptive sparsified model aggregation (Xu et al., WACV 2025): clip to the median
norm, sparsify each update, then per layer keep the clients whose layer norm and sign purity are
both typical (median z-scores) and average them."""

from __future__ import annotations

import math
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fljax.aggregators import _common
from fljax.types import Aggregator, Array, ModelAccess

_HI = jax.lax.Precision.HIGHEST


def kth_largest_per_row(a: Array, k: int) -> Array:
    """``[n]``: the k-th largest (1-indexed) entry of each row of the non-negative, finite
    ``a [n, m]``, exactly: the non-negative float32 values order as their bit patterns do, and
    the bits of the answer are found from the highest down, one counting pass each (31 passes).
    0 when a row has fewer than k nonzero entries or k = 0."""
    keys = jax.lax.bitcast_convert_type(a.astype(jnp.float32), jnp.int32)
    if k <= 0:
        return jnp.zeros(a.shape[0], a.dtype)

    def bit(i, t):
        candidate = t | jnp.left_shift(jnp.int32(1), 30 - i)
        enough = jnp.sum(keys >= candidate[:, None], axis=1) >= k
        return jnp.where(enough, candidate, t)

    t = jax.lax.fori_loop(0, 31, bit, jnp.zeros(a.shape[0], jnp.int32))
    return jax.lax.bitcast_convert_type(t, jnp.float32).astype(a.dtype)


def median_z_scores(values: Array, valid: Array) -> Array:
    """``|v - median| / std`` over the ``valid`` entries (population std); ``0 / 0`` is 0 and
    ``v / 0`` is +inf, so that with all valid values equal every one of them scores 0."""
    v = jnp.where(valid, values, jnp.nan)
    dev = jnp.abs(values - jnp.nanmedian(v))
    std = jnp.nanstd(v)
    return jnp.where(dev == 0, 0.0, jnp.where(std > 0, dev / jnp.where(std > 0, std, 1.0), jnp.inf))


def _layers(rule: str, layer_shapes) -> Optional[list[tuple[int, bool]]]:
    """``[(size, is_matrix)]`` of the given shapes (checked), or None."""
    if layer_shapes is None:
        return None
    try:
        shapes = [tuple(int(s) for s in shape) for shape in layer_shapes]
        ok = len(shapes) > 0 and all(s > 0 for shape in shapes for s in shape)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(
            f"{rule}: layer_shapes must be a non-empty sequence of shapes (sequences of positive "
            f"integers), got {layer_shapes!r}"
        )
    return [(math.prod(shape), len(shape) >= 2) for shape in shapes]


def model_layers(model: ModelAccess, d: int) -> list[tuple[int, bool]]:
    """``[(size, is_matrix)]`` of the model's parameter arrays in the flat vector's order (the
    leaves of ``model.unravel``'s pytree, which ``ravel_pytree`` concatenates in that order)."""
    leaves = jax.tree.leaves(jax.eval_shape(model.unravel, jax.ShapeDtypeStruct((d,), jnp.float32)))
    return [(math.prod(leaf.shape), len(leaf.shape) >= 2) for leaf in leaves]


def lasa(
    sparsity: float = 0.3,
    lambda_n: float = 1.0,
    lambda_s: float = 1.0,
    layer_shapes: Optional[Sequence[Sequence[int]]] = None,
) -> Aggregator:
    """LASA: layer-wise selection of clients on sparsified, norm-clipped updates.

    1. Clip every update to the median of the n update norms: ``x_i min(1, med / ||x_i||)``.
    2. Sparsify each clipped update: over its weight matrices and kernels jointly (the arrays of
       rank >= 2; biases are kept whole), keep the ``floor((1 - s) D)`` entries of largest
       magnitude (ties at the threshold kept, zeros never).
    3. Per layer l: the layer norm ``||x_il||`` and the sign purity
       ``rho_il = sum_j sign(x_ilj) / sum_j |sign(x_ilj)|`` of each sparsified update; client i
       is kept for layer l when both median z-scores ``|v - median| / std`` are below
       ``lambda_n`` and ``lambda_s``. No client kept: all are (the authors' code).
    4. Layer l of the aggregate is the uniform mean of the kept clients' clipped and sparsified
       layers.

    Notes against the code of the peers: the authors' code computes purity as
    ``0.5 (1 + rho (1 - s))`` (FLPoison ``0.5 rho (1 - s)``), affine maps of rho that the z-score
    does not see; its sparsification keeps entries strictly above the k-th largest (k - 1 of
    them), here k; its averaged layers are also sparsified (it masks in place) while FLPoison
    averages the clipped dense ones: here the paper's sparsified ones. Non-finite updates get
    weight 0 and stay out of the medians and standard deviations (the authors drop NaN updates;
    an Inf update makes their std NaN and every client fail the checks); a finite update whose
    norm overflows float32 is clipped to zero.

    The rule needs the model's layers. By default it reads them from the model the round
    supplies (``needs_model``: ``make_round``'s ``model_apply``, which the runner always gives;
    ``context.model``'s parameter arrays in the flat vector's order). ``layer_shapes`` gives them
    instead: the shapes of the parameter arrays in ``jax.tree.leaves`` order (``ravel_pytree``'s),
    e.g. ``[p.shape for p in jax.tree.leaves(params)]``, their sizes adding up to d; then no model
    is needed. A context with neither (``fljax.aggregate`` without ``model=``, a context built by
    hand) makes the whole update one layer of weights.

    ``info["weights"][i]`` is client i's coefficient averaged over the coordinates
    (``sum_l |l| / d * kept_il / |kept_l|``), so a client rejected in most layers is flagged.

    Args:
      sparsity: s in [0, 1), the share of weight entries zeroed (the paper's default 0.3).
      lambda_n: the norm check's z-score bound (> 0; the authors' default 1.0).
      lambda_s: the sign check's z-score bound (> 0; the authors' default 1.0).
      layer_shapes: the model's parameter shapes (see above), or None: the round's model.

    References:
      Xu, Zhang, Li, Hu, "Achieving Byzantine-Resilient Federated Learning via Layer-Adaptive
      Sparsified Model Aggregation", WACV 2025.

    Examples:
      >>> agg = lasa(layer_shapes=[(784, 200), (200,), (200, 10), (10,)])  # an MLP's kernels and biases
    """
    rule = "lasa"
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0 <= sparsity < 1:
        raise ValueError(f"{rule}: sparsity must be a number in [0, 1), got {sparsity!r}")
    _common.check_positive(rule, "lambda_n", lambda_n)
    _common.check_positive(rule, "lambda_s", lambda_s)
    layers = _layers(rule, layer_shapes)

    def aggregate(updates, context):
        n, d = updates.shape
        parts = layers or (model_layers(context.model, d) if context.model is not None else [(d, True)])
        if sum(size for size, _ in parts) != d:
            raise ValueError(
                f"{rule}: layer_shapes add up to {sum(s for s, _ in parts)} parameters, the updates "
                f"have d={d}; they must match (the model's parameter shapes in jax.tree.leaves order)"
            )
        finite = _common.finite_rows(updates)
        norms = _common.safe_norms(jax.lax.stop_gradient(updates))
        bound = jnp.median(norms)
        over = finite & (norms > bound)
        factors = jnp.where(over, bound / jnp.where(over, norms, 1.0), 1.0).astype(updates.dtype)
        x = jnp.where(finite[:, None], updates * factors[:, None], 0.0)

        matrix = np.concatenate([np.full(size, is_matrix) for size, is_matrix in parts])
        dense = int(matrix.sum())
        magnitude = jnp.abs(x) if matrix.all() else jnp.where(jnp.asarray(matrix)[None, :], jnp.abs(x), 0.0)
        threshold = kth_largest_per_row(jax.lax.stop_gradient(magnitude), int((1 - sparsity) * dense))
        kept_entries = (magnitude >= threshold[:, None]) & (magnitude > 0)
        if not matrix.all():
            kept_entries = kept_entries | ~jnp.asarray(matrix)[None, :]
        x = jnp.where(kept_entries, x, 0.0)

        pieces, weights, start = [], jnp.zeros(n, updates.dtype), 0
        for size, _ in parts:
            layer = x[:, start : start + size]
            start += size
            layer_norms = jnp.sqrt(jnp.sum(layer * layer, axis=1))
            signs = jnp.sign(layer)
            nonzero = jnp.sum(jnp.abs(signs), axis=1)
            purity = jnp.sum(signs, axis=1) / jnp.maximum(nonzero, 1.0)
            keep = (
                finite
                & (median_z_scores(layer_norms, finite) < lambda_n)
                & (median_z_scores(purity, finite) < lambda_s)
            )
            keep = jnp.where(jnp.any(keep), keep, finite)
            share = _common.normalize(keep.astype(updates.dtype))
            pieces.append(jnp.dot(share, layer, precision=_HI))
            weights = weights + share * (size / d)
        return jnp.concatenate(pieces), _common.info(weights, clip_factors=factors)

    return _common.stateless(aggregate, needs_model=layers is None)
