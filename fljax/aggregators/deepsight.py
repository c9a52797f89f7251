"""DeepSight: inspect the models' output layers and outputs, cluster, drop the clusters of
suspicious models, clip (Rieger, Nguyen, Miettinen, Sadeghi, NDSS 2022)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from fljax.aggregators import _common
from fljax.aggregators._hdbscan import hdbscan
from fljax.aggregators.clustering import cosine_distances
from fljax.types import Aggregator, Array, ModelAccess

_HI = jax.lax.Precision.HIGHEST
LOG_RATIO_CAP = 80.0
"""DDif ratios ``p_i / p_G`` are computed as ``exp(min(log p_i - log p_G, 80))``: exact, with no
epsilon, and finite for any pair of finite models."""


@functools.lru_cache(maxsize=64)
def output_layer(model: ModelAccess, d: int, dtype=jnp.float32) -> tuple[slice, slice]:
    """Where, in the flat ``[d]`` parameter vector, the output layer's kernel (``[h, C]``,
    row-major) and bias (``[C]``) lie: the layer whose bias moves the logits one for one.

    Found on the model itself, not from shapes: at all-zero parameters, the bias of the layer
    that produces the logits is the only leaf whose tangent moves every logit by exactly as much
    (any other parameter reaches the logits through that layer's zero kernel); one forward-mode
    pass tries every ``bias`` leaf of C entries at once, leaf k with the tangent ``k + 1``. Its
    kernel is the ``kernel`` leaf next to it (flax's ``Dense``). The probe is one small program,
    compiled and run once per model (cached).

    Raises:
      ValueError: no such layer (the model does not end with a dense layer named flax's way).
    """
    leaves, treedef = jax.tree_util.tree_flatten_with_path(
        jax.eval_shape(model.unravel, jax.ShapeDtypeStruct((d,), dtype))
    )
    x = jax.ShapeDtypeStruct((1, *model.inputs.shape), model.inputs.dtype)
    classes = jax.eval_shape(model.apply, jax.tree_util.tree_unflatten(treedef, [leaf for _, leaf in leaves]), x).shape[
        -1
    ]
    name = lambda path: str(getattr(path[-1], "key", getattr(path[-1], "name", path[-1])))
    candidates = [i for i, (path, leaf) in enumerate(leaves) if name(path) == "bias" and leaf.shape == (classes,)]

    def probe(flat):
        zeros = model.unravel(flat)
        tangent = jax.tree_util.tree_unflatten(
            treedef,
            [
                jnp.full(leaf.shape, i + 1.0 if i in candidates else 0.0, leaf.dtype)
                for i, (_, leaf) in enumerate(leaves)
            ],
        )
        return jax.jvp(lambda p: model.apply(p, jnp.zeros(x.shape, x.dtype)), (zeros,), (tangent,))[1]

    with jax.ensure_compile_time_eval():
        moved = np.asarray(jax.jit(probe)(np.zeros(d, dtype)))
    offsets = np.cumsum([0] + [int(np.prod(leaf.shape)) for _, leaf in leaves])
    at = lambda j: slice(int(offsets[j]), int(offsets[j + 1]))
    for i in candidates:
        if np.all(moved == i + 1.0):
            for j, (other, kernel) in enumerate(leaves):
                if (
                    other[:-1] == leaves[i][0][:-1]
                    and name(other) == "kernel"
                    and kernel.shape[-1:] == (classes,)
                    and len(kernel.shape) == 2
                ):
                    return at(j), at(i)
    raise ValueError(
        "deepsight: no output layer found: the model must end with a dense layer (flax's Dense: "
        "'kernel' [h, C] and 'bias' [C], the bias added to the logits)"
    )


def neups(kernel: Array, bias: Array) -> Array:
    """Normalised energy updates ``[n, C]`` of the output neurons: with the update energy
    ``e_k = |db_k| + sum_j |dW_jk|``, ``NEUP_k = e_k^2 / sum_l e_l^2`` (rows scaled by their largest
    energy first, so huge updates do not overflow)."""
    energy = jnp.abs(bias) + jnp.sum(jnp.abs(kernel), axis=-2)
    top = jnp.max(energy, axis=-1, keepdims=True)
    scaled = energy / jnp.where(top > 0, top, 1.0)
    square = scaled * scaled
    return square / jnp.maximum(jnp.sum(square, axis=-1, keepdims=True), jnp.finfo(square.dtype).tiny)


def threshold_exceedings(neup: Array, threshold_factor: float = 0.01) -> Array:
    """``[n]``: the NEUPs above ``max(threshold_factor, 1/C) * max_k NEUP_k`` (a model trained on
    few labels has few)."""
    classes = neup.shape[-1]
    bound = max(threshold_factor, 1.0 / classes) * jnp.max(neup, axis=-1, keepdims=True)
    return jnp.sum(neup > bound, axis=-1)


def division_differences(model: ModelAccess, params: Array, updates: Array, noise: Array) -> Array:
    """DDifs ``[n, S, C]``: per client and per noise set ``s`` (``noise [S, M, ...]``), the mean over
    the set's inputs of ``p_i(k | x) / p_G(k | x)``, the client model's softmax output over the
    global model's (``W_i = params + x_i``). Clients run one after the other (``lax.map``), so
    memory holds one client's forward pass."""
    sets, per_set = noise.shape[:2]
    inputs = noise.reshape(sets * per_set, *noise.shape[2:])
    log_global = jax.nn.log_softmax(model.apply(model.unravel(params), inputs).astype(jnp.float32), axis=-1)

    def one(update):
        log_client = jax.nn.log_softmax(model.apply(model.unravel(params + update), inputs).astype(jnp.float32), -1)
        ratio = jnp.exp(jnp.minimum(log_client - log_global, LOG_RATIO_CAP))
        return jnp.mean(ratio.reshape(sets, per_set, -1), axis=1)

    return jax.lax.map(one, updates)


def _euclidean(features: Array, usable: Array) -> Array:
    """``[n, n]`` Euclidean distances between rows of small ``[n, k]`` features; +inf to and from
    unusable rows."""
    diff = features[:, None, :] - features[None, :, :]
    d = jnp.sqrt(jnp.sum(diff * diff, axis=-1))
    both = usable[:, None] & usable[None, :]
    return jnp.where(jnp.eye(features.shape[0], dtype=bool), 0.0, jnp.where(both & jnp.isfinite(d), d, jnp.inf))


def _membership(labels: Array) -> Array:
    """``[n, n]``: 0 for two models in the same cluster (and on the diagonal), 1 otherwise; noise
    (-1) is in no cluster, so two noise models are apart."""
    same = (labels[:, None] == labels[None, :]) & (labels[:, None] >= 0)
    return jnp.where(same | jnp.eye(labels.shape[0], dtype=bool), 0.0, 1.0)


def deepsight(
    tau: float = 1.0 / 3.0,
    num_seeds: int = 3,
    num_samples: int = 1000,
    threshold_factor: float = 0.01,
    min_cluster_size: int = 5,
    min_samples: int = 3,
) -> Aggregator:
    """DeepSight: drop the clusters made mostly of models trained on few labels; clip the rest.

    The rule reads the model (``needs_model``: the round supplies ``context.model``, its
    ``unravel`` and ``apply``); its output layer is found by ``output_layer``. Per round:

    1. NEUPs of each update's output layer (``neups``) and their threshold exceedings TE
       (``threshold_exceedings``); a model is labelled suspicious when ``TE_i <= median(TE) / 2``
       (homogeneous training data, as a backdoor's);
    2. DDifs (``division_differences``): each client model's softmax outputs over the global
       model's on ``num_seeds`` fixed sets of ``num_samples`` uniform [0, 1) noise inputs;
    3. cosine distances between the output-layer BIAS updates;
    4. HDBSCAN (``fljax.aggregators._hdbscan``, ``min_cluster_size``, ``min_samples``) of the
       cosine distances, of the NEUPs and of each seed's DDifs; each clustering gives the
       distances 0 (same cluster) / 1 (not); their average (the DDif ones averaged first) is
       clustered once more, with ``allow_single_cluster``;
    5. a cluster is accepted when its share of suspicious models is below ``tau``; a model
       HDBSCAN leaves as noise is a cluster of its own (accepted iff not suspicious);
    6. accepted updates are clipped to ``S_t``, the median norm of all the round's updates, and
       averaged uniformly.

    Choices where the paper leaves them open or public code departs from it: FLPoison's HDBSCAN
    settings (``min_samples=3``, the library's ``min_cluster_size=5``, ``allow_single_cluster``
    in the final clustering only); noise models are apart from each other in the membership
    distances (FLPoison compares the noise label -1 like a cluster label, putting all noise
    models in one cluster, and then rejects every noise model; the paper accepts or rejects
    clusters, and noise is no cluster). DDifs use the softmax PROBABILITIES (the paper's
    definition; FLPoison divides the raw outputs). ``num_samples`` defaults to 1,000 noise
    inputs per seed for CPU runs (the paper's code uses 20,000: pass ``num_samples=20000``);
    the noise sets are drawn once from fixed keys (as pre-generated sets), the same every
    round. Non-finite updates, and updates whose features are not finite, are noise in every
    clustering and never accepted; they count as +inf norms in the median.

    ``info["weights"]`` is uniform over the accepted clients (clipped before that weight
    applies); ``info`` also holds ``threshold_exceedings``, ``suspicious``, ``clusters`` (the
    final labels, -1 noise) and ``clip_factors``.

    Args:
      tau: the largest share of suspicious models an accepted cluster may hold, in (0, 1].
      num_seeds: noise sets for the DDifs (>= 1).
      num_samples: noise inputs per set (>= 1).
      threshold_factor: the NEUP threshold's factor ``max(threshold_factor, 1/C) * max NEUP``, in [0, 1).
      min_cluster_size: HDBSCAN's least cluster size (>= 2).
      min_samples: HDBSCAN's neighbourhood for core distances (>= 1, at most n).

    References:
      Rieger, Nguyen, Miettinen, Sadeghi, "DeepSight: Mitigating Backdoor Attacks in Federated
      Learning Through Deep Model Inspection", NDSS 2022. Campello, Moulavi, Sander,
      "Density-Based Clustering Based on Hierarchical Density Estimates", PAKDD 2013.

    Examples:
      >>> rule = deepsight()
      >>> rule.needs_model  # make_round(..., model_apply=model.apply) gives it context.model
      True
    """
    rule = "deepsight"
    if not isinstance(tau, (int, float)) or isinstance(tau, bool) or not 0 < tau <= 1:
        raise ValueError(f"{rule}: tau must be a number in (0, 1], got {tau!r}")
    _common.check_positive(rule, "num_seeds", num_seeds, integer=True)
    _common.check_positive(rule, "num_samples", num_samples, integer=True)
    if (
        not isinstance(threshold_factor, (int, float))
        or isinstance(threshold_factor, bool)
        or not 0 <= threshold_factor < 1
    ):
        raise ValueError(f"{rule}: threshold_factor must be a number in [0, 1), got {threshold_factor!r}")
    _common.check_positive(rule, "min_cluster_size", min_cluster_size, integer=True)
    if min_cluster_size < 2:
        raise ValueError(f"{rule}: min_cluster_size must be an integer >= 2, got {min_cluster_size!r}")
    _common.check_positive(rule, "min_samples", min_samples, integer=True)

    def requirement(n: int) -> None:
        _common.require(
            min_samples <= n,
            rule,
            f"min_samples must be in 1..n, got min_samples={min_samples} with n={n} clients per round",
        )

    def cluster(distances, single=False):
        return hdbscan(distances, min_cluster_size, min_samples, single)

    def aggregate(updates, context):
        model = context.model
        if model is None:
            raise ValueError(
                f"{rule}: the context carries no model (context.model, Aggregator.needs_model): "
                "make_round(..., model_apply=model.apply) supplies it (and passes it to attacks that run the "
                "rule); a context built by hand must give it, e.g. fljax.aggregate(..., model=...)"
            )
        if not jnp.issubdtype(model.inputs.dtype, jnp.floating):
            raise ValueError(
                f"{rule}: DDifs feed the model uniform noise inputs; it needs real-valued inputs, got "
                f"{model.inputs.dtype} (token models are not supported)"
            )
        n, d = updates.shape
        finite = _common.finite_rows(updates)
        x = jnp.where(finite[:, None], updates, 0.0)
        kernel_at, bias_at = output_layer(model, d, updates.dtype)
        classes = bias_at.stop - bias_at.start
        kernel = x[:, kernel_at].reshape(n, -1, classes)
        bias = x[:, bias_at]

        neup = neups(kernel, bias)
        te = threshold_exceedings(neup, threshold_factor)
        keys = [jax.random.fold_in(jax.random.PRNGKey(0), s) for s in range(num_seeds)]
        noise = jnp.stack([jax.random.uniform(k, (num_samples, *model.inputs.shape), model.inputs.dtype) for k in keys])
        ddif = division_differences(model, context.params.astype(updates.dtype), x, noise)  # [n, S, C]
        usable = finite & jnp.all(jnp.isfinite(neup), -1) & jnp.all(jnp.isfinite(ddif), (-2, -1))

        te_usable = jnp.where(usable, te.astype(jnp.float32), jnp.nan)
        suspicious = usable & (te <= jnp.nanmedian(te_usable) / 2)

        cos = jnp.where(usable[:, None] & usable[None, :], cosine_distances(bias), jnp.inf)
        cos = jnp.where(jnp.eye(n, dtype=bool), 0.0, cos)
        # one HDBSCAN, vmapped over the seeds' DDifs, the NEUPs and the cosine distances
        spaces = jnp.stack([_euclidean(ddif[:, s], usable) for s in range(num_seeds)] + [_euclidean(neup, usable), cos])
        membership = jax.vmap(lambda dist: _membership(cluster(dist)))(spaces)
        merged = (jnp.mean(membership[:num_seeds], axis=0) + membership[num_seeds] + membership[num_seeds + 1]) / 3.0
        merged = jnp.where(usable[:, None] & usable[None, :], merged, jnp.inf)
        labels = cluster(jnp.where(jnp.eye(n, dtype=bool), 0.0, merged), single=True)
        labels = jnp.where(usable, labels, -1)

        together = (labels[:, None] == labels[None, :]) & (labels[:, None] >= 0) | jnp.eye(n, dtype=bool)
        share = jnp.sum(together * suspicious[None, :], axis=1) / jnp.sum(together, axis=1)
        accepted = usable & (share < tau)

        norms = _common.safe_norms(updates)
        bound = jnp.median(norms)
        factors = jnp.where(norms > bound, bound / jnp.where(norms > bound, norms, 1.0), 1.0)
        factors = jnp.where(accepted, factors, 0.0).astype(updates.dtype)
        out = jnp.dot(factors, jnp.where(accepted[:, None], x, 0.0), precision=_HI) / jnp.maximum(jnp.sum(accepted), 1)
        return out, _common.info(
            accepted.astype(updates.dtype),
            threshold_exceedings=te,
            suspicious=suspicious,
            clusters=labels,
            clip_factors=factors,
            norm_bound=bound,
        )

    return _common.stateless(aggregate, requirement=requirement, needs_model=True)
