"""The rules of ByzFL's and FLPoison's catalogues that fljax lacked (issue 15): MDA, SMEA, CAF,
Meamed, MoNNA, ARC, LASA and Auror, against their definitions (``shared/REFERENCES.md``, "More
rules").

Each rule is checked on small hand-computed cases, against a brute-force NumPy (float64)
implementation of its paper's definition on inputs where the rules disagree with each other, and
for properties: the order of the clients does not matter, f outliers cannot move the output far,
and the outliers are the clients the rule's weights flag (``fljax.rounds.flagged_clients``)."""

import itertools
import math

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

import fljax
from fljax import aggregators as agg
from fljax.aggregators import subsets
from fljax.aggregators.indicative_features import two_means_1d_gaps
from fljax.aggregators.layerwise import kth_largest_per_row
from fljax.experiment import ExperimentConfig, build_aggregator
from fljax.rounds import flagged_clients


def run(rule, x, ids=None, weights=None, state=None):
    """One jitted update; ``ids`` are the rows' population ids (default ``0..n-1``)."""
    x = jnp.asarray(x, jnp.float32)
    n, d = x.shape
    ctx = fljax.AggregationContext(
        weights=jnp.ones(n) if weights is None else jnp.asarray(weights, jnp.float32),
        key=jax.random.PRNGKey(0),
        client_ids=jnp.arange(n) if ids is None else jnp.asarray(ids, jnp.int32),
        params=jnp.zeros(d),
        reference=jnp.zeros(d),
    )
    state = rule.init(jnp.zeros(d)) if state is None else state
    out, new_state, info = jax.jit(rule.update)(x, state, ctx)
    return np.asarray(out), jax.tree.map(np.asarray, info), new_state


# ----------------------------------------------------------------------------- references (float64)


def subsets_of(n, f):
    return [list(s) for s in itertools.combinations(range(n), n - f)]


def mda_reference(x, f):
    """The subset of n - f rows of least diameter (ties: least summed squared pairwise distance)."""
    sq = ((x[:, None] - x[None]) ** 2).sum(-1)
    best = min(subsets_of(len(x), f), key=lambda s: (sq[np.ix_(s, s)].max(), sq[np.ix_(s, s)].sum()))
    return x[best].mean(0), best


def smea_reference(x, f):
    """The subset of n - f rows whose covariance has the least top eigenvalue (LAPACK eigvalsh)."""
    top = lambda s: np.linalg.eigvalsh(np.cov(x[s].T, bias=True).reshape(x.shape[1], x.shape[1]))[-1]
    best = min(subsets_of(len(x), f), key=top)
    return x[best].mean(0), best


def caf_reference(x, f):
    """Algorithm 1 of Allouah, Guerraoui, Stephan (ICML 2025) with an exact eigendecomposition."""
    n = len(x)
    c, best, best_lambda = np.ones(n), x.mean(0), np.inf
    while c.sum() > n - 2 * f:
        mu = c @ x / c.sum()
        cov = (c[:, None] * (x - mu)).T @ (x - mu) / c.sum()
        values, vectors = np.linalg.eigh(cov)
        if values[-1] < best_lambda:
            best_lambda, best = values[-1], mu
        tau = ((x - mu) @ vectors[:, -1]) ** 2
        c = c * (1 - tau / tau[c > 0].max())
    return best


def meamed_reference(x, f):
    """Per coordinate, the mean of the n - f values closest to the median (inputs without ties)."""
    n = len(x)
    med = np.median(x, axis=0)
    order = np.argsort(np.abs(x - med), axis=0, kind="stable")[: n - f]
    return np.take_along_axis(x, order, axis=0).mean(0)


def monna_reference(x, f, p):
    nearest = np.argsort(((x - x[p]) ** 2).sum(1), kind="stable")[: len(x) - f]
    return x[nearest].mean(0), sorted(nearest.tolist())


def arc_reference(x, f):
    n = len(x)
    k = math.floor(2 * f * (n - f) / n)
    norms = np.linalg.norm(x, axis=1)
    threshold = np.sort(norms)[::-1][k]
    return x * np.minimum(1.0, threshold / norms)[:, None]


def lasa_reference(x, sparsity, lambda_n, lambda_s, shapes):
    """The steps of Xu et al. (WACV 2025) on each client separately, with loops and sorts."""
    n = len(x)
    norms = np.linalg.norm(x, axis=1)
    x = x * np.minimum(1.0, np.median(norms) / norms)[:, None]
    sizes = [math.prod(s) for s in shapes]
    bounds = np.cumsum([0] + sizes)
    matrix = np.concatenate([np.full(size, len(s) >= 2) for size, s in zip(sizes, shapes)])
    k = int((1 - sparsity) * matrix.sum())
    sparse = x.copy()
    for i in range(n):
        magnitudes = np.abs(x[i][matrix])
        threshold = np.sort(magnitudes)[::-1][k - 1]
        sparse[i][matrix] = np.where(magnitudes >= threshold, x[i][matrix], 0.0)

    def z(v):
        return np.abs(v - np.median(v)) / np.std(v)

    out, kept = [], []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        layer = sparse[:, lo:hi]
        purity = np.sign(layer).sum(1) / np.abs(np.sign(layer)).sum(1)
        keep = (z(np.linalg.norm(layer, axis=1)) < lambda_n) & (z(purity) < lambda_s)
        keep = keep if keep.any() else np.ones(n, bool)
        out.append(layer[keep].mean(0))
        kept.append(keep)
    return np.concatenate(out), kept


def best_split_gap(values):
    """Exact 1-D 2-means by brute force over all bipartitions: the distance between the centres."""
    best = (np.inf, 0.0)
    n = len(values)
    for mask in itertools.product([False, True], repeat=n):
        mask = np.array(mask)
        if mask.all() or not mask.any():
            continue
        a, b = values[mask], values[~mask]
        cost = ((a - a.mean()) ** 2).sum() + ((b - b.mean()) ** 2).sum()
        best = min(best, (cost, abs(a.mean() - b.mean())))
    return best[1]


# ----------------------------------------------------------------------------- inputs on which they disagree

N, F, D, PIVOT = 11, 3, 5, 9
# One object per rule, shared by the tests below at the shape [N, D]: each compiles once.
RULES = {
    "mda": agg.mda(num_byzantine=F),
    "smea": agg.smea(num_byzantine=F),
    "caf": agg.caf(num_byzantine=F),
    "meamed": agg.meamed(num_byzantine=F),
    "monna": agg.monna(num_byzantine=F, pivot=PIVOT),
    "lasa": agg.lasa(sparsity=0.2),
    "auror": agg.auror(alpha=0.5),
    "arc+mean": agg.with_preaggregation(agg.mean(weighted=False), agg.arc(num_byzantine=F)),
}
REFERENCES = {
    "mda": lambda x: mda_reference(x, F)[0],
    "smea": lambda x: smea_reference(x, F)[0],
    "caf": lambda x: caf_reference(x, F),
    "meamed": lambda x: meamed_reference(x, F),
    "monna": lambda x: monna_reference(x, F, PIVOT)[0],
}
DISTINCT = list(REFERENCES)  # the rules the cohort below tells apart
REFERENCES["lasa"] = lambda x: lasa_reference(x, 0.2, 1.0, 1.0, [(1, D)])[0]  # one layer of weights


def disagreeing_cohort(seed=10):
    """A heterogeneous honest cloud (per-client scales) with three clients off in different
    directions, on which the rules pick different sets (checked below)."""
    rng = np.random.default_rng(1000 + seed)
    x = rng.normal(size=(N, D)) * rng.uniform(0.3, 2.0, size=(N, 1))
    x[0] += [4.0, 0, 0, 0, 0]
    x[1] += [0, 2.0, 2.0, 0, 0]
    x[2] += [0, 0, 0, 2.5, 0]
    return x


def test_the_rules_disagree_on_the_cohort_and_each_matches_its_definition():
    x = disagreeing_cohort()
    refs = {name: REFERENCES[name](x) for name in DISTINCT}
    for name in DISTINCT:
        np.testing.assert_allclose(run(RULES[name], x)[0], refs[name], rtol=1e-5, atol=1e-5, err_msg=name)
    for a, b in itertools.combinations(refs, 2):  # the cohort tells the rules apart
        assert np.abs(refs[a] - refs[b]).max() > 0.05, (a, b)
    assert mda_reference(x, F)[1] == [0, 2, 4, 5, 6, 7, 8, 10] and smea_reference(x, F)[1] == [0, 1, 2, 5, 6, 7, 8, 10]


@pytest.mark.parametrize("seed", range(3))
def test_the_rules_match_their_definitions_on_random_cohorts(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, D)) * rng.uniform(0.2, 3.0, size=(N, 1))
    x[:F] = x[:F] * 4 + rng.normal(size=(F, D)) * 2
    for name, reference in REFERENCES.items():
        out, info, _ = run(RULES[name], x)
        np.testing.assert_allclose(out, reference(x), rtol=1e-4, atol=1e-5, err_msg=name)
    for name, reference in (("mda", mda_reference), ("smea", smea_reference)):
        weights = run(RULES[name], x)[1]["weights"]
        assert sorted(np.flatnonzero(weights).tolist()) == reference(x, F)[1], name
        np.testing.assert_allclose(weights[weights > 0], 1 / (N - F), rtol=1e-6)
    info = run(RULES["monna"], x)[1]
    assert sorted(np.flatnonzero(info["weights"]).tolist()) == monna_reference(x, F, PIVOT)[1]
    assert bool(info["pivot_present"])


# ----------------------------------------------------------------------------- by hand


def test_mda_by_hand_and_its_tie_rule_does_not_depend_on_the_order():
    # f = 2 of 5: {c1, c2, x} and {c1, c2, y} share the least diameter, |c1 c2| = 3 (x and y are 3.3
    # apart, the outlier o is far); the first has the smaller variance (9 + 2 * 4.81 < 9 + 2 * 5.14).
    # ByzFL's "first subset found" would depend on the order of the rows.
    pts = np.array([[0.0, 0.0], [3.0, 0.0], [1.5, 1.6], [1.5, -1.7], [40.0, 40.0]])
    rule = agg.mda(num_byzantine=2)
    for perm in itertools.permutations(range(5)):
        np.testing.assert_allclose(run(rule, pts[list(perm)])[0], [1.5, 1.6 / 3], rtol=1e-6)


def test_smea_by_hand():
    # 2-D: the three points on the x axis have variance 2/3 along x and none along y (top eigenvalue
    # 2/3); a subset with (1, 2.5) has variance 25/18 > 2/3 along y alone.
    pts = np.array([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [1.0, 2.5]])
    expected, kept = smea_reference(pts, 1)
    assert kept == [0, 1, 2]
    out, info, _ = run(agg.smea(num_byzantine=1), pts)
    np.testing.assert_allclose(out, [1.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(info["weights"], [1 / 3, 1 / 3, 1 / 3, 0.0], rtol=1e-6)


def test_smea_top_eigenvalue_is_exact_for_near_degenerate_spectra():
    """The repeated squaring's Rayleigh quotient against LAPACK's float64 eigenvalue, on Gram
    matrices whose two top eigenvalues are 1e-4 apart (the worst case for a power iteration)."""
    rng = np.random.default_rng(0)
    top = jax.jit(lambda g: fljax.aggregators._common.top_eigenpair(g, subsets._SQUARINGS)[0])
    for _ in range(5):
        q, _ = np.linalg.qr(rng.normal(size=(12, 12)))
        spectrum = np.r_[1.0, 1.0 - 1e-4, rng.uniform(0, 0.9, 10)]
        g = (q * spectrum) @ q.T
        np.testing.assert_allclose(float(top(jnp.asarray(g, jnp.float32))), np.linalg.eigvalsh(g)[-1], rtol=2e-6)


def test_caf_by_hand():
    # 1-D, f = 1, x = [0, 1, 2, 10]. Pass 1: mu = 3.25, lambda = 15.6875 (remembered), tau = (x - mu)^2,
    # the largest (10) is zeroed: c = 1 - tau / 45.5625. Pass 2 (sum c = 2.6228 > 2): mu = 2.82030 /
    # 2.62278 = 1.075310 with lambda = 0.6550 < 15.6875, remembered; its tau zeroes the client at 0
    # and sum c falls to 1.137 <= 2: the output is 1.075310.
    out, info, _ = run(agg.caf(num_byzantine=1), [[0.0], [1.0], [2.0], [10.0]])
    c = 1 - (np.array([0, 1, 2, 10.0]) - 3.25) ** 2 / 45.5625
    np.testing.assert_allclose(out, [c[:3] @ [0, 1, 2] / c[:3].sum()], rtol=1e-6)
    np.testing.assert_allclose(out, [1.075310], rtol=1e-5)
    np.testing.assert_allclose(info["weights"], c * [1, 1, 1, 0] / c[:3].sum(), rtol=1e-5)
    # f = 0: the loop never runs, the plain mean
    np.testing.assert_allclose(run(agg.caf(num_byzantine=0), [[0.0], [1.0], [2.0], [10.0]])[0], [3.25])


def test_meamed_by_hand_and_ties_at_the_cut_share_the_slots():
    # median 2, distances (2, 0, 2, 0, 48): the 3 closest are both 2s and one of {0, 4}, tied at
    # distance 2; the two share the last slot: (2 + 2 + 0.5 * 0 + 0.5 * 4) / 3 = 2 in any order
    # (ByzFL's argpartition keeps one of them: 4/3 or 8/3 depending on the order).
    col = np.array([0.0, 2.0, 4.0, 2.0, 50.0])
    rule = agg.meamed(num_byzantine=2)
    for perm in itertools.permutations(range(5)):
        out, info, _ = run(rule, col[list(perm)][:, None])
        np.testing.assert_allclose(out, [2.0], rtol=1e-6)
        slots = info["weights"][np.argsort(perm)] * 3
        np.testing.assert_allclose(slots, [0.5, 1.0, 0.5, 1.0, 0.0], atol=1e-6)


def test_monna_by_hand_pivot_is_a_population_id_and_the_fallback():
    x = np.array([[0.0], [1.0], [3.0], [10.0]])
    rule = agg.monna(num_byzantine=1, pivot=9)
    # pivot at 10: its 3 nearest {10, 3, 1}; at 0: {0, 1, 3}
    np.testing.assert_allclose(run(rule, x, ids=[0, 1, 2, 9])[0], [14 / 3], rtol=1e-6)
    np.testing.assert_allclose(run(rule, x, ids=[9, 1, 2, 3])[0], [4 / 3], rtol=1e-6)
    # the rows of a round are a shuffled cohort: the pivot follows its id, not its row
    ids = np.array([42, 7, 3, 9])
    for perm in itertools.permutations(range(4)):
        out, info, _ = run(rule, x[list(perm)], ids=ids[list(perm)])
        np.testing.assert_allclose(out, [14 / 3], rtol=1e-6)
        assert bool(info["pivot_present"]) and ids[list(perm)][int(info["pivot_row"])] == 9
    # client 9 is not in the cohort: the most central row (1.0: summed squared distance to its 2
    # nearest others 1 + 4 = 5) is the pivot; {1, 0, 3} averaged
    out, info, _ = run(rule, x, ids=[0, 1, 2, 3])
    np.testing.assert_allclose(out, [4 / 3], rtol=1e-6)
    assert not bool(info["pivot_present"]) and int(info["pivot_row"]) == 1
    # a non-finite pivot update is no trusted update either
    out, info, _ = run(rule, np.array([[0.0], [1.0], [3.0], [np.nan]]), ids=[0, 1, 2, 9])
    np.testing.assert_allclose(out, [4 / 3], rtol=1e-6)
    assert not bool(info["pivot_present"])


def test_runner_says_when_monnas_pivot_is_an_attacker():
    import warnings

    from fljax.experiment import SettingNotice, warn_attacker_pivot

    for aggregator, num_malicious in (("monna", 20), ("monna(pivot=19)", 20), ("monna(pivot=3)", 4)):
        with pytest.warns(SettingNotice, match=r"monna\(pivot=\d+\) trusts client \d+, a malicious one"):
            warn_attacker_pivot(ExperimentConfig(aggregator=aggregator, num_malicious=num_malicious))
    for aggregator, num_malicious in (("monna(pivot=20)", 20), ("monna", 0), ("median", 20)):
        with warnings.catch_warnings():
            warnings.simplefilter("error", SettingNotice)
            warn_attacker_pivot(ExperimentConfig(aggregator=aggregator, num_malicious=num_malicious))


def test_arc_by_hand():
    x = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
    y, w, ids, mixing = [
        np.asarray(a)
        for a in jax.jit(agg.arc(num_byzantine=1).apply)(
            jnp.asarray(x, jnp.float32), jnp.ones(3), jnp.arange(3), jax.random.PRNGKey(0)
        )
    ]
    # k = floor(2 * 1 * 2 / 3) = 1: the longest row is scaled to the norm of the second, sqrt(77)
    np.testing.assert_allclose(y, [[1, 2, 3], [4, 5, 6], [4.41004009, 5.04004582, 5.67005155]], rtol=1e-6)
    np.testing.assert_allclose(np.diag(mixing), [1, 1, np.sqrt(77 / 194)], rtol=1e-6)
    # n = 9, f = 3: k = 2 * 3 * 6 / 9 = 4 exactly (ByzFL's float 2 * 3 / 9 * 6 = 3.9999... clips 3)
    x = np.arange(1.0, 10.0)[:, None] * np.array([[1.0, 0.0]])
    y = np.asarray(
        jax.jit(agg.arc(num_byzantine=3).apply)(
            jnp.asarray(x, jnp.float32), jnp.ones(9), jnp.arange(9), jax.random.PRNGKey(0)
        )[0]
    )
    np.testing.assert_allclose(y[:, 0], [1, 2, 3, 4, 5, 5, 5, 5, 5])
    np.testing.assert_allclose(y, arc_reference(x, 3), rtol=1e-6)


def test_arc_before_a_rule_maps_weights_to_clients_and_through_the_runner():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(10, 4))
    x[:2] *= 50
    chained = agg.with_preaggregation(agg.mean(weighted=False), agg.arc(num_byzantine=2))
    out, info, _ = run(chained, x)
    clipped = arc_reference(x, 2)
    np.testing.assert_allclose(out, clipped.mean(0), rtol=1e-5, atol=1e-6)
    scale = np.linalg.norm(clipped, axis=1) / np.linalg.norm(x, axis=1)
    np.testing.assert_allclose(info["weights"], scale / scale.sum(), rtol=1e-5)
    assert flagged_clients(info, jnp.ones(10))[:2].all()  # the two clipped 50x clients
    base = dict(
        dataset="digits",
        model="logreg",
        num_clients=12,
        clients_per_round=12,
        num_malicious=2,
        attack="none",
        rounds=1,
        num_byzantine=2,
    )
    spec = build_aggregator(ExperimentConfig(**base, aggregator="arc(num_byzantine=2)+krum(num_byzantine=2)"))
    out, info, _ = run(spec, x[np.arange(12) % 10])
    krum_row = int(np.argmax(info["inner_weights"]))
    np.testing.assert_allclose(out, arc_reference(x[np.arange(12) % 10], 2)[krum_row], rtol=1e-5)
    with pytest.warns(FutureWarning, match="pre_aggregation"):  # the deprecated flag builds the same chain
        flat = build_aggregator(ExperimentConfig(**base, aggregator="krum", pre_aggregation="arc"))
    with pytest.raises(ValueError, match=r"krum: needs n > 2f \+ 2.*after pre-aggregation arc\(num_byzantine=2\)"):
        flat.requirement(6)


def test_lasa_matches_its_steps_per_layer():
    rng = np.random.default_rng(5)
    shapes = [(3, 4), (4,), (4, 2), (2,)]
    n, d = 9, 12 + 4 + 8 + 2
    x = rng.normal(size=(n, d)) * rng.uniform(0.5, 1.5, size=(n, 1))
    x[0] *= 8  # clipped to the median norm
    x[1, :12] = -np.abs(x[1, :12]) * 3  # all negative in the first layer: its sign purity stands out
    rule = agg.lasa(sparsity=0.25, lambda_n=1.0, lambda_s=1.0, layer_shapes=shapes)
    out, info, _ = run(rule, x)
    expected, kept = lasa_reference(x, 0.25, 1.0, 1.0, shapes)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    assert not kept[0][1]  # client 1's first layer (sign purity -1) is rejected
    sizes = np.array([12, 4, 8, 2])
    weights = sum(k / k.sum() * s / d for k, s in zip(kept, sizes))
    np.testing.assert_allclose(info["weights"], weights, rtol=1e-5)
    with pytest.raises(ValueError, match=r"lasa: layer_shapes add up to 25 parameters, the updates have d=26"):
        run(agg.lasa(layer_shapes=shapes[:-1] + [(1,)]), x)  # refused while tracing, before compiling


def test_lasa_reads_the_layers_from_the_rounds_model():
    """Without layer_shapes, LASA reads the model's parameter arrays from ``context.model`` (the
    round supplies it: ``needs_model``), in the flat vector's order: the same as giving them."""
    model = fljax.models.get("mlp", (3,), 2)
    params = model.init(jax.random.PRNGKey(0))
    shapes = [p.shape for p in jax.tree.leaves(params)]
    d = sum(math.prod(s) for s in shapes)
    x = np.random.default_rng(8).normal(size=(7, d)).astype(np.float32)
    x[0] *= -4
    rule = agg.lasa(sparsity=0.3)
    assert rule.needs_model and not agg.lasa(layer_shapes=shapes).needs_model
    access = fljax.types.ModelAccess(
        unravel=jax.flatten_util.ravel_pytree(params)[1],
        apply=model.apply,
        inputs=jax.ShapeDtypeStruct((3,), jnp.float32),
    )
    out = fljax.aggregate(rule, jnp.asarray(x), model=access)
    expected, _ = lasa_reference(x.astype(np.float64), 0.3, 1.0, 1.0, shapes)
    np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-5, atol=1e-6)


def test_kth_largest_per_row_is_exact():
    rng = np.random.default_rng(0)
    a = np.abs(rng.normal(size=(4, 50))).astype(np.float32) * np.array([[1e-30], [1.0], [1e20], [0.0]], np.float32)
    a[1, :10] = 0.0
    for k in (1, 7, 40, 50):
        expected = [np.sort(row)[::-1][k - 1] for row in a]
        np.testing.assert_array_equal(np.asarray(jax.jit(kth_largest_per_row, static_argnums=1)(a, k)), expected)


def test_auror_indicative_coordinates_and_minority_cluster():
    # coordinate 0 splits the clients into {0, 0.1, 0.05, 0.08} and {5, 5.1} (centres 5 apart);
    # coordinate 1 is noise of 1e-3
    x = np.array([[0.0, 0.001], [0.1, -0.001], [0.05, 0.0], [0.08, 0.0005], [5.0, 0.0], [5.1, 0.001]])
    gaps = np.asarray(jax.jit(two_means_1d_gaps)(jnp.asarray(x, jnp.float32), jnp.ones(6, bool)))
    np.testing.assert_allclose(gaps, [best_split_gap(x[:, 0]), best_split_gap(x[:, 1])], rtol=1e-5)
    rule = agg.auror(alpha=0.01, detection_rounds=1)
    out, info, state = run(rule, x)
    np.testing.assert_array_equal(state.indicative, [True, False])
    np.testing.assert_allclose(out, x[:4].mean(0), rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(info["weights"] > 0, [True] * 4 + [False] * 2)
    # after the detection rounds the coordinates are frozen: coordinate 1 now splits, and is ignored
    later = x.copy()
    later[:, 1] = [0, 0, 0, 0, 0, 9.0]
    later[:, 0] = [0, 0.1, 5, 5.1, 0.05, 0.02]
    out, info, state2 = run(rule, later, state=state)
    np.testing.assert_array_equal(state2.indicative, [True, False])
    assert int(state2.round) == 2
    np.testing.assert_array_equal(info["weights"] > 0, [True, True, False, False, True, True])


@pytest.mark.parametrize("seed", range(3))
def test_auror_one_dimensional_two_means_is_the_global_optimum(seed):
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal(size=(5, 6)), rng.normal(size=(4, 6)) + rng.uniform(-4, 4, 6)])
    valid = np.ones(9, bool)
    valid[3] = False  # a non-finite client takes no part
    gaps = np.asarray(jax.jit(two_means_1d_gaps)(jnp.asarray(x, jnp.float32), jnp.asarray(valid)))
    np.testing.assert_allclose(gaps, [best_split_gap(x[valid, j]) for j in range(6)], rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------- properties


def honest_and_outliers(seed, n=11, f=3, d=5, scale=1e3, colluding=False):
    """``n`` standard normal clients, the first f of them replaced by outliers at ``scale``: each
    its own random vector, or (``colluding``) one shared vector plus small noise."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    x[:f] = scale * (rng.normal(size=d) + 0.01 * rng.normal(size=(f, d)) if colluding else rng.normal(size=(f, d)))
    return x


@pytest.mark.parametrize("name", sorted(RULES))
def test_the_order_of_the_clients_does_not_matter(name):
    x = honest_and_outliers(1, scale=5.0)
    ids = np.arange(11)
    out, info, _ = run(RULES[name], x, ids=ids)
    perm = np.random.default_rng(2).permutation(11)
    out_p, info_p, _ = run(RULES[name], x[perm], ids=ids[perm])
    np.testing.assert_allclose(out_p, out, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(info_p["weights"], info["weights"][perm], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", sorted(RULES))
def test_f_outliers_cannot_move_the_output_far(name):
    """Three clients of eleven at 1e3 scale: the output stays within the honest clients' range
    (ARC + mean: the outliers are clipped to an honest norm, so they move it by a bounded amount)."""
    # Auror's 2-means assumes the attackers form one group: scattered far outliers would make it
    # isolate the farthest one alone (a two-cluster rule by design)
    x = honest_and_outliers(4, colluding=name == "auror")
    honest = x[3:]
    out, info, _ = run(RULES[name], x)
    radius = np.linalg.norm(honest - honest.mean(0), axis=1).max()
    bound = radius + (np.linalg.norm(honest, axis=1).max() if name in ("arc+mean", "lasa") else 0.0)
    assert np.linalg.norm(out - honest.mean(0)) <= bound, (out, honest.mean(0), bound)
    if name not in ("lasa", "arc+mean"):  # LASA clips the outliers but may keep them; ARC does not select
        flagged = np.asarray(flagged_clients(info, jnp.ones(11)))
        assert flagged[:3].all() and flagged[3:].sum() <= 1, flagged


@pytest.mark.slow
@pytest.mark.parametrize("partition", ["iid", "dirichlet:0.3"])
def test_detection_of_x10_sign_flippers_on_real_updates(partition):
    """tests/test_detection.py's round: 30 digits clients, 6 of them send x10 sign flips, f = 6.
    Measured: CAF, Meamed and MoNNA (pivot honest) flag all six with FPR <= 0.08 under both
    partitions; LASA flags all six but, with the paper's z-score bounds of 1, also ~40% of the
    honest clients in some layer; Auror (alpha = 0.002) finds all six under iid, half under
    Dirichlet(0.3)."""
    from tests.test_detection import round_updates, verdict

    updates, counts = round_updates(partition)
    malicious = np.arange(30) < 6
    for rule in (agg.caf(num_byzantine=6), agg.meamed(num_byzantine=6), agg.monna(num_byzantine=6, pivot=10)):
        flagged = verdict(rule, updates, counts)
        assert flagged[malicious].all() and flagged[~malicious].mean() <= 0.1, flagged


@pytest.mark.parametrize("name", ["mda", "smea", "caf", "meamed", "monna", "lasa", "auror"])
def test_non_finite_rows_are_excluded(name):
    x = honest_and_outliers(6, scale=1.0)
    x[0] = np.nan
    x[1, 2] = np.inf
    x[2] = 3.4e38
    out, info, _ = run(RULES[name], x)
    assert np.isfinite(out).all()
    honest = x[3:]
    assert np.linalg.norm(out - honest.mean(0)) <= np.linalg.norm(honest - honest.mean(0), axis=1).max() + 1e-6
    # a coordinate-wise rule drops the non-finite and huge entries, keeping row 1's finite ones
    excluded = [0, 2] if name == "meamed" else [0, 1]
    assert np.all(info["weights"][excluded] == 0.0), info["weights"]


# ----------------------------------------------------------------------------- build-time refusals


def test_subset_search_refuses_too_many_subsets_naming_n_f_and_the_count():
    with pytest.raises(ValueError, match=r"mda: .*C\(40, 8\) = 76,904,685 .*max_subsets=20,000"):
        agg.mda(num_byzantine=8).requirement(40)
    with pytest.raises(ValueError, match=r"smea: .*C\(100, 3\) = 161,700"):
        agg.smea(num_byzantine=3).requirement(100)
    agg.smea(num_byzantine=3, max_subsets=161_700).requirement(100)  # raised by the user: still exact
    with pytest.raises(ValueError, match="needs n > 2f"):
        agg.mda(num_byzantine=3).requirement(6)


def test_combinatorial_unranking_enumerates_every_subset_once():
    for n, f in ((7, 3), (9, 2), (5, 0), (6, 1)):
        total = math.comb(n, f)
        removed = np.asarray(
            jax.jit(subsets.removed_sets, static_argnums=(1, 2))(jnp.arange(total, dtype=jnp.int32), n, f)
        )
        assert len({tuple(sorted(r)) for r in removed}) == total
        assert all(len(set(r)) == f and all(0 <= c < n for c in r) for r in removed)


def test_runner_says_when_crfl_clips_the_model_to_under_half_its_initial_norm():
    import warnings

    from fljax.experiment import SettingNotice, warn_clip_below_model_norm

    params = {"w": jnp.full((4, 25), 2.0)}  # norm 20
    for aggregator, first in (
        ("crfl", "2.1"),
        ("crfl(clip_start=9.0, clip_norm=30.0)", "9.1"),
        ("crfl(clip_norm=5.0, clip_start=9.0)", "5"),
    ):
        with pytest.warns(
            SettingNotice, match=rf"crfl clips the global model to norm {first} in round 1 .* norm \(about 20\.0\)"
        ):
            warn_clip_below_model_norm(ExperimentConfig(aggregator=aggregator), lambda: params)
    for aggregator in ("crfl(clip_start=20.0, clip_norm=40.0)", "crfl(clip_start=10.0, clip_norm=40.0)", "median"):
        with warnings.catch_warnings():
            warnings.simplefilter("error", SettingNotice)
            warn_clip_below_model_norm(ExperimentConfig(aggregator=aggregator), lambda: params)
