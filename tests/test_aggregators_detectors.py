"""FLDetector, DeepSight, CRFL and their pieces: the L-BFGS product against the BFGS recursion,
the gap statistic, HDBSCAN against scikit-learn, NEUPs / threshold exceedings / DDifs by hand,
CRFL's clipping, noise and certified radius against the formulas, detection through
``info["weights"]``, and the plumbing (the model in the context, the rule's test metrics)."""

import functools
import math

import flax.linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import fljax
from fljax import aggregators as A
from fljax.aggregators._hdbscan import hdbscan
from fljax.aggregators.deepsight import division_differences, neups, output_layer, threshold_exceedings
from fljax.aggregators.fldetector import gap_statistic_two_clusters, lbfgs_hvp
from fljax.metrics import crfl_contraction, crfl_radius, smoothed_metrics, with_rule_metrics
from fljax.rounds import detection_rates, flagged_clients
from fljax.types import AggregationContext, ModelAccess
from tests.helpers import make_data, squared_loss

ALLOWED = ("must", "valid", "needs", "requires", "give ")


def context(n, d, *, weights=None, key=0, ids=None, params=None, model=None):
    return AggregationContext(
        weights=jnp.ones(n) if weights is None else jnp.asarray(weights, jnp.float32),
        key=jax.random.PRNGKey(key),
        client_ids=jnp.arange(n) if ids is None else jnp.asarray(ids),
        params=jnp.zeros(d) if params is None else jnp.asarray(params, jnp.float32),
        reference=jnp.zeros(d),
        model=model,
    )


# ------------------------------------------------------------------------------ L-BFGS, gap statistic


def test_lbfgs_product_equals_the_bfgs_recursion_on_an_explicit_matrix():
    """B v from the compact form equals v times the matrix built by the BFGS recursion from
    B_0 = sigma I (sigma of the newest pair), for pairs stored in a ring in any slot order, with
    an unused slot holding garbage; and B satisfies the newest secant equation B s = y."""
    rng = np.random.default_rng(0)
    d, pairs = 6, 4
    a = rng.normal(size=(d, d))
    a = a @ a.T + d * np.eye(d)
    s = rng.normal(size=(pairs, d))
    y = s @ a.T + 0.1 * rng.normal(size=(pairs, d))  # not exactly a quadratic: the recursion still defines B
    b = (y[-1] @ s[-1]) / (s[-1] @ s[-1]) * np.eye(d)
    for sk, yk in zip(s, y):
        bs = b @ sk
        b = b - np.outer(bs, bs) / (sk @ bs) + np.outer(yk, yk) / (yk @ sk)
    slots = np.array([2, 0, 3, 1])  # slot i holds the pair of time slots[i]
    ring_s = np.concatenate([s[slots], 50 * rng.normal(size=(1, d))])
    ring_y = np.concatenate([y[slots], rng.normal(size=(1, d))])
    valid = jnp.array([True] * pairs + [False])
    order = jnp.asarray(np.append(slots, 7))
    hvp = jax.jit(lbfgs_hvp)
    for v in (rng.normal(size=d), s[-1]):
        out = hvp(
            jnp.asarray(ring_s, jnp.float32),
            jnp.asarray(ring_y, jnp.float32),
            valid,
            order,
            jnp.asarray(v, jnp.float32),
        )
        np.testing.assert_allclose(np.asarray(out), b @ v, rtol=2e-4, atol=2e-4 * np.abs(b @ v).max())
    np.testing.assert_allclose(b @ s[-1], y[-1], rtol=1e-8)  # (the reference itself: the secant equation)
    none = hvp(
        jnp.asarray(ring_s, jnp.float32), jnp.asarray(ring_y, jnp.float32), jnp.zeros(5, bool), order, jnp.ones(d)
    )
    np.testing.assert_array_equal(np.asarray(none), np.zeros(d))


def test_gap_statistic_answers_one_cluster_where_there_is_one():
    """Two clear groups: >= 2 clusters, the upper one the 2-means cluster. One group (a
    Gaussian blob, all equal, too few values): 1 cluster. FLPoison's
    version answers k + 1 where the rule says k, so it never answers 1."""
    key = jax.random.PRNGKey(0)
    gap = jax.jit(gap_statistic_two_clusters, static_argnums=3)
    two, upper = gap(jnp.array([1.0, 1.1, 0.9, 1.05, 5.0, 5.2, 0.95, 4.9]), jnp.ones(8, bool), key, 20)
    assert bool(two)
    np.testing.assert_array_equal(upper, [0, 0, 0, 0, 1, 1, 0, 1])
    rng = np.random.default_rng(1)
    # (uniform values, the references' own law, come out as >= 2 clusters in about 1 of 5 draws:
    # the rule's one-standard-error margin)
    for values in (1.0 + 0.1 * rng.normal(size=8), 1.0 + 0.3 * rng.exponential(size=8) ** 0.2, np.full(8, 3.0)):
        two, _ = gap(jnp.asarray(values, jnp.float32), jnp.ones(len(values), bool), key, 20)
        assert not bool(two), values
    two, _ = gap(jnp.array([1.0, 9.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]), jnp.arange(8) < 2, key, 20)
    assert not bool(two)  # two valid values: no verdict
    # masked entries do not count: the two groups of the valid ones decide
    two, upper = gap(
        jnp.array([1.0, 1.1, 0.9, 7.0, 5.0, 5.2, 99.0, 4.9]), jnp.array([1, 1, 1, 0, 1, 1, 0, 1], bool), key, 20
    )
    assert bool(two)
    np.testing.assert_array_equal(upper, [0, 0, 0, 0, 1, 1, 0, 1])


# ------------------------------------------------------------------------------ FLDetector


D_Q, N_Q, BAD_Q, POPULATION = 5, 10, 3, 14


def quadratic_problem():
    """Clients of a quadratic: honest pseudo-gradient ``A (w - c_i)``; updates ``-0.1 g``."""
    rng = np.random.default_rng(3)
    q = rng.normal(size=(D_Q, D_Q))
    a = q @ q.T / D_Q + 0.5 * np.eye(D_Q)
    centres = rng.normal(size=D_Q) + 0.1 * rng.normal(size=(POPULATION, D_Q))
    return a, centres, rng


@functools.lru_cache(maxsize=None)
def fldetector_step():
    """One rule over a population of 14 (cohorts of 10), compiled once for every test."""
    rule = A.fldetector(num_clients=POPULATION, window_size=3)
    rule.requirement(N_Q)
    return rule, jax.jit(rule.update)


def run_quadratic(rounds, attack=True, cohorts=None):
    """Federated rounds on the quadratic (server SGD with rate 1); the first BAD_Q clients send a
    fresh random update each round when ``attack``. Returns per round (ids, weights, flagged,
    aggregate, params) and the final state."""
    a, centres, rng = quadratic_problem()
    rule, step = fldetector_step()
    w = np.full(D_Q, 2.0, np.float32)
    state = rule.init(jnp.asarray(w))
    history = []
    for t in range(rounds):
        ids = np.arange(N_Q) if cohorts is None else cohorts[t]
        updates = -0.1 * (w[None] - centres[ids]) @ a.T + 0.001 * rng.normal(size=(len(ids), D_Q))
        if attack:
            updates = np.where((ids < BAD_Q)[:, None], 0.3 * rng.normal(size=(len(ids), D_Q)), updates)
        ctx = context(len(ids), D_Q, ids=ids, params=w, key=t)
        out, state, info = step(jnp.asarray(updates, jnp.float32), state, ctx)
        history.append(
            (
                ids,
                np.asarray(info["weights"]),
                np.asarray(info["flagged"]),
                np.asarray(out),
                w.copy(),
                np.asarray(info["suspicion"]),
            )
        )
        w = w + np.asarray(out)
    return history, state


def test_fldetector_flags_inconsistent_clients_once_its_window_is_scored_and_removes_them():
    """Window N = 3: scoring can start in round 2 (a pair and a previous update are needed; a
    pair enters only with positive curvature), so the window is full in round 4 at the earliest;
    in the round it is full the random senders are flagged and removed, and no one before. From
    then on they get weight 0 and the honest clients keep theirs (TPR 1, FPR 0 through
    info["weights"])."""
    history, state = run_quadratic(8)
    malicious = np.arange(N_Q) < BAD_Q
    first = next(t for t, h in enumerate(history) if h[2].any())
    assert 4 <= first <= 6, first
    for t, (_, weights, flagged, *_) in enumerate(history):
        tpr, fpr = detection_rates(
            flagged_clients({"weights": jnp.asarray(weights)}, jnp.ones(N_Q), True), jnp.asarray(malicious)
        )
        if t < first:
            assert not flagged.any() and float(tpr) == 0.0 and np.all(weights > 0), t
        else:
            np.testing.assert_array_equal(flagged, malicious if t == first else np.zeros(N_Q, bool))
            assert float(tpr) == 1.0 and float(fpr) == 0.0, t
            np.testing.assert_allclose(weights, np.where(malicious, 0.0, 1.0 / (N_Q - BAD_Q)), rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(state.removed), np.arange(POPULATION) < BAD_Q)
    assert int(state.scored_rounds) == len(history) - 2 - (first - 4)  # every round from the first pair on


def test_fldetector_pairs_each_model_step_with_its_own_gradient_change_and_averages_the_rest():
    """Every stored pair is (w_t - w_{t-1}, g_t - g_{t-1}) of the SAME round t, g_t the round's
    aggregate pseudo-gradient (FLPoison stores the aggregate itself as s, one round ahead of y);
    the aggregate is the count-weighted mean of the kept updates."""
    history, state = run_quadratic(6, attack=False)
    w = [h[4] for h in history]
    g = [-h[3] for h in history]
    rounds = np.asarray(state.pair_round)
    assert sorted(rounds.tolist()) == [3, 4, 5]  # the last N = 3 rounds (round 0 has no predecessor)
    for slot, t in enumerate(rounds):
        np.testing.assert_allclose(np.asarray(state.weight_diffs[slot]), w[t] - w[t - 1], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(np.asarray(state.grad_diffs[slot]), g[t] - g[t - 1], rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(history[0][1], np.full(N_Q, 1.0 / N_Q))


def test_fldetector_flags_no_one_without_an_attack():
    """Honest clients only, twelve rounds: the gap statistic keeps answering one cluster (a
    version that always answers >= 2, as FLPoison's, would flag about half of them each round)."""
    history, state = run_quadratic(12, attack=False)
    assert not any(h[2].any() for h in history)
    assert not np.asarray(state.removed).any()


def test_fldetector_scores_a_client_only_after_a_round_it_took_part_in():
    """Partial participation: per-client state over the population of 14, cohorts of 10; a client
    has a suspicion only once it was in two consecutive rounds' cohorts."""
    cohorts = [
        np.arange(10),
        np.array([0, 1, 2, 3, 4, 5, 10, 11, 12, 13]),
        np.array([0, 1, 6, 7, 8, 9, 10, 11, 12, 13]),
        np.array([0, 2, 3, 4, 5, 6, 7, 8, 9, 13]),
    ]
    history, _ = run_quadratic(4, attack=False, cohorts=cohorts)
    seen = [~np.isnan(h[5]) for h in history]
    assert not seen[0].any() and not seen[1].any()  # round 1 has no pair yet
    np.testing.assert_array_equal(seen[2], [True, True, False, False, False, False, True, True, True, True])
    np.testing.assert_array_equal(seen[3], [True, False, False, False, False, True, True, True, True, True])
    with pytest.raises(ValueError, match="num_clients=14"):
        fldetector_step()[0].requirement(15)


# ------------------------------------------------------------------------------ HDBSCAN


HDBSCAN_16 = jax.jit(jax.vmap(hdbscan))  # n = 16 points, the parameters traced: one program


def same_partition(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return np.array_equal(a == -1, b == -1) and np.array_equal(a[:, None] == a[None, :], b[:, None] == b[None, :])


def test_hdbscan_equals_scikit_learn():
    """Random blobs, n = 16: with min_samples = 1 (no ties in the mutual reachability) the labels
    equal scikit-learn's for every min_cluster_size, with and without allow_single_cluster; with
    min_samples = 3 the single-linkage heights are scikit-learn's and its own condensing,
    stabilities and excess-of-mass selection of OUR tree give our labels (ties in the mutual
    reachability may order equal merges differently: scikit-learn's edge sort is not stable)."""
    cluster = pytest.importorskip("sklearn.cluster")
    rng = np.random.default_rng(0)
    cases = []
    for trial in range(24):
        x = rng.normal(size=(16, 2)) + (rng.random((16, 1)) < 0.4) * rng.normal(scale=4, size=(1, 2))
        dist = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
        cases.append((dist, 2 + trial % 4, 1 if trial < 16 else 3, trial % 2 == 1))
    labels = HDBSCAN_16(
        jnp.asarray(np.stack([c[0] for c in cases]), jnp.float32),
        jnp.asarray([c[1] for c in cases]),
        jnp.asarray([c[2] for c in cases]),
        jnp.asarray([c[3] for c in cases]),
    )
    tree_to_labels = None
    try:
        from sklearn.cluster._hdbscan import hdbscan as private
        from sklearn.cluster._hdbscan._tree import tree_to_labels
    except ImportError:  # scikit-learn's internals moved: compare the tie-free cases only
        pass
    found = set()
    for (dist, mcs, ms, single), ours in zip(cases, np.asarray(labels)):
        if ms == 1:
            ref = cluster.HDBSCAN(
                min_cluster_size=mcs, min_samples=1, metric="precomputed", allow_single_cluster=single, copy=True
            ).fit_predict(dist)
            assert same_partition(ref, ours), (mcs, single, ref, ours)
            found.add(len(set(ref.tolist()) - {-1}))
        elif tree_to_labels is not None:
            slt = private._hdbscan_brute(dist.copy(), min_samples=ms, alpha=1.0, metric="precomputed")
            ref = cluster.HDBSCAN(
                min_cluster_size=mcs, min_samples=ms, metric="precomputed", allow_single_cluster=single, copy=True
            ).fit_predict(dist)
            assert same_partition(tree_to_labels(slt, mcs, "eom", single)[0], ref)
    assert {1, 2} <= found and max(found) >= 3  # the cases cover one and several clusters (all noise: by hand)


def test_hdbscan_by_hand():
    """Two tight groups of 7 on a line, far apart, and two far points: two clusters and noise
    (min_cluster_size 3); all noise with min_cluster_size 8 (no split leaves 8 points on both
    sides, and the root is no candidate); with allow_single_cluster the root is the cluster, and
    the points that leave it at its largest lambda keep its label (scikit-learn's rule): both
    groups fall out together at their 9.4 gap, the far points earlier (scikit-learn gives the
    same three labellings)."""
    p = np.concatenate([0.1 * np.arange(7), 10 + 0.05 * np.arange(7), [50.0, 80.0]]).astype(np.float32)
    dist = jnp.asarray(np.abs(p[:, None] - p[None, :]))
    labels = np.asarray(
        HDBSCAN_16(jnp.stack([dist] * 3), jnp.array([3, 8, 8]), jnp.array([1, 1, 1]), jnp.array([False, False, True]))
    )
    two, none, single = labels
    assert len(set(two[:7])) == 1 and len(set(two[7:14])) == 1 and two[0] != two[7] and min(two[0], two[7]) >= 0
    assert two[14] == two[15] == -1
    assert np.all(none == -1)
    np.testing.assert_array_equal(single >= 0, np.arange(16) < 14)
    assert len(set(single[:14])) == 1


# ------------------------------------------------------------------------------ DeepSight


def test_neups_and_threshold_exceedings_by_hand():
    """Output layer of 2 inputs and 3 classes: energies e_k = |db_k| + sum_j |dW_jk|, NEUP =
    e^2 / sum e^2, TE = #{NEUP_k > max(0.01, 1/3) max NEUP}."""
    kernel = np.array([[[1.0, -2.0, 0.0], [1.0, 0.5, 0.1]]], np.float32)  # [1, 2, 3]
    bias = np.array([[-1.0, 0.5, 0.1]], np.float32)
    energy = np.array([3.0, 3.0, 0.2])
    expected = energy**2 / np.sum(energy**2)
    out = np.asarray(neups(jnp.asarray(kernel), jnp.asarray(bias)))
    np.testing.assert_allclose(out[0], expected, rtol=1e-6)
    assert int(threshold_exceedings(jnp.asarray(out))[0]) == 2  # 0.002 < 1/3 * 0.4993
    huge = np.asarray(neups(jnp.asarray(kernel * 1e30), jnp.asarray(bias * 1e30)))  # no overflow: scale-free
    np.testing.assert_allclose(huge[0], expected, rtol=1e-6)
    cases = jnp.asarray([[0.25, 0.25, 0.25, 0.25], [0.97, 0.01, 0.01, 0.01], [0.8, 0.2, 0.0, 0.0]])
    np.testing.assert_array_equal(np.asarray(threshold_exceedings(cases)), [4, 1, 1])  # 0.2 is not above 0.25 * 0.8


def _logreg(features, classes):
    model = fljax.models.get("logreg", (features,), classes)
    flat, unravel = ravel_pytree(model.init(jax.random.PRNGKey(0)))
    return model, flat, ModelAccess(unravel, model.apply, jax.ShapeDtypeStruct((features,), jnp.float32))


class _Net(flax.linen.Module):
    """A hidden layer of 4 units (a bias like the output's) named to sort AFTER the output layer."""

    @flax.linen.compact
    def __call__(self, x):
        hidden = flax.linen.relu(flax.linen.Dense(4, name="z_hidden")(x))
        return flax.linen.Dense(4, name="a_output")(hidden)


def test_output_layer_is_found_on_the_model_not_from_the_flat_order():
    """The flat vector holds the layers in key order: the output layer ``a_output`` first, the
    hidden layer (whose bias has the output's shape too) last. The probe finds the layer the
    logits come from, not the last one, nor one of the right shape."""
    net = _Net()
    params = jax.jit(net.init)(jax.random.PRNGKey(0), jnp.zeros((1, 3)))["params"]
    flat, unravel = ravel_pytree(params)
    access = ModelAccess(unravel, lambda p, x: net.apply({"params": p}, x), jax.ShapeDtypeStruct((3,), jnp.float32))
    kernel_at, bias_at = output_layer(access, flat.shape[0])
    np.testing.assert_array_equal(np.asarray(flat[kernel_at]), np.asarray(params["a_output"]["kernel"]).ravel())
    np.testing.assert_array_equal(np.asarray(flat[bias_at]), np.asarray(params["a_output"]["bias"]))
    assert bias_at.start == 0 and kernel_at.stop < flat.shape[0]


def test_division_differences_by_hand():
    """DDif_ik = mean over the noise inputs of softmax(W_i x)_k / softmax(G x)_k, per noise set."""
    model, flat, access = _logreg(3, 4)
    rng = np.random.default_rng(2)
    updates = rng.normal(size=(2, flat.shape[0])).astype(np.float32)
    noise = rng.uniform(size=(2, 5, 3)).astype(np.float32)
    out = np.asarray(
        jax.jit(division_differences, static_argnums=0)(access, flat, jnp.asarray(updates), jnp.asarray(noise))
    )

    def softmax(f, x):  # the logistic regression by hand: x W + b
        layer = access.unravel(jnp.asarray(f))["Dense_0"]
        z = x.astype(np.float64) @ np.asarray(layer["kernel"], np.float64) + np.asarray(layer["bias"], np.float64)
        e = np.exp(z - z.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    for i in range(2):
        for s in range(2):
            ratio = softmax(flat + updates[i], noise[s]) / softmax(flat, noise[s])
            np.testing.assert_allclose(out[i, s], ratio.mean(0), rtol=1e-4)


@functools.lru_cache(maxsize=None)
def deepsight_case():
    """12 clients of a logistic regression with 4 inputs and 5 classes; clients 0-3 push class 0
    only (one threshold exceeding), alike; the others spread over every class."""
    model, flat, access = _logreg(4, 5)
    rng = np.random.default_rng(4)
    n, d = 12, flat.shape[0]
    updates = 0.3 * rng.normal(size=(n, d))
    kernel = np.zeros((4, 5))
    kernel[:, 0] = 1.0
    backdoor = np.concatenate([np.array([1.0, 0, 0, 0, 0]), kernel.ravel()])  # bias first, then the kernel
    updates[:4] = backdoor + 0.01 * rng.normal(size=(4, d))
    rule = A.deepsight(min_cluster_size=3, min_samples=2, num_samples=64)
    rule.requirement(n)
    ctx = context(n, d, params=flat, model=access)
    out, _, info = jax.jit(rule.update)(jnp.asarray(updates, jnp.float32), rule.init(flat), ctx)
    return updates, np.asarray(out), jax.tree.map(np.asarray, info)


def test_deepsight_rejects_the_cluster_of_single_label_updates_and_clips_the_rest():
    updates, out, info = deepsight_case()
    malicious = np.arange(12) < 4
    np.testing.assert_array_equal(info["threshold_exceedings"][:4], 1)
    np.testing.assert_array_equal(info["suspicious"], malicious)
    assert len(set(info["clusters"][:4].tolist())) == 1 and info["clusters"][0] >= 0  # the four cluster together
    np.testing.assert_allclose(info["weights"], np.where(malicious, 0.0, 1.0 / 8))
    tpr, fpr = detection_rates(
        flagged_clients({"weights": jnp.asarray(info["weights"])}, jnp.ones(12)), jnp.asarray(malicious)
    )
    assert (float(tpr), float(fpr)) == (1.0, 0.0)
    norms = np.linalg.norm(updates, axis=1)
    bound = np.median(norms)
    clipped = updates * np.minimum(1.0, bound / norms)[:, None]
    np.testing.assert_allclose(out, clipped[~malicious].mean(0), rtol=1e-4, atol=1e-6)


def test_deepsight_needs_the_model_from_the_round():
    rule = A.deepsight()
    assert rule.needs_model and A.with_preaggregation(rule, A.bucketing(2)).needs_model
    with pytest.raises(ValueError, match="model_apply"):
        rule.update(jnp.zeros((6, 6)), rule.init(jnp.zeros(6)), context(6, 6))
    with pytest.raises(ValueError, match="model_apply"):
        fljax.make_round(fljax.fedsgd(squared_loss), rule, clients_per_round=4)


# ------------------------------------------------------------------------------ CRFL


def test_crfl_clips_and_perturbs_the_global_model():
    """w' = w + mean(x); the returned update lands on w' min(1, rho_t / ||w'||) + sigma N(0, I)
    with rho_t = min(2 + 0.1 t, 15) (t = 1, 2, ...), the noise from the context's key; a model
    inside the ball is only perturbed."""
    rule = A.crfl(noise_std=0.5)
    x = np.array([[1.0, 1.0, 0.0], [3.0, -1.0, 2.0], [np.nan, 0.0, 0.0]], np.float32)
    counts = np.array([1.0, 3.0, 5.0])
    state = rule.init(jnp.zeros(3))
    step = jax.jit(rule.update)
    for t, w in (
        (1, np.array([3.0, -4.0, 1.0], np.float32)),
        (2, np.array([3.0, -4.0, 1.0], np.float32)),
        (3, np.array([-1.0, 0.5, -0.5], np.float32)),
    ):
        out, state, info = step(jnp.asarray(x), state, context(3, 3, weights=counts, params=w, key=t))
        target = w + (1.0 * x[0] + 3.0 * x[1]) / 4.0  # the NaN row gets weight 0
        rho = 2.0 + 0.1 * t
        noise = 0.5 * np.asarray(jax.random.normal(jax.random.PRNGKey(t), (3,)))
        expected = target * min(1.0, rho / np.linalg.norm(target)) + noise
        assert (np.linalg.norm(target) < rho) == (t == 3)
        np.testing.assert_allclose(w + np.asarray(out), expected, rtol=1e-5)
        np.testing.assert_allclose(info["weights"], [0.25, 0.75, 0.0])
        assert float(info["clip_bound"]) == pytest.approx(rho) and int(state.round) == t
        # it excludes no one: detection flags only the NaN row, whatever the example counts
        flagged = flagged_clients({"weights": jnp.asarray(info["weights"])}, jnp.asarray(counts), rule.count_weighted)
        np.testing.assert_array_equal(np.asarray(flagged), [False, False, True])


def test_crfl_certified_radius_equals_the_formula():
    """RAD = sqrt(-ln(1 - (sqrt(pA) - sqrt(pB))^2) sigma^2 / (2 prod_t (2 Phi(rho_t / sigma_t) - 1))),
    0 where pA <= pB."""
    from scipy.stats import norm

    sigma, rho = 0.01, 0.02
    contraction = (2 * norm.cdf(rho / sigma) - 1) ** 2 * (2 * norm.cdf(rho / 0.02) - 1)
    got = float(crfl_contraction([rho, rho], sigma, rho, 0.02))
    assert got == pytest.approx(contraction, rel=1e-5)
    expected = math.sqrt(-math.log(1 - (math.sqrt(0.9) - math.sqrt(0.05)) ** 2) * sigma**2 / (2 * contraction))
    assert float(crfl_radius(0.9, 0.05, sigma, got)) == pytest.approx(expected, rel=1e-5)
    assert float(crfl_radius(0.4, 0.45, sigma)) == 0.0


def test_smoothed_metrics_count_the_votes_of_the_noisy_copies():
    """A one-parameter model: logits (w, 0), so a copy votes class 0 iff w + sigma z > 0. The vote
    shares, Hoeffding bounds, certificate and radius follow from the same draws."""
    apply = lambda p, x: jnp.stack([jnp.full(x.shape[0], p["w"]), jnp.zeros(x.shape[0])], -1)
    params = {"w": jnp.float32(0.01)}
    x, y = jnp.zeros((5, 1)), jnp.array([0, 0, 0, 1, 1])
    m, sigma, alpha = 50, 0.02, 0.01
    metrics = functools.partial(
        smoothed_metrics, sigma_train=sigma, sigma_test=sigma, clip_norm=1.0, num_samples=m, alpha=alpha
    )
    out = jax.jit(metrics, static_argnums=0)(apply, params, x, y)
    key = jax.random.PRNGKey(0)
    z = np.asarray(jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i), (1,))[0])(jnp.arange(m)))
    share0 = np.mean(0.01 + sigma * z > 0)
    top = 0 if share0 >= 0.5 else 1
    p_top = max(share0, 1 - share0)
    margin = math.sqrt(math.log(1 / alpha) / (2 * m))
    p_a, p_b = p_top - margin, (1 - p_top) + margin
    certified = p_a > p_b
    radius = float(crfl_radius(p_a, p_b, sigma, crfl_contraction([], sigma, 1.0, sigma))) if certified else 0.0
    correct = np.array([0, 0, 0, 1, 1]) == top
    assert float(out["smoothed_accuracy"]) == pytest.approx(correct.mean())
    assert float(out["certified_accuracy"]) == pytest.approx(correct.mean() * certified)
    assert float(out["certified_radius"]) == pytest.approx(radius * correct.sum() / 5, rel=1e-5)
    assert 0.6 < share0 < 0.9  # the draws split: a real vote (p_top = share0 here)


def test_the_rule_test_metrics_join_the_evaluation_and_the_summary():
    from experiments.run import summary_table

    base = lambda params, x, y: {"accuracy": jnp.float32(0.5)}
    assert with_rule_metrics(base, A.mean(), None) is base
    rule = A.crfl(num_samples=4)
    assert rule.evaluate is not None and A.with_preaggregation(rule, A.bucketing(2)).evaluate is rule.evaluate
    apply = lambda p, x: x @ p["w"]
    combined = with_rule_metrics(base, rule, apply)
    out = combined({"w": jnp.eye(2)}, jnp.array([[1.0, 0.0], [0.0, 1.0]]), jnp.array([0, 1]))
    assert set(out) == {"accuracy", "smoothed_accuracy", "certified_accuracy", "certified_radius"}
    assert float(out["smoothed_accuracy"]) == 1.0
    results = {
        "config": fljax.experiment.config_dict(fljax.experiment.ExperimentConfig(aggregator="crfl")),
        "final": dict(
            accuracy=0.9,
            loss=0.3,
            smoothed_accuracy=0.875,
            certified_accuracy=0.5,
            certified_radius=0.0123,
            detection_tpr=float("nan"),
            detection_fpr=0.0,
            seconds=1.0,
            rounds_per_second=1.0,
            compile_seconds=1.0,
            diverged=False,
        ),
    }
    assert "smoothed accuracy   | 0.8750 (certified 0.5000, mean certified radius 0.0123)" in summary_table(results)


# ------------------------------------------------------------------------------ validation


BAD = [
    (lambda: A.fldetector(num_clients=0), "num_clients", "0"),
    (lambda: A.fldetector(num_clients=10, window_size=0), "window_size", "0"),
    (lambda: A.fldetector(num_clients=10, window_size=2.5), "window_size", "2.5"),
    (lambda: A.fldetector(num_clients=10, num_references=1), "num_references", "1"),
    (lambda: A.deepsight(tau=0.0), "tau", "0.0"),
    (lambda: A.deepsight(tau=1.5), "tau", "1.5"),
    (lambda: A.deepsight(num_seeds=0), "num_seeds", "0"),
    (lambda: A.deepsight(num_samples=-3), "num_samples", "-3"),
    (lambda: A.deepsight(threshold_factor=1.0), "threshold_factor", "1.0"),
    (lambda: A.deepsight(min_cluster_size=1), "min_cluster_size", "1"),
    (lambda: A.deepsight(min_samples=0), "min_samples", "0"),
    (lambda: A.deepsight(min_samples=9).requirement(8), "min_samples=9", "n=8"),
    (lambda: A.crfl(noise_std=-0.1), "noise_std", "-0.1"),
    (lambda: A.crfl(clip_norm=0.0), "clip_norm", "0.0"),
    (lambda: A.crfl(clip_norm=float("inf")), "clip_norm", "inf"),
    (lambda: A.crfl(clip_growth=-1.0), "clip_growth", "-1.0"),
    (lambda: A.crfl(sigma_test=float("nan")), "sigma_test", "nan"),
    (lambda: A.crfl(num_samples=1), "num_samples", "1"),
    (lambda: A.crfl(alpha=1.0), "alpha", "1.0"),
    (lambda: A.crfl(weighted="yes"), "weighted", "'yes'"),
]


@pytest.mark.parametrize("index", range(len(BAD)))
def test_bad_hyper_parameters_are_refused_by_name(index):
    call, name, value = BAD[index]
    with pytest.raises(ValueError) as info:
        call()
    message = str(info.value)
    assert name in message and value in message and any(w in message for w in ALLOWED), message
    assert "\n" not in message


def test_a_bad_spec_argument_is_refused_before_anything_is_built():
    from fljax.experiment import ExperimentConfig, build_aggregator

    with pytest.raises(ValueError, match="window_size"):
        build_aggregator(ExperimentConfig(aggregator="fldetector(window_size=0)"))
    with pytest.raises(ValueError, match="tau"):
        build_aggregator(ExperimentConfig(aggregator="deepsight(tau=2.0)"))


# ------------------------------------------------------------------------------ in a round, from the runner


def test_make_round_gives_the_rule_the_model():
    """A rule that sets needs_model gets ModelAccess: the round's unravel and the model's apply,
    and the shape of one input."""
    seen = {}

    def update(updates, state, ctx):
        seen["model"] = ctx.model
        seen["layout"] = jax.tree.map(jnp.shape, ctx.model.unravel(ctx.params))
        return jnp.mean(updates, 0), state, {"weights": jnp.full(updates.shape[0], 1.0 / updates.shape[0])}

    rule = fljax.Aggregator(init=lambda p: fljax.types.EmptyState(), update=update, needs_model=True)
    data = make_data([[0], [1], [2], [3]], np.arange(8.0).reshape(4, 2), np.arange(4.0))
    apply = lambda p, x: x @ p["w"]
    rnd = fljax.make_round(fljax.fedsgd(squared_loss), rule, clients_per_round=4, model_apply=apply)
    rnd.step(rnd.init({"w": jnp.ones(2)}), data, jax.random.PRNGKey(0))
    assert seen["model"].apply is apply and seen["model"].inputs.shape == (2,)
    assert seen["layout"] == {"w": (2,)}


@pytest.mark.slow
@pytest.mark.parametrize(
    "rule, attack",
    [
        ("fldetector(window_size=3)", "sign_flip(scale=5.0)"),
        ("deepsight(min_cluster_size=3)", "backdoor(target_label=0)"),
        ("crfl", "backdoor(target_label=0)"),
    ],
)
def test_each_rule_from_the_runner(rule, attack):
    """digits, logistic regression, 20 clients all per round, 4 malicious, FedAvg: each rule runs
    through the runner; the detectors detect, CRFL reports its smoothed accuracy and radius."""
    from experiments.run import run_experiment, summary_table
    from fljax.experiment import ExperimentConfig, build

    config = ExperimentConfig(
        dataset="digits",
        model="logreg",
        num_clients=20,
        clients_per_round=20,
        num_malicious=4,
        attack=attack,
        aggregator=rule,
        rounds=9,
        eval_every=3,
        local_steps=5,
    )
    results = run_experiment(build(config), log=lambda m: None)
    final, table = results["final"], summary_table(results)
    assert not final["diverged"] and final["accuracy"] > 0.6
    if rule.startswith("crfl"):
        assert 0.5 < final["smoothed_accuracy"] <= 1 and final["certified_radius"] >= 0 and "smoothed accuracy" in table
    else:
        assert final["detection_tpr"] > 0.5 and final["detection_fpr"] < 0.2
