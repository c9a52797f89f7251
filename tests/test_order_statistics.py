"""Exactness of the coordinate-wise order-statistics kernel against numpy sorts.

Each (n, k) compiles the kernel once (~1 s), so the ranks are picked to cover its paths: the
selection networks (n <= NETWORK_MAX_N), and for larger n (or with the networks switched off)
the ends (min / max), radix select, the successor shortcut (adjacent ranks, even-n medians),
the exact low-half pass (clustered columns), the blocked CPU loop and its shifted last block.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fljax.aggregators import order_statistics as ostat


def _data(n, seed=0, subnormal=True):
    """Column groups of every hard case side by side (columns are independent): gaussian,
    integer-valued ties, tight clusters (the exact low-half pass), mixed magnitudes, half the
    rows identical (colluders), +/-inf entries and rows, NaN (counts as +inf), signed zeros."""
    rng = np.random.default_rng(seed)
    gauss = rng.standard_normal((n, 24)) * 0.01
    ints = rng.integers(-3, 4, (n, 16)).astype(np.float64)
    clustered = 1.0 + rng.random((n, 16)) * 1e-3
    mixed = rng.standard_normal((n, 16)) * 10.0 ** rng.integers(-44 if subnormal else -30, 30, (n, 16))
    collude = rng.standard_normal((n, 16))
    collude[: (n + 1) // 2] = collude[0]
    inf = rng.standard_normal((n, 16))
    inf[rng.random((n, 16)) < 0.25] = np.inf
    inf[rng.random((n, 16)) < 0.25] = -np.inf
    inf[0] = np.inf
    inf[-1] = -np.inf
    nan = rng.standard_normal((n, 8))
    nan[rng.random((n, 8)) < 0.3] = np.nan
    zeros = np.where(rng.random((n, 8)) < 0.5, 0.0, -0.0)
    x = np.concatenate([gauss, ints, clustered, mixed, collude, inf, nan, zeros], axis=1)
    return x.astype(np.float32)


def _sorted(x):
    return np.sort(np.where(np.isnan(x), np.inf, x), axis=0)


def _reference_trimmed(x, k):
    """Brute force from a full sort: the kept slots' mean, and each client's slots (a value's
    kept slots split evenly among the clients holding that value)."""
    n = x.shape[0]
    x = np.where(np.isnan(x), np.inf, x).astype(np.float64)
    kept = np.sort(x, axis=0)[k : n - k]
    with np.errstate(invalid="ignore"):
        aggregate = kept.mean(axis=0)
    slots_of_value = (kept[None, :, :] == x[:, None, :]).sum(axis=1)  # [n, d]
    holders = (x[None, :, :] == x[:, None, :]).sum(axis=1)  # [n, d]
    shares = (slots_of_value / holders).mean(axis=1) / (n - 2 * k)
    return aggregate, shares, kept


@pytest.mark.parametrize(
    "n,ks", [(1, [0]), (2, [0]), (3, [1]), (4, [1]), (5, [2]), (10, [4]), (25, [6]), (100, [49]), (101, [20])]
)
def test_kth_matches_sort(n, ks):
    x = _data(n)
    s = _sorted(x)
    for k in ks:
        lo, hi = jax.jit(ostat.kth_smallest_and_largest, static_argnums=1)(jnp.asarray(x), k)
        np.testing.assert_array_equal(np.asarray(lo), s[k], err_msg=f"n={n} k={k} lo")
        np.testing.assert_array_equal(np.asarray(hi), s[n - 1 - k], err_msg=f"n={n} k={k} hi")


@pytest.mark.parametrize("network", [True, False], ids=["network", "radix"])
def test_every_rank(network, monkeypatch):
    """All ranks at once: by the selection network, or (networks off) the ends and the chain of
    successors, and every other rank by radix select (non-adjacent ranks)."""
    n = 7
    if not network:
        monkeypatch.setattr(ostat, "NETWORK_MAX_N", 0)
    x = _data(n, seed=2)
    s = _sorted(x)
    key = ostat.float_key(jnp.where(jnp.isnan(x), jnp.inf, x))
    for ranks in (tuple(range(n)), tuple(range(1, n - 1, 2)), tuple(range(2, n - 1, 2))):
        if ranks:
            found = jax.jit(lambda k, ranks=ranks: ostat._select_keys(k, ranks))(key)
            for r, f in zip(ranks, found):
                np.testing.assert_array_equal(np.asarray(ostat.key_float(f)), s[r], err_msg=f"n={n} rank={r}")


@pytest.mark.parametrize("n,k", [(1, 0), (4, 1), (25, 6), (100, 49), (101, 20)])
def test_trimmed_mean_matches_brute_force(n, k):
    x = _data(n, seed=1, subnormal=False)  # XLA CPU flushes subnormal arithmetic to zero
    aggregate, shares = jax.jit(ostat.trimmed_mean_with_shares, static_argnums=1)(jnp.asarray(x), k)
    ref_aggregate, ref_shares, kept = _reference_trimmed(x, k)
    aggregate = np.asarray(aggregate, np.float64)
    finite = np.isfinite(ref_aggregate)
    np.testing.assert_array_equal(aggregate[~finite], ref_aggregate[~finite])
    # float32 sums of mixed magnitudes: compare against the kept values' scale.
    scale = np.abs(np.where(np.isfinite(kept), kept, 0.0)).mean(axis=0)
    error = np.abs(aggregate[finite] - ref_aggregate[finite])
    assert np.all(error <= 1e-5 * scale[finite]), f"n={n} k={k}"
    np.testing.assert_allclose(np.asarray(shares), ref_shares, rtol=1e-5, atol=1e-6)
    assert abs(float(jnp.sum(shares)) - 1.0) < 1e-5


def test_blocked_loop(monkeypatch):
    """16-column blocks on CPU: every block boundary and the shifted, overlapping last one."""
    monkeypatch.setattr(ostat, "BLOCK_ELEMENTS", 1)
    monkeypatch.setattr(ostat, "NETWORK_MAX_N", 0)
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    x = _data(10, seed=3, subnormal=False)
    lo, hi = jax.jit(ostat.kth_smallest_and_largest, static_argnums=1)(jnp.asarray(x), 3)
    s = _sorted(x)
    np.testing.assert_array_equal(np.asarray(lo), s[3])
    np.testing.assert_array_equal(np.asarray(hi), s[6])
    aggregate, shares = jax.jit(ostat.trimmed_mean_with_shares, static_argnums=1)(jnp.asarray(x), 4)
    ref_aggregate, ref_shares, _ = _reference_trimmed(x, 4)
    np.testing.assert_allclose(np.asarray(aggregate), ref_aggregate, rtol=1e-6, atol=1e-30)
    np.testing.assert_allclose(np.asarray(shares), ref_shares, rtol=1e-5, atol=1e-6)


def test_hand_computed():
    trimmed = jax.jit(ostat.trimmed_mean_with_shares, static_argnums=1)
    aggregate, shares = trimmed(jnp.array([[0.0], [1.0], [2.0], [9.0]]), 1)
    np.testing.assert_allclose(aggregate, [1.5])
    np.testing.assert_allclose(shares, [0.0, 0.5, 0.5, 0.0])
    # Three tied clients share the two kept slots: 2/3 of a slot each, out of 2 kept slots.
    aggregate, shares = trimmed(jnp.array([[1.0], [1.0], [1.0], [5.0]]), 1)
    np.testing.assert_allclose(aggregate, [1.0])
    np.testing.assert_allclose(shares, [1 / 3, 1 / 3, 1 / 3, 0.0], rtol=1e-6)
    kth = jax.jit(ostat.kth_smallest_and_largest, static_argnums=1)
    lo, hi = kth(jnp.array([[3.0, -jnp.inf], [1.0, 2.0], [jnp.nan, jnp.inf]]), 1)
    np.testing.assert_array_equal(lo, [3.0, 2.0])
    np.testing.assert_array_equal(hi, [3.0, 2.0])


def test_vmap_and_low_precision_dtypes():
    x = jnp.asarray(_data(6))
    batch = jnp.stack([x, -x])
    lo, hi = jax.jit(jax.vmap(lambda m: ostat.kth_smallest_and_largest(m, 2)))(batch)
    s = np.stack([_sorted(np.asarray(m)) for m in batch])
    np.testing.assert_array_equal(lo, s[:, 2])
    np.testing.assert_array_equal(hi, s[:, 3])
    xb = x[:, :24].astype(jnp.bfloat16)
    lo, hi = jax.jit(ostat.kth_smallest_and_largest, static_argnums=1)(xb, 1)
    assert lo.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(lo, np.float32), _sorted(np.asarray(xb, np.float32))[1])


def test_rejects_bad_k():
    with pytest.raises(ValueError, match="k must be"):
        ostat.kth_smallest_and_largest(jnp.zeros((3, 4)), 3)
    with pytest.raises(ValueError, match="2k < n"):
        ostat.trimmed_mean_with_shares(jnp.zeros((4, 4)), 2)


def test_gradients_match_sort():
    """The custom JVPs agree with differentiating a full sort (no ties in this data)."""
    x = jax.random.normal(jax.random.PRNGKey(0), (7, 5))
    w = jnp.arange(1.0, 6.0)
    grad = jax.grad(lambda x: jnp.sum(w * ostat.trimmed_mean_with_shares(x, 2)[0]))(x)
    expected = jax.grad(lambda x: jnp.sum(w * jnp.sort(x, axis=0)[2:5].mean(axis=0)))(x)
    np.testing.assert_allclose(grad, expected, atol=1e-6)
    grad = jax.grad(lambda x: jnp.sum(w * ostat.kth_smallest_and_largest(x, 1)[1]))(x)
    np.testing.assert_allclose(grad, jax.grad(lambda x: jnp.sum(w * jnp.sort(x, axis=0)[5]))(x), atol=1e-6)


@pytest.mark.parametrize("n,k", [(10, 3), (100, 49), (101, 20)])
def test_accelerator_form_matches_sort(n, k, monkeypatch):
    """The GPU/TPU form (one ``lax.reduce`` per reduction, one column block), run on CPU: the
    same exact order statistics and trimmed means as the sort."""
    monkeypatch.setattr(ostat, "_accelerator", lambda: True)
    x = _data(n, seed=4, subnormal=False)
    s = _sorted(x)
    # Fresh lambdas: jit caches traces per function, and the form is chosen at trace time.
    lo, hi = jax.jit(lambda x: ostat.kth_smallest_and_largest(x, k))(jnp.asarray(x))
    np.testing.assert_array_equal(np.asarray(lo), s[k])
    np.testing.assert_array_equal(np.asarray(hi), s[n - 1 - k])
    aggregate, shares = jax.jit(lambda x: ostat.trimmed_mean_with_shares(x, k))(jnp.asarray(x))
    ref_aggregate, ref_shares, kept = _reference_trimmed(x, k)
    finite = np.isfinite(ref_aggregate)
    scale = np.abs(np.where(np.isfinite(kept), kept, 0.0)).mean(axis=0)
    assert np.all(np.abs(np.asarray(aggregate, np.float64)[finite] - ref_aggregate[finite]) <= 1e-5 * scale[finite])
    np.testing.assert_array_equal(np.asarray(aggregate)[~finite], ref_aggregate[~finite])
    np.testing.assert_allclose(np.asarray(shares), ref_shares, rtol=1e-5, atol=1e-6)
