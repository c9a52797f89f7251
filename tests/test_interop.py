"""fljax.interop: the NumPy and PyTorch bridges and the stateful Session (no Flower needed)."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fljax
from fljax.aggregators import (
    bucketing,
    centered_clipping,
    fltrust,
    foolsgold,
    geometric_median,
    krum,
    mean,
    median,
    multi_krum,
    trimmed_mean,
    with_preaggregation,
)
from fljax.interop import Layout, Session
from fljax.interop import numpy as fnp
from fljax.interop.session import as_jax


def test_importing_fljax_and_the_numpy_bridge_imports_neither_torch_nor_flower():
    code = (
        "import sys, fljax; fljax.interop; import fljax.interop.numpy; "
        "print(sorted(m for m in ('torch', 'flwr') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_median_hand_case_keeps_names_shapes_and_dtypes():
    def client(k, count, b):
        return {
            "w": np.array([[1, 2], [3, 4]], np.float32) * k,
            "count": np.array([count], np.int64),
            "b": np.array(b, np.float64),
        }

    clients = [client(1, 1, [0.5, 0.0, -1.0]), client(2, 4, [1.5, 2.0, -3.0]), client(100, 9, [-7.0, 0.25, 10.0])]
    out = fnp.aggregate(median(), clients)
    assert list(out) == ["w", "count", "b"]
    np.testing.assert_array_equal(out["w"], [[2, 4], [6, 8]])
    np.testing.assert_array_equal(out["count"], [4])
    np.testing.assert_array_equal(out["b"], [0.5, 0.25, -1.0])
    assert [out[k].dtype for k in out] == [np.float32, np.int64, np.float64]


def test_weighted_mean_uses_the_example_counts():
    out = fnp.aggregate(mean(), [[np.array([0.0, 1.0])], [np.array([2.0, 3.0])]], weights=[1, 3])
    np.testing.assert_allclose(out[0], [1.5, 2.5])
    unweighted = fnp.aggregate(mean(weighted=False), [[np.array([0.0, 1.0])], [np.array([2.0, 3.0])]], weights=[1, 3])
    np.testing.assert_allclose(unweighted[0], [1.0, 2.0])


@pytest.mark.parametrize(
    "rule",
    [median(), trimmed_mean(num_byzantine=1), krum(num_byzantine=1), multi_krum(num_byzantine=1), geometric_median()],
    ids=["median", "trimmed_mean", "krum", "multi_krum", "geometric_median"],
)
def test_lists_of_arrays_give_what_fljax_aggregate_gives_on_the_flat_matrix(rule):
    rng = np.random.default_rng(0)
    clients = [[rng.normal(size=(3, 2)).astype(np.float32), rng.normal(size=4).astype(np.float32)] for _ in range(7)]
    weights = rng.integers(1, 50, size=7)
    matrix = np.stack([np.concatenate([a.ravel() for a in c]) for c in clients])
    expected = np.asarray(fljax.aggregate(rule, jnp.asarray(matrix), weights=weights))
    out = fnp.aggregate(rule, clients, weights=weights)
    np.testing.assert_allclose(np.concatenate([a.ravel() for a in out]), expected, rtol=1e-5, atol=1e-6)
    assert [a.shape for a in out] == [(3, 2), (4,)]


def test_stacked_array_and_single_array_clients():
    stacked = np.array([[[1.0, 5.0]], [[2.0, 6.0]], [[30.0, -70.0]]])
    np.testing.assert_array_equal(fnp.aggregate(median(), stacked), [[2.0, 5.0]])
    assert fnp.aggregate(median(), list(stacked)).shape == (1, 2)


def test_a_nan_update_from_an_attacker_is_data():
    honest = [np.array([1.0, 2.0]), np.array([1.2, 2.2]), np.array([0.8, 1.6])]
    out = fnp.aggregate(median(), honest + [np.array([np.nan, np.inf])])
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out, np.median(np.stack(honest + [np.array([np.inf, np.inf])]), axis=0))


def test_fltrust_reads_the_reference_in_the_clients_structure():
    clients = [
        [np.array([1.0, 0.0]), np.array([0.5])],
        [np.array([-1.0, 0.0]), np.array([0.0])],
        [np.array([2.0, 2.0]), np.array([1.0])],
    ]
    reference = [np.array([1.0, 0.0]), np.array([0.0])]
    expected = fljax.aggregate(
        fltrust(),
        jnp.asarray([[1.0, 0.0, 0.5], [-1.0, 0.0, 0.0], [2.0, 2.0, 1.0]]),
        reference=jnp.asarray([1.0, 0.0, 0.0]),
    )
    out = fnp.aggregate(fltrust(), clients, reference=reference)
    np.testing.assert_allclose(np.concatenate(out), expected, rtol=1e-6)
    assert not np.allclose(np.concatenate(out), 0.0)


def test_session_carries_foolsgold_state_and_maps_named_clients_to_stable_rows():
    rule = foolsgold(num_clients=4)
    rng = np.random.default_rng(1)
    cohorts = [["a", "b", "c"], ["c", "d", "a"], ["b", "a", "d", "c"]]
    rounds = [rng.normal(size=(len(c), 5)).astype(np.float32) for c in cohorts]
    rounds[2][1] = rounds[2][0]  # "a" copies "b" in the last round: a sybil pair
    rows = {"a": 0, "b": 1, "c": 2, "d": 3}  # order of first appearance

    session = Session(rule)
    update = jax.jit(rule.update)
    state = positional = rule.init(jnp.zeros(5))
    differs = False
    for names, x in zip(cohorts, rounds):
        out, info = session(x, client_ids=names)
        n = len(names)
        ctx = fljax.AggregationContext(
            jnp.ones(n), jax.random.PRNGKey(0), jnp.asarray([rows[c] for c in names]), jnp.zeros(5), jnp.zeros(5)
        )
        expected, state, expected_info = update(jnp.asarray(x), state, ctx)
        np.testing.assert_allclose(out, expected, rtol=1e-6)
        np.testing.assert_allclose(info["weights"], expected_info["weights"], rtol=1e-6)
        # the same rounds with ids by position (no stable mapping) give other weights
        wrong, positional, _ = update(jnp.asarray(x), positional, ctx._replace(client_ids=jnp.arange(n)))
        differs |= not np.allclose(wrong, expected)
    assert differs
    assert session.population == rows
    for name, row in rows.items():  # FoolsGold's history row of a client is the sum of its updates
        sent = sum(x[names.index(name)] for names, x in zip(cohorts, rounds) if name in names)
        np.testing.assert_allclose(session.state.history[row], sent, rtol=1e-5, atol=1e-6)


def test_session_refuses_more_distinct_clients_than_the_rules_population():
    session = Session(foolsgold(num_clients=3))
    session(np.ones((3, 2), np.float32), client_ids=["a", "b", "c"])
    with pytest.raises(ValueError, match="4 distinct clients"):
        session(np.ones((3, 2), np.float32), client_ids=["a", "b", "d"])


def test_session_round_keys_are_deterministic_per_seed():
    rule = with_preaggregation(krum(num_byzantine=1), bucketing(bucket_size=2))
    x = np.random.default_rng(2).normal(size=(10, 3)).astype(np.float32)
    runs = []
    for seed in (0, 0, 1):
        session = Session(rule, seed=seed)
        runs.append([np.asarray(session(x)[0]) for _ in range(4)])
    np.testing.assert_array_equal(runs[0], runs[1])
    assert len({tuple(r) for r in runs[0]}) > 1  # the shuffle differs between rounds
    ctx = fljax.AggregationContext(
        jnp.ones(10), jax.random.fold_in(jax.random.PRNGKey(1), 3), jnp.arange(10), jnp.zeros(3), jnp.zeros(3)
    )
    np.testing.assert_allclose(runs[2][3], rule.update(jnp.asarray(x), (), ctx)[0], rtol=1e-6)


def test_session_keeps_centered_clipping_momentum_across_calls():
    rule = centered_clipping(clip_radius=1.0)
    x1 = np.array([[3.0, 0.0], [3.0, 0.0], [3.0, 0.0]], np.float32)
    session = Session(rule)
    first, _ = session(x1)
    second, _ = session(x1)
    np.testing.assert_allclose(first, [1.0, 0.0], rtol=1e-6)  # one clipped step of radius 1 from 0
    np.testing.assert_allclose(second, [2.0, 0.0], rtol=1e-6)  # from the kept momentum [1, 0]


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda s: s(np.ones(3, np.float32)), "updates must be"),
        (lambda s: s(np.ones((2, 3)), weights=[1, -1]), "weights"),
        (lambda s: s(np.ones((2, 3)), weights=[1, np.nan]), "weights"),
        (lambda s: s(np.ones((2, 3)), weights=[1, 2, 3]), "weights"),
        (lambda s: s(np.ones((2, 3)), client_ids=["a", "a"]), "client_ids"),
        (lambda s: s(np.ones((2, 3)), client_ids=["a"]), "client_ids"),
        (lambda s: s(np.ones((2, 3)), params=np.ones(4)), "params"),
    ],
)
def test_session_rejects_bad_input_before_compiling(call, message):
    with pytest.raises(ValueError, match=message):
        call(Session(median()))


def test_session_rejects_a_changed_model_size_and_a_missing_reference():
    session = Session(median())
    session(np.ones((3, 2)))
    with pytest.raises(ValueError, match="d=3 parameters but earlier rounds had d=2"):
        session(np.ones((3, 3)))
    with pytest.raises(ValueError, match="reference"):
        Session(fltrust())(np.ones((3, 2)))
    with pytest.raises(ValueError, match="rule must be"):
        fnp.aggregate("median", [np.ones(2)])


def test_layout_names_the_client_whose_arrays_do_not_fit():
    layout = Layout.of({"w": np.zeros((2, 2)), "b": np.zeros(2)})
    assert layout.size == 6 and layout.sizes == (4, 2)
    with pytest.raises(ValueError, match=r"client 1: array 'b' has shape \(3,\), expected \(2,\)"):
        fnp.pack([{"w": np.zeros((2, 2)), "b": np.zeros(2)}, {"w": np.zeros((2, 2)), "b": np.zeros(3)}], layout)
    with pytest.raises(ValueError, match="expected arrays named"):
        fnp.pack([{"b": np.zeros(2), "w": np.zeros((2, 2))}], layout)


def test_unpack_rounds_integer_and_bool_arrays_into_their_range():
    layout = Layout.of([np.zeros(3, np.uint8), np.zeros(2, bool), np.zeros(1, np.int32)])
    out = fnp.unpack(np.array([-3.0, 2.6, 300.0, 0.4, 0.6, -2.5]), layout)
    np.testing.assert_array_equal(out[0], [0, 3, 255])
    np.testing.assert_array_equal(out[1], [False, True])
    np.testing.assert_array_equal(out[2], [-2])
    assert [a.dtype for a in out] == [np.uint8, np.bool_, np.int32]


def test_numpy_float32_enters_jax_through_dlpack_without_a_copy():
    layout = Layout.of([np.zeros((3, 5), np.float32), np.zeros(7, np.float32)])
    rows = [[np.full((3, 5), i, np.float32), np.arange(7, dtype=np.float32)] for i in range(5)]
    a = fnp.pack(rows, layout)  # 64-byte aligned, what XLA on CPU needs to take it as is
    assert a.ctypes.data % 64 == 0
    assert as_jax(a, jnp.float32).unsafe_buffer_pointer() == a.ctypes.data
    buf = np.zeros(a.nbytes + 68, np.uint8)
    start = -buf.ctypes.data % 64 + 4
    unaligned = buf[start : start + a.nbytes].view(np.float32).reshape(a.shape)  # XLA copies this one
    unaligned[:] = a
    np.testing.assert_array_equal(as_jax(unaligned, jnp.float32), a)
    b = a.astype(np.float64)  # another dtype: converted (a copy), same values
    np.testing.assert_array_equal(as_jax(b, jnp.float32), a)
    a.setflags(write=False)  # DLPack cannot export read-only arrays: copied instead
    np.testing.assert_array_equal(as_jax(a, jnp.float32), a)


# ---------------------------------------------------------------------------------------------- PyTorch


def _torch():
    return pytest.importorskip("torch", reason="the PyTorch bridge needs torch (pip install fljax[torch])")


def test_torch_tensor_enters_and_leaves_jax_through_dlpack_without_a_copy():
    torch = _torch()
    from fljax.interop.torch import _to_jax

    t = torch.randn(5, 7, requires_grad=True)
    j = _to_jax(t)
    assert j.unsafe_buffer_pointer() == t.data_ptr()
    back = torch.from_dlpack(j)
    assert back.data_ptr() == t.data_ptr()
    assert as_jax(t, jnp.float32).unsafe_buffer_pointer() == t.data_ptr()  # what a Session does with it
    np.testing.assert_array_equal(as_jax(t.double(), jnp.float32), t.detach().numpy())


def test_torch_state_dicts_of_a_real_model_with_a_sign_flipped_client():
    torch = _torch()
    from fljax.interop import torch as ftorch

    def model(seed):
        torch.manual_seed(seed)
        net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
        net.train()
        net(torch.randn(8, 3) * (seed + 1))  # one forward pass moves BatchNorm's running stats and counter
        return net.state_dict()

    global_sd = model(0)
    updates = [{k: model(s)[k] - global_sd[k] for k in global_sd} for s in range(1, 5)]
    updates[3] = {k: -10 * v for k, v in updates[3].items()}  # the attacker flips and scales its update
    out = ftorch.aggregate(median(), updates, weights=torch.tensor([10.0, 20.0, 30.0, 40.0]))
    assert list(out) == list(global_sd)
    for k, v in out.items():
        assert v.dtype == global_sd[k].dtype and v.shape == global_sd[k].shape and not v.requires_grad
        expected = np.median(np.stack([u[k].double().numpy() for u in updates]), axis=0)
        if v.dtype == torch.int64:  # num_batches_tracked: 0 for every client, the rounded median
            np.testing.assert_array_equal(v.numpy(), np.rint(expected))
        else:
            np.testing.assert_allclose(v.numpy(), expected, rtol=1e-6, atol=1e-7)
    numpy_out = fnp.aggregate(median(), [{k: v.numpy() for k, v in u.items()} for u in updates])
    for k in out:
        np.testing.assert_array_equal(out[k].numpy(), numpy_out[k])


def test_torch_stacked_tensor_with_grad_and_a_weights_tensor():
    torch = _torch()
    from fljax.interop import torch as ftorch

    x = torch.arange(12.0).reshape(3, 2, 2).requires_grad_()
    w = torch.tensor([1.0, 1.0, 2.0])
    out = ftorch.aggregate(mean(), x, weights=w)
    assert out.shape == (2, 2) and out.dtype == torch.float32
    torch.testing.assert_close(out, (x.detach() * w[:, None, None]).sum(0) / w.sum())


def test_torch_session_carries_state_like_the_numpy_session():
    torch = _torch()
    from fljax.interop import torch as ftorch

    rng = np.random.default_rng(4)
    rounds = [rng.normal(size=(4, 6)).astype(np.float32) for _ in range(3)]
    ids = [["p", "q", "r", "s"], ["s", "r", "q", "p"], ["q", "s", "p", "r"]]
    torch_session, numpy_session = Session(foolsgold(num_clients=4)), Session(foolsgold(num_clients=4))
    for x, names in zip(rounds, ids):
        a = ftorch.aggregate(torch_session, [torch.from_numpy(row.copy()) for row in x], client_ids=names)
        b = fnp.aggregate(numpy_session, list(x), client_ids=names)
        np.testing.assert_allclose(a.numpy(), b, rtol=1e-6)
    np.testing.assert_allclose(
        np.asarray(torch_session.state.history), np.asarray(numpy_session.state.history), rtol=1e-6
    )
