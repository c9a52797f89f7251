"""fljax.layers: the CPU convolution and max-pool compute flax's functions, values and gradients."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fljax import layers


def primitives(fn, *args) -> set:
    """Names of the primitives in ``fn``'s jaxpr, sub-jaxprs included."""
    names = set()

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            names.add(eqn.primitive.name)
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                walk(sub)

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return names


def assert_close(a, b, rtol=2e-5):
    """Trees equal up to float32 rounding relative to each leaf's scale."""
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        scale = max(float(jnp.max(jnp.abs(y))), 1e-6)
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=rtol * scale)


CONV_CASES = [  # (kernel, strides, padding, C_in, C_out): Fang's CNN, ResNet, LeNet-5 layers and odd cases
    ((3, 3), 1, "VALID", 1, 30),
    ((3, 3), 1, "VALID", 30, 50),
    ((3, 3), 2, "SAME", 16, 32),
    ((1, 1), 2, "VALID", 16, 32),
    ((5, 5), 1, ((1, 2), (0, 3)), 6, 16),
    ((3, 2), (3, 1), "SAME", 2, 3),
    ((5, 5), 1, ((2, 2), (2, 2)), 1, 6),  # LeNet-5's first layer: one input channel, padded
    ((3, 3), 2, "SAME", 1, 4),  # one input channel, strided
]


@pytest.mark.parametrize("kernel,strides,padding,cin,cout", CONV_CASES)
def test_conv_patches_matches_flax(kernel, strides, padding, cin, cout):
    x = jax.random.normal(jax.random.PRNGKey(1), (3, 11, 10, cin))
    ref = nn.Conv(cout, kernel, strides=strides, padding=padding)
    mine = layers.Conv(cout, kernel, strides=strides, padding=padding, impl="patches")
    params = ref.init(jax.random.PRNGKey(0), x)
    # Same parameter names, shapes and initial values: checkpoints are interchangeable.
    jax.tree.map(np.testing.assert_array_equal, mine.init(jax.random.PRNGKey(0), x), params)
    assert "conv_general_dilated" not in primitives(lambda p: mine.apply(p, x), params)

    def outputs_and_grads(module):
        loss = lambda p, x: jnp.sum(jnp.sin(module.apply(p, x)) * jnp.arange(cout))
        return jax.jit(lambda p, x: (module.apply(p, x), jax.grad(loss, argnums=(0, 1))(p, x)))(params, x)

    assert_close(outputs_and_grads(mine), outputs_and_grads(ref))


def test_conv_without_bias_and_with_kernel_dilation():
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 12, 12, 3))
    ref = nn.Conv(4, (3, 3), padding="SAME", use_bias=False, kernel_dilation=2)
    mine = layers.Conv(4, (3, 3), padding="SAME", use_bias=False, kernel_dilation=2, impl="patches")
    params = ref.init(jax.random.PRNGKey(0), x)
    assert set(params["params"]) == {"kernel"}
    run = lambda m: jax.jit(lambda p: (m.apply(p, x), jax.grad(lambda p: jnp.sum(m.apply(p, x) ** 2))(p)))(params)
    assert_close(run(mine), run(ref))


def test_one_channel_input_with_dilation_strides_and_padding():
    """A one-channel input takes its own kernel gradient (patches built as [K, positions])."""
    x = jax.random.normal(jax.random.PRNGKey(1), (3, 13, 12, 1))
    for strides, padding, dilation in [(1, "VALID", 2), (2, ((1, 0), (2, 1)), 1), ((2, 1), "SAME", (1, 2))]:
        ref = nn.Conv(5, (3, 3), strides=strides, padding=padding, kernel_dilation=dilation)
        mine = layers.Conv(5, (3, 3), strides=strides, padding=padding, kernel_dilation=dilation, impl="patches")
        params = ref.init(jax.random.PRNGKey(0), x)
        loss = lambda m: lambda p, x: jnp.sum(jnp.sin(m.apply(p, x)) * jnp.arange(5))
        run = lambda m: jax.jit(lambda p, x: (m.apply(p, x), jax.grad(loss(m), argnums=(0, 1))(p, x)))(params, x)  # noqa: B023
        assert_close(run(mine), run(ref))


CHWN_CASES = CONV_CASES + [((3, 3), 1, "SAME", 3, 4, {"kernel_dilation": 2, "use_bias": False})]


@pytest.mark.parametrize("impl", ["patches", "xla"])
@pytest.mark.parametrize("case", CHWN_CASES)
def test_chwn_conv_is_flax_conv_on_the_swapped_axes(case, impl):
    """``layout="CHWN"``: flax's parameters, and its outputs and gradients with the batch and
    channel axes swapped, in both implementations."""
    kernel, strides, padding, cin, cout, *extra = case
    kwargs = dict(strides=strides, padding=padding, **(extra[0] if extra else {}))
    x = jax.random.normal(jax.random.PRNGKey(1), (3, 11, 10, cin))
    ref = nn.Conv(cout, kernel, **kwargs)
    mine = layers.Conv(cout, kernel, layout="CHWN", impl=impl, **kwargs)
    params = ref.init(jax.random.PRNGKey(0), x)
    swap = layers.swap_batch_and_channels
    jax.tree.map(np.testing.assert_array_equal, mine.init(jax.random.PRNGKey(0), swap(x)), params)
    chwn = lambda p, x: swap(mine.apply(p, swap(x)))  # NHWC in and out
    if impl == "patches":
        assert "conv_general_dilated" not in primitives(chwn, params, x)

    def outputs_and_grads(f):
        loss = lambda p, x: jnp.sum(jnp.sin(f(p, x)) * jnp.arange(cout))
        return jax.jit(lambda p, x: (f(p, x), jax.grad(loss, argnums=(0, 1))(p, x)))(params, x)

    assert_close(outputs_and_grads(chwn), outputs_and_grads(ref.apply))


def test_chwn_max_pool_and_crop_are_flax_on_the_swapped_axes():
    """``max_pool`` and ``crop_for_pool`` read any layout whose spatial axes sit between the
    first and the last; ties send the gradient to the window's first maximum in CHWN too."""
    x = jnp.round(jax.random.normal(jax.random.PRNGKey(0), (2, 9, 8, 3)) * 2) / 2
    swap = layers.swap_batch_and_channels
    weights = jax.random.normal(jax.random.PRNGKey(1), (2, 4, 4, 3))

    def run(pool):
        loss = lambda x: jnp.sum(jnp.sin(pool(x)) * weights)
        return jax.jit(lambda x: (pool(x), jax.grad(loss)(x)))(x)

    ref = lambda x: nn.max_pool(x, (2, 2), strides=(2, 2))
    mine = lambda x: swap(layers.max_pool(swap(x), (2, 2), impl="patches"))
    jax.tree.map(np.testing.assert_array_equal, run(mine), run(ref))
    np.testing.assert_array_equal(
        swap(layers.crop_for_pool(swap(x), (3, 3), (2, 2))), layers.crop_for_pool(x, (3, 3), (2, 2))
    )


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_chwn_group_norm_is_flax_group_norm_on_the_swapped_axes(groups):
    x = jax.random.normal(jax.random.PRNGKey(1), (3, 6, 5, 8)) * 3 + 1  # [B, H, W, C]
    ref = nn.GroupNorm(num_groups=groups)
    mine = layers.GroupNorm(num_groups=groups, layout="CHWN")
    swap = layers.swap_batch_and_channels
    params = ref.init(jax.random.PRNGKey(0), x)
    jax.tree.map(np.testing.assert_array_equal, mine.init(jax.random.PRNGKey(0), swap(x)), params)
    params = jax.tree.map(lambda a: a + jax.random.normal(jax.random.PRNGKey(2), a.shape), params)  # not 1 and 0
    chwn = lambda p, x: swap(mine.apply(p, swap(x)))

    def outputs_and_grads(f):
        loss = lambda p, x: jnp.sum(jnp.sin(f(p, x)) * jnp.arange(8))
        return jax.jit(lambda p, x: (f(p, x), jax.grad(loss, argnums=(0, 1))(p, x)))(params, x)

    assert_close(outputs_and_grads(chwn), outputs_and_grads(ref.apply))
    y = mine.apply(params, swap(x))  # the NHWC module is flax's own
    np.testing.assert_array_equal(layers.GroupNorm(num_groups=groups).apply(params, x), ref.apply(params, x))
    assert y.shape == (8, 6, 5, 3)


def test_chwn_group_norm_refuses_what_it_does_not_cover():
    x = jnp.ones((4, 3, 3, 2))
    with pytest.raises(ValueError, match="layout='CHWN' needs num_groups \\(not group_size\\)"):
        layers.GroupNorm(num_groups=None, group_size=2, layout="CHWN").init(jax.random.PRNGKey(0), x)
    with pytest.raises(ValueError, match="num_groups: 3 does not divide the number of channels \\(4\\)"):
        layers.GroupNorm(num_groups=3, layout="CHWN").init(jax.random.PRNGKey(0), x)
    with pytest.raises(ValueError, match="layout: unknown layout 'NCHW'"):
        layers.GroupNorm(num_groups=2, layout="NCHW")


def test_chwn_refuses_what_it_does_not_cover():
    x = jnp.ones((4, 8, 8, 2))  # [C, H, W, B]
    with pytest.raises(ValueError, match="layout: unknown layout 'NCHW'; valid: NHWC, CHWN"):
        layers.Conv(3, (3, 3), layout="NCHW")
    for kwargs, needs in [
        ({"feature_group_count": 2}, "feature_group_count=1"),
        ({"padding": "CIRCULAR"}, "zero padding"),
        ({"input_dilation": 2}, "input_dilation=1"),
    ]:
        with pytest.raises(ValueError, match=f"layout='CHWN' needs {needs}; use layout='NHWC'"):
            layers.Conv(4, (3, 3), layout="CHWN", **kwargs).init(jax.random.PRNGKey(0), x)
    with pytest.raises(ValueError, match=r"inputs \[C, \*spatial, B\] of rank 4"):
        layers.Conv(4, (3, 3), layout="CHWN").init(jax.random.PRNGKey(0), x[0])


@pytest.mark.parametrize("size", [(13, 13), (12, 11), (28, 27), (5, 4)])
def test_crop_for_pool_keeps_pooled_values_and_gradients(size):
    """Cropping what the pool drops changes neither the pooled output nor any gradient (the
    cropped inputs' gradient is zero in the uncropped network too)."""
    x = jax.random.normal(jax.random.PRNGKey(1), (2, *size, 3))
    conv = nn.Conv(4, (3, 3), padding="VALID")
    params = conv.init(jax.random.PRNGKey(0), x)
    cropped = layers.crop_for_pool(x, (3, 3), (2, 2))
    out = [(n - 2) // 2 * 2 + 2 for n in size]
    assert cropped.shape == (2, *out, 3)

    def net(crop):
        def f(p, x):
            y = conv.apply(p, layers.crop_for_pool(x, (3, 3), (2, 2)) if crop else x)
            return nn.max_pool(nn.relu(y), (2, 2), strides=(2, 2))

        loss = lambda p, x: jnp.sum(jnp.sin(f(p, x)))
        return jax.jit(lambda p, x: (f(p, x), jax.grad(loss, argnums=(0, 1))(p, x)))(params, x)

    assert_close(net(True), net(False))


def test_auto_is_patches_on_cpu_and_xla_keeps_the_convolution():
    x = jnp.ones((1, 8, 8, 2))
    auto = layers.Conv(3, (3, 3))
    params = auto.init(jax.random.PRNGKey(0), x)
    on_cpu = jax.default_backend() == "cpu"
    assert layers.resolve_impl("auto") == ("patches" if on_cpu else "xla")
    assert ("conv_general_dilated" in primitives(lambda p: auto.apply(p, x), params)) == (not on_cpu)
    xla = layers.Conv(3, (3, 3), impl="xla")
    assert "conv_general_dilated" in primitives(lambda p: xla.apply(p, x), params)
    cloned = layers.Conv(3, (3, 3), impl="patches").clone(impl="xla")
    assert "conv_general_dilated" in primitives(lambda p: cloned.apply(p, x), params)
    assert_close(xla.apply(params, x), layers.Conv(3, (3, 3), impl="patches").apply(params, x))


def test_conv_rejects_unknown_impl_and_unsupported_patches():
    with pytest.raises(ValueError, match="impl: unknown implementation 'cudnn'"):
        layers.Conv(3, (3, 3), impl="cudnn")
    x = jnp.ones((1, 8, 8, 4))
    grouped = layers.Conv(4, (3, 3), feature_group_count=2, impl="patches")
    with pytest.raises(ValueError, match="feature_group_count=1"):
        grouped.init(jax.random.PRNGKey(0), x)
    # auto falls back to XLA's convolution for what patches do not cover.
    auto = layers.Conv(4, (3, 3), feature_group_count=2, impl="auto")
    ref = nn.Conv(4, (3, 3), feature_group_count=2)
    params = ref.init(jax.random.PRNGKey(0), x)
    assert_close(auto.apply(params, x), ref.apply(params, x))


POOL_INPUTS = {
    "random": lambda k: jax.random.normal(k, (2, 7, 9, 3)),
    "ties": lambda k: jnp.round(jax.random.normal(k, (2, 7, 9, 3)) * 2) / 2,  # many equal values per window
    "constant": lambda k: jnp.ones((2, 7, 9, 3)),
    "relu zeros": lambda k: jax.nn.relu(jax.random.normal(k, (2, 8, 8, 3)) - 1.0),
}


@pytest.mark.parametrize("window", [(2, 2), (3, 3), (2, 3)])
@pytest.mark.parametrize("inputs", sorted(POOL_INPUTS))
def test_max_pool_matches_flax_including_ties(inputs, window):
    x = POOL_INPUTS[inputs](jax.random.PRNGKey(0))
    weights = jax.random.normal(jax.random.PRNGKey(1), nn.max_pool(x, window, strides=window).shape)

    def loss(pool):
        return lambda x: jnp.sum(jnp.sin(pool(x)) * weights)

    ref = lambda x: nn.max_pool(x, window, strides=window)
    mine = lambda x: layers.max_pool(x, window, strides=window, impl="patches")
    assert "select_and_scatter_add" not in primitives(jax.grad(loss(mine)), x)
    run = lambda pool: jax.jit(lambda x: (pool(x), jax.grad(loss(pool))(x)))(x)
    # Ties: the whole gradient goes to the first maximum of the window, as XLA's select_and_scatter does.
    jax.tree.map(np.testing.assert_array_equal, run(mine), run(ref))


def test_max_pool_overlapping_windows_use_flax():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 6, 3))
    for padding in ("VALID", "SAME"):
        np.testing.assert_array_equal(
            layers.max_pool(x, (3, 3), strides=(1, 1), padding=padding, impl="patches"),
            nn.max_pool(x, (3, 3), strides=(1, 1), padding=padding),
        )


def test_models_pick_chwn_exactly_where_convolutions_are_patches():
    on_cpu = jax.default_backend() == "cpu"
    assert layers.layout_for("auto") == ("CHWN" if on_cpu else "NHWC")
    assert (layers.layout_for("patches"), layers.layout_for("xla")) == ("CHWN", "NHWC")
    x = jnp.arange(2 * 3 * 4 * 5.0).reshape(2, 3, 4, 5)
    chwn = layers.from_nhwc(x, "CHWN")
    assert chwn.shape == (5, 3, 4, 2) and chwn[4, 2, 3, 1] == x[1, 2, 3, 4]
    np.testing.assert_array_equal(layers.to_nhwc(chwn, "CHWN"), x)
    assert layers.from_nhwc(x, "NHWC") is x and layers.to_nhwc(x, "NHWC") is x
    with pytest.raises(ValueError, match="layout: unknown layout 'NCHW'"):
        layers.from_nhwc(x, "NCHW")
