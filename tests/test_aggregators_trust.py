"""FLTrust, FoolsGold, AFA and CONTRA against hand computations and transcriptions of their papers."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fljax
from fljax.aggregators import REGISTRY, ContraState, afa, contra, fltrust, foolsgold
from fljax.aggregators._population import logit_weights, pardon
from fljax.aggregators.afa import good_probability
from fljax.experiment import ExperimentConfig, build_aggregator


def context(n, d, ids=None, weights=None, reference=None, params=None):
    return fljax.AggregationContext(
        weights=jnp.ones(n) if weights is None else jnp.asarray(weights, jnp.float32),
        key=jax.random.PRNGKey(0),
        client_ids=jnp.arange(n) if ids is None else jnp.asarray(ids),
        params=jnp.zeros(d) if params is None else jnp.asarray(params, jnp.float32),
        reference=jnp.zeros(d) if reference is None else jnp.asarray(reference, jnp.float32),
    )


_JITTED = {}


def step(rule, x, state=None, **kw):
    """One jitted aggregation (compiled once per rule object and shape); returns
    ``(aggregate, state, info)`` with numpy aggregate and info."""
    x = jnp.asarray(x, jnp.float32)
    state = rule.init(jnp.zeros(x.shape[1])) if state is None else state
    update = _JITTED.setdefault(id(rule), (rule, jax.jit(rule.update)))[1]
    out, state, info = update(x, state, context(*x.shape, **kw))
    return np.asarray(out), state, jax.tree.map(np.asarray, info)


AFA_DEFAULT = afa(num_clients=8)
AFA_LOOSE = afa(num_clients=10, xi=1.0, delta_xi=0.5)
FOOLSGOLD = foolsgold(num_clients=8)
FLTRUST = fltrust()


# ----------------------------------------------------------------------------------------- FLTrust


def test_fltrust_hand_case_three_clients_2d():
    # g0 = [2, 0]: x1 = [3, 4] has cos 0.6, x2 = [2, 2] cos 1/sqrt(2), x3 = [-1, 1] cos < 0 -> TS 0.
    # Rescaled to ||g0|| = 2: x1' = [1.2, 1.6], x2' = [sqrt2, sqrt2].
    x = [[3.0, 4.0], [2.0, 2.0], [-1.0, 1.0]]
    out, _, info = step(FLTRUST, x, reference=[2.0, 0.0])
    ts = np.array([0.6, 1 / math.sqrt(2), 0.0])
    expected = (0.6 * np.array([1.2, 1.6]) + ts[1] * np.array([math.sqrt(2), math.sqrt(2)])) / ts.sum()
    np.testing.assert_allclose(out, expected, rtol=1e-6)  # = [1.31588, 1.49950]
    np.testing.assert_allclose(out, [1.315879, 1.499503], rtol=1e-5)
    np.testing.assert_allclose(info["trust_scores"], ts, rtol=1e-6)
    np.testing.assert_allclose(info["weights"], ts / ts.sum(), rtol=1e-6)
    assert fltrust().needs_reference


def test_fltrust_is_magnitude_blind_and_permutation_invariant():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 5)).astype(np.float32)
    g0 = rng.normal(size=5).astype(np.float32)
    out, _, info = step(FLTRUST, x, reference=g0)
    scaled = x * np.array([1, 1000, 1, 0.01, 1, 7], np.float32)[:, None]
    np.testing.assert_allclose(step(FLTRUST, scaled, reference=g0)[0], out, rtol=1e-5, atol=1e-6)
    perm = rng.permutation(6)
    out_p, _, info_p = step(FLTRUST, x[perm], reference=g0)
    np.testing.assert_allclose(out_p, out, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(info_p["weights"], info["weights"][perm], rtol=1e-6)
    # The output always has the norm of g0 or less (a convex mix of vectors of norm ||g0||).
    assert np.linalg.norm(out) <= np.linalg.norm(g0) * (1 + 1e-5)


def test_fltrust_zero_when_no_client_is_trusted_and_nan_rows_get_weight_zero():
    out, _, info = step(FLTRUST, [[-1.0, 0.0], [-2.0, 1.0], [0.0, 0.0]], reference=[1.0, 0.0])
    np.testing.assert_array_equal(out, [0.0, 0.0])
    np.testing.assert_array_equal(info["weights"], [0.0, 0.0, 0.0])
    out, _, info = step(FLTRUST, [[1.0, 0.0], [np.nan, 1.0], [np.inf, 0.0]], reference=[3.0, 0.0])
    np.testing.assert_allclose(out, [3.0, 0.0])
    np.testing.assert_array_equal(info["weights"], [1.0, 0.0, 0.0])


def test_fltrust_through_fljax_aggregate_uses_the_reference():
    out = fljax.aggregate(fltrust(), jnp.array([[2.0, 0.0], [0.0, 5.0]]), reference=jnp.array([1.0, 0.0]))
    np.testing.assert_allclose(out, [1.0, 0.0])


# --------------------------------------------------------------------------------------- FoolsGold


def foolsgold_reference(histories, finite, kappa=1.0):
    """Loop transcription of FoolsGold's Algorithm 1 (authors' code, logit(1) -> 1)."""
    n = len(histories)
    norms = np.linalg.norm(histories, axis=1)
    cs = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            if i != j and norms[i] > 0 and norms[j] > 0:
                cs[i, j] = histories[i] @ histories[j] / (norms[i] * norms[j])
    v = cs.max(axis=1)
    for i in range(n):
        for j in range(n):
            if i != j and v[j] > v[i]:
                cs[i, j] *= v[i] / v[j]
    w = np.clip(1 - cs.max(axis=1), 0, 1)
    w[~finite] = 0
    return logit_reference(w, kappa)


def logit_reference(w, kappa=1.0):
    w = w / w.max() if w.max() > 0 else w
    out = np.zeros(len(w))
    for i, wi in enumerate(w):
        out[i] = 1.0 if wi >= 1 else 0.0 if wi <= 0 else np.clip(kappa * (np.log(wi / (1 - wi)) + 0.5), 0, 1)
    return out


def contra_learning_rates_reference(x, k):
    """Loop transcription of CONTRA's learning rates: top-k similarity, pardoning, logit."""
    n = len(x)
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    cs = np.clip(u @ u.T, 0, 1)

    def top_k_mean(c):
        return np.array([np.sort(np.delete(c[i], i))[::-1][:k].mean() for i in range(n)])

    tau = top_k_mean(cs)
    for i in range(n):
        for j in range(n):
            if i != j and tau[j] > tau[i]:
                cs[i, j] *= tau[i] / tau[j]
    return logit_reference(1 - top_k_mean(cs))


def test_logit_and_pardoning_hand_values():
    # Rescaled by the max (1): 0.5 -> ln(1) + 0.5 = 0.5; 1 -> 1; 0.25 -> ln(1/3) + 0.5 < 0 -> 0.
    np.testing.assert_allclose(logit_weights(jnp.array([0.5, 1.0, 0.25])), [0.5, 1.0, 0.0], atol=1e-6)
    # [.25, .5] rescales to [.5, 1]: kappa = .5 gives .5 * (ln 1 + .5) = .25 and the limit 1.
    np.testing.assert_allclose(logit_weights(jnp.array([0.25, 0.5]), kappa=0.5), [0.25, 1.0], atol=1e-6)
    np.testing.assert_allclose(logit_weights(jnp.zeros(3)), [0.0, 0.0, 0.0])
    # a = [1, 0], b = [cos 30, sin 30], c = [0, 1]: v = [.866, .866, .5]; c's row is pardoned by .5/.866.
    c30 = math.sqrt(3) / 2
    cs = jnp.array([[0.0, c30, 0.0], [c30, 0.0, 0.5], [0.0, 0.5, 0.0]])
    out = np.asarray(pardon(cs, jnp.max(cs, axis=1)))
    np.testing.assert_allclose(out[2], [0.0, 0.5 * 0.5 / c30, 0.0], rtol=1e-6)
    np.testing.assert_allclose(out[:2], np.asarray(cs)[:2], rtol=1e-6)


def test_foolsgold_two_sybils_get_zero_weight():
    s, h = [1.0, 1.0, 0.0, 0.0], [1.0, -1.0, 1.0, 0.0]
    out, state, info = step(FOOLSGOLD, [s, s, h], ids=[0, 1, 2])
    np.testing.assert_allclose(info["weights"], [0.0, 0.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(out, h, atol=1e-6)
    np.testing.assert_allclose(np.asarray(state.history)[:3], [s, s, h])
    assert state.history.shape == (8, 4) and not np.asarray(state.history)[3:].any()


def test_foolsgold_matches_the_algorithm_over_rounds_with_changing_cohorts():
    rng = np.random.default_rng(1)
    population, d, kappa = 7, 6, 0.8
    rule = foolsgold(num_clients=population, kappa=kappa)
    update = jax.jit(rule.update)
    state = rule.init(jnp.zeros(d))
    histories = np.zeros((population, d))
    for cohort in ([0, 2, 4, 6], [5, 2, 1, 0], [3, 6, 2, 5]):
        x = rng.normal(size=(4, d)).astype(np.float32)
        x[1] = 0.9 * histories[cohort[1]] + 0.1 * x[1] if histories[cohort[1]].any() else x[1]
        out, state, info = update(jnp.asarray(x), state, context(4, d, ids=cohort))
        histories[cohort] += x
        w = foolsgold_reference(histories[cohort], np.ones(4, bool), kappa)
        np.testing.assert_allclose(np.asarray(state.history), histories, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(info["foolsgold_weights"]), w, atol=2e-5)
        np.testing.assert_allclose(np.asarray(out), w @ x / w.sum(), rtol=1e-4, atol=1e-5)


def test_foolsgold_history_follows_the_client_across_cohorts():
    rule = FOOLSGOLD
    s = np.array([1.0, 1.0, 0.0, 0.0])
    _, state, _ = step(rule, [s, s, [0.0, 0.0, 1.0, 0.0]], ids=[4, 1, 3])
    # Next round clients 1 and 4 send near-orthogonal updates: alone they look innocent ...
    x2 = [[0.0, 0.0, 0.0, 1.0], [0.3, -0.3, 0.0, 0.0], [0.2, 0.0, -1.0, 0.0], [0.0, 0.2, 0.0, -1.0]]
    _, _, fresh = step(rule, x2, ids=[2, 1, 0, 4])
    assert fresh["weights"][1] > 0.1 and fresh["weights"][3] > 0.1
    # ... but their histories (ids 1 and 4, now at cohort positions 1 and 3) are still alike.
    _, state2, info = step(rule, x2, state=state, ids=[2, 1, 0, 4])
    np.testing.assert_allclose(info["weights"][[1, 3]], [0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(np.asarray(state2.history)[4], s + np.array([0.0, 0.2, 0.0, -1.0]), atol=1e-6)
    np.testing.assert_allclose(np.asarray(state2.history)[5], 0.0)


def test_foolsgold_permutation_invariance_and_nan_rows():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(5, 4)).astype(np.float32)
    x[3] = x[1] * 1.01
    out, _, info = step(FOOLSGOLD, x)
    perm = rng.permutation(5)
    out_p, _, info_p = step(FOOLSGOLD, x[perm])
    np.testing.assert_allclose(out_p, out, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(info_p["weights"], info["weights"][perm], atol=1e-6)
    x[2] = np.nan
    out, state, info = step(FOOLSGOLD, x)
    assert info["weights"][2] == 0 and np.all(np.isfinite(out))
    assert np.all(np.isfinite(np.asarray(state.history))) and not np.asarray(state.history)[2].any()


def test_foolsgold_feature_importance_weights_coordinates_by_global_params():
    # Two clients agree on coordinate 0, disagree on coordinate 1; if the global model only has
    # weight on coordinate 0 their weighted histories are parallel (sybil-like) -> weight 0.
    x = [[1.0, 5.0, 0.0, 0.0], [1.0, -5.0, 0.0, 0.0], [-1.0, 0.0, 0.0, 0.0]]
    _, _, plain = step(FOOLSGOLD, x, params=[1.0, 1.0, 1.0, 1.0])
    _, _, weighted = step(foolsgold(num_clients=3, feature_importance=True), x, params=[1.0, 0.0, 0.0, 0.0])
    assert plain["weights"][0] > 0.2 and plain["weights"][1] > 0.2
    np.testing.assert_allclose(weighted["weights"][:2], [0.0, 0.0], atol=1e-6)


# ---------------------------------------------------------------------------------------------- AFA


def afa_filter_reference(x, p_n, xi, delta_xi):
    """Loop transcription of AFA's filtering (population std, as np.std)."""
    good = np.all(np.isfinite(x), axis=1)
    x = np.where(good[:, None], x, 0.0)
    while True:
        m = (p_n[good, None] * x[good]).sum(0) / p_n[good].sum()
        s = np.array([xi_ @ m / (np.linalg.norm(xi_) * np.linalg.norm(m)) for xi_ in x])
        mean, median, std = s[good].mean(), np.median(s[good]), s[good].std()
        drop = good & ((s < median - xi * std - 1e-6) if mean < median else (s > median + xi * std + 1e-6))
        xi += delta_xi
        if not drop.any():
            return good
        good &= ~drop


def test_afa_hand_case_drops_the_opposite_update():
    # 4 honest near [1, 0], one at [-1, 0]: pass 1 (M = [.6, 0], median .98058, std .79515)
    # drops s = -1 < .98058 - 2 * .79515; pass 2 finds nothing more.
    x = [[1.0, 0.1], [1.0, -0.1], [1.0, 0.2], [1.0, -0.2], [-1.0, 0.0]]
    out, state, info = step(AFA_DEFAULT, x, weights=[1, 2, 3, 4, 1])
    np.testing.assert_array_equal(info["good"], [True, True, True, True, False])
    assert int(info["afa_passes"]) == 2
    # Weights p_k n_k with updated p = 4/7 (equal for the honest): the count-weighted mean.
    np.testing.assert_allclose(out, [1.0, (0.1 - 0.2 + 0.6 - 0.8) / 10], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(info["weights"], [0.1, 0.2, 0.3, 0.4, 0.0], rtol=1e-6)
    np.testing.assert_allclose(state.alpha, [4, 4, 4, 4, 3, 3, 3, 3])
    np.testing.assert_allclose(state.beta, [3, 3, 3, 3, 4, 3, 3, 3])


def test_afa_drops_a_colluding_group_on_the_high_side():
    # 7 spread honest updates, 3 identical attackers pulling the mean: s = [.01 .15 .12 -.24 .06
    # .25 .31 .97 .97 .97], mean .356 > median .201, so with xi = 1 the filter drops s above
    # .201 + 1 * .423 (the attackers'); with xi = 2 the bound 1.05 would keep them.
    rng = np.random.default_rng(3)
    x = rng.normal(size=(10, 20)).astype(np.float32)
    x[7:] = 3.0 * np.ones(20, np.float32)
    _, _, info = step(AFA_LOOSE, x)
    np.testing.assert_array_equal(info["good"], afa_filter_reference(x, np.ones(10), 1.0, 0.5))
    assert not info["good"][7:].any()
    # The next pass (xi = 1.5) trims two honest outliers as well, exactly as the paper's rule does.
    np.testing.assert_array_equal(info["good"][:7], [True, True, True, True, False, False, True])


def test_afa_matches_the_reference_filter_on_random_cases():
    rng = np.random.default_rng(4)
    for trial in range(6):
        x = (rng.normal(size=(10, 20)) + 2.0 * np.eye(20)[0]).astype(np.float32)
        x[: trial % 3 + 1] *= -rng.uniform(0.5, 3.0)
        counts = rng.integers(1, 5, 10).astype(np.float32)
        _, _, info = step(AFA_LOOSE, x, weights=counts)
        np.testing.assert_array_equal(info["good"], afa_filter_reference(x, counts * 0.5, 1.0, 0.5))


def test_afa_reputation_falls_until_the_attacker_is_blocked():
    rule = AFA_DEFAULT
    update = _JITTED.setdefault(id(rule), (rule, jax.jit(rule.update)))[1]
    state = rule.init(jnp.zeros(2))
    x = jnp.array([[1.0, 0.1], [1.0, -0.1], [1.0, 0.2], [1.0, -0.2], [-1.0, 0.0]])
    ids = jnp.array([7, 1, 2, 3, 5])  # the attacker is population client 5
    probs = []
    for r in range(8):
        _, state, info = update(x, state, context(5, 2, ids=ids))
        probs.append(float(good_probability(state.alpha[5], state.beta[5])))
        # Beta(3, 3 + r + 1): P(p > .5) = .3437, .2266, .1445, .0898, .0547, .0327 -> blocked at round 6.
        assert bool(info["blocked"][4]) == (r >= 5)
        assert info["weights"][4] == 0
    assert all(a > b for a, b in zip(probs[:6], probs[1:6]))
    np.testing.assert_allclose(probs[4:6], [0.0546875, 0.0327148], rtol=1e-4)
    assert float(state.beta[5]) == 9.0  # frozen once blocked
    np.testing.assert_allclose(state.alpha[jnp.array([7, 1, 2, 3])], 11.0)
    np.testing.assert_allclose(state.alpha[jnp.array([0, 4, 6])], 3.0)  # never sampled


def test_afa_blocked_client_is_excluded_in_later_cohorts_and_nan_rows_are_bad():
    rule = afa(num_clients=6, prior_alpha=1.0, prior_beta=1.0, block_threshold=0.3)
    # Beta(1, 2): P(p > .5) = .25 < .3 -> blocked after one bad round.
    x = [[1.0, 0.0], [1.0, 0.1], [np.nan, 0.0], [1.0, -0.1]]
    out, state, info = step(rule, x, ids=[0, 1, 5, 2])
    assert info["weights"][2] == 0 and bool(info["blocked"][2]) and np.all(np.isfinite(out))
    assert np.all(np.isfinite(state.alpha)) and float(state.beta[5]) == 2.0
    # Client 5 now sends a perfect update in a different cohort: still weight 0, state unchanged.
    out, state, info = step(rule, [[1.0, 0.0], [1.0, 0.05], [0.9, 0.0], [1.0, -0.05]], state=state, ids=[5, 3, 1, 4])
    assert info["weights"][0] == 0 and bool(info["blocked"][0]) and bool(info["good"][0]) is False
    assert float(state.alpha[5]) == 1.0 and float(state.beta[5]) == 2.0


def test_afa_permutation_invariance():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(10, 20)).astype(np.float32) + 1.0
    x[0] = -5.0
    counts = rng.integers(1, 9, 10)
    out, _, info = step(AFA_LOOSE, x, weights=counts)
    perm = rng.permutation(10)
    out_p, _, info_p = step(AFA_LOOSE, x[perm], weights=counts[perm])
    np.testing.assert_allclose(out_p, out, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(info_p["weights"], info["weights"][perm], atol=1e-6)


# ------------------------------------------------------------------------------------------- CONTRA


def test_contra_reputation_falls_for_a_colluding_pair():
    # Colluders a, b (cos ~ .9997) and two orthogonal honest clients, k = 1, tau = .5, delta = .1.
    x = jnp.array([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.05], [1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    rule = contra(num_clients=4, num_byzantine=1)
    out, state, info = step(rule, x)
    # r: colluders 1 - .1 = .9, honest 1 + .1 = 1.1, divided by the max: .9 / 1.1.
    np.testing.assert_allclose(state.reputation, [0.9 / 1.1, 0.9 / 1.1, 1.0, 1.0], rtol=1e-6)
    np.testing.assert_allclose(info["top_k_similarity"], [0.99970, 0.99970, 0.0, 0.0], atol=1e-4)
    # Pardoning zeroes the honest rows; lr = 1 - tau': colluders' logit is negative -> 0.
    np.testing.assert_allclose(info["weights"], [0.0, 0.0, 0.5, 0.5], atol=1e-6)
    np.testing.assert_allclose(out, [0.5, 0.5, 0.0, 0.0], atol=1e-6)
    _, state, _ = step(rule, x, state=state)
    np.testing.assert_allclose(
        state.reputation, [(0.9 / 1.1 - 0.1) / 1.1, (0.9 / 1.1 - 0.1) / 1.1, 1.0, 1.0], rtol=1e-6
    )


def test_contra_drops_the_least_reputable_and_scales_by_reputation():
    # Reputations from earlier rounds: client 2 (id 7) has .5; nobody is too similar now.
    x = jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 1.0]])
    rule = contra(num_clients=8, num_byzantine=1, similarity_threshold=0.9)
    state = ContraState(jnp.ones(8).at[7].set(0.5).at[4].set(0.3))
    _, new_state, info = step(rule, x, state=state, ids=[0, 1, 7, 4])
    # Everybody gains .1 (tau <= .9): [1.1, 1.1, .6, .4] / 1.1; id 4 is dropped (lowest).
    r = np.array([1.1, 1.1, 0.6, 0.4]) / 1.1
    np.testing.assert_allclose(np.asarray(new_state.reputation)[[0, 1, 7, 4]], r, rtol=1e-6)
    np.testing.assert_allclose(info["reputation"], r, rtol=1e-6)
    # tau (k=1): .7071 for the last three (cos(z, [0,-1,1]) = cos(y, ...) = .7071), 0 for x.
    # Pardoned tau' and then lr: x has lr 1; the rest share 1 - .7071 -> rescaled .2929 -> 0 by the logit.
    lr = np.asarray(info["learning_rates"])
    assert lr[0] == 1.0 and info["weights"][3] == 0
    expected = lr * r * np.array([1, 1, 1, 0])
    np.testing.assert_allclose(info["weights"], expected / expected.sum(), atol=1e-6)


def test_contra_permutation_invariance_and_nan_rows():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(6, 5)).astype(np.float32)
    x[4] = x[2] + 0.01
    rule = contra(num_clients=6, num_byzantine=1, top_k=2, similarity_threshold=0.3)
    out, state, info = step(rule, x)
    np.testing.assert_allclose(
        info["learning_rates"], contra_learning_rates_reference(x.astype(np.float64), 2), atol=1e-5
    )
    perm = rng.permutation(6)
    out_p, state_p, info_p = step(rule, x[perm])
    np.testing.assert_allclose(out_p, out, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(info_p["weights"], info["weights"][perm], atol=1e-6)
    np.testing.assert_allclose(np.asarray(state_p.reputation), np.asarray(state.reputation)[perm], rtol=1e-6)
    x[1] = np.nan
    out, state, info = step(rule, x)
    assert info["weights"][1] == 0 and np.all(np.isfinite(out)) and np.all(np.isfinite(np.asarray(state.reputation)))
    assert float(np.asarray(state.reputation)[1]) < 1.0


# --------------------------------------------------------------------------- hyper-parameters, runner


@pytest.mark.parametrize(
    "factory, kwargs, message",
    [
        (foolsgold, dict(num_clients=0), "foolsgold: num_clients must be an integer > 0"),
        (foolsgold, dict(num_clients=5, kappa=0.0), "foolsgold: kappa must be a number > 0"),
        (afa, dict(num_clients=2.5), "afa: num_clients must be an integer > 0"),
        (afa, dict(num_clients=5, xi=-1.0), "afa: xi must be a number >= 0"),
        (afa, dict(num_clients=5, block_threshold=1.0), "afa: block_threshold must be in [0, 1)"),
        (afa, dict(num_clients=5, prior_alpha=1.0, prior_beta=9.0), "every client would start blocked"),
        (contra, dict(num_clients=5, similarity_threshold=1.5), "contra: similarity_threshold must be in [0, 1]"),
        (contra, dict(num_clients=5, reputation_delta=0), "contra: reputation_delta must be in (0, 1]"),
        (contra, dict(num_clients=5, num_byzantine=-1), "contra: num_byzantine must be an integer >= 0"),
    ],
)
def test_bad_hyper_parameters_raise(factory, kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        factory(**kwargs)


def test_requirements_at_build_time():
    with pytest.raises(ValueError, match="foolsgold: the cohort of n=6 .* num_clients=5"):
        foolsgold(num_clients=5).requirement(6)
    with pytest.raises(ValueError, match="contra: top_k must be in 1..n-1=3"):
        contra(num_clients=10, top_k=4).requirement(4)
    contra(num_clients=10, top_k=3).requirement(4)
    with pytest.raises(ValueError, match="afa: block_threshold"):
        build_aggregator(ExperimentConfig(aggregator="afa", block_threshold=2.0))


def test_runner_fills_population_and_hyper_parameters_by_name():
    for name in ("fltrust", "foolsgold", "afa", "contra"):
        assert name in REGISTRY
    agg = build_aggregator(ExperimentConfig(aggregator="foolsgold", num_clients=12, kappa=0.5))
    assert agg.init(jnp.zeros(3)).history.shape == (12, 3)
    agg = build_aggregator(ExperimentConfig(aggregator="afa", num_clients=9, prior_alpha=2.0))
    np.testing.assert_allclose(agg.init(jnp.zeros(3)).alpha, np.full(9, 2.0))
    assert build_aggregator(ExperimentConfig(aggregator="fltrust")).needs_reference


# ------------------------------------------------------------------------------- inside a real round


def test_fltrust_and_foolsgold_inside_make_round():
    import optax

    from tests.helpers import make_data, squared_loss

    x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    y = np.array([1.0, 2.0, 0.0])
    data = make_data([[0, 1], [2]], x, y)
    w = np.array([0.5, -1.0])

    def neg_grad(rows):
        r = x[rows] @ w - y[rows]
        return -(r[:, None] * x[rows]).mean(0)

    g = [neg_grad([0, 1]), neg_grad([2])]
    # FLTrust: the round computes g0 on its root set (here all 3 examples).
    g0 = neg_grad([0, 1, 2])
    ts = np.array([max(0.0, gi @ g0 / (np.linalg.norm(gi) * np.linalg.norm(g0))) for gi in g])
    expected = sum(t * np.linalg.norm(g0) / np.linalg.norm(gi) * gi for t, gi in zip(ts, g)) / ts.sum()
    rnd = fljax.make_round(
        fljax.fedsgd(squared_loss), fltrust(), clients_per_round=2, root_size=3, server_optimizer=optax.sgd(1.0)
    )
    state, _ = rnd.step(rnd.init({"w": jnp.asarray(w, jnp.float32)}), data, jax.random.PRNGKey(0))
    np.testing.assert_allclose(state.params["w"], w + expected, rtol=1e-5)
    # FoolsGold: the population history rides in ServerState.agg_state across rounds.
    rnd = fljax.make_round(fljax.fedsgd(squared_loss), foolsgold(num_clients=2), clients_per_round=2)
    state = rnd.init({"w": jnp.asarray(w, jnp.float32)})
    state, _ = rnd.step(state, data, jax.random.PRNGKey(0))
    np.testing.assert_allclose(np.asarray(state.agg_state.history), np.stack(g), rtol=1e-5)
    state, _ = rnd.step(state, data, jax.random.PRNGKey(1))
    assert state.agg_state.history.shape == (2, 2) and np.all(np.isfinite(np.asarray(state.agg_state.history)))
