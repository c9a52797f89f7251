"""Convolution and max-pooling whose forward and backward run at matmul speed on every backend.

XLA:CPU runs a convolution's gradient and a max-pool's (``select_and_scatter``) as slow loops
(Fang et al.'s CNN: a round of 100 clients ~14x slower than the formulation below, see
``python -m experiments.benchmark --model=cnn --conv_impl=xla,auto``). So on CPU a convolution
is explicit image patches (strided slices of the padded input, concatenated along channels)
times the kernel reshaped to a matrix, whose gradient is matmuls plus pads; a max-pool over
non-overlapping windows is a reshape and a max. On GPU and TPU XLA's native convolution (cuDNN
on NVIDIA) stays. Both compute the same functions, so results agree to float rounding and
parameters are interchangeable.

``Conv`` is ``flax.linen.Conv`` (same attributes, parameter names, shapes and initialisation)
with an ``impl`` attribute: ``"auto"`` (patches on CPU, XLA's convolution elsewhere),
``"xla"`` or ``"patches"``. ``max_pool`` is ``flax.linen.max_pool`` with the same choice.

Layouts: flax's ``"NHWC"`` (batch first, channels last) or ``"CHWN"`` (channels first, batch
last; ``Conv(layout="CHWN")``, ``swap_batch_and_channels`` converts). In ``"CHWN"`` the patches
are a ``[K, positions]`` matrix and every product of the convolution and its gradient has the
positions (the long axis) minor in its operands and result, the shapes XLA:CPU's matmuls run
fastest (a Fang et al. CNN client step 1.5x faster than in NHWC). ``max_pool`` and
``crop_for_pool`` take either layout: both keep the first and last axes and work on the
spatial ones between.
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from fljax.types import Array

IMPLS = ("auto", "xla", "patches")
LAYOUTS = ("NHWC", "CHWN")


def _check_impl(impl: str) -> str:
    if impl not in IMPLS:
        raise ValueError(f"impl: unknown implementation {impl!r}; valid: {', '.join(IMPLS)}")
    return impl


def _check_layout(layout: str) -> str:
    if layout not in LAYOUTS:
        raise ValueError(f"layout: unknown layout {layout!r}; valid: {', '.join(LAYOUTS)}")
    return layout


def resolve_impl(impl: str = "auto") -> str:
    """``"xla"`` or ``"patches"``: what ``impl`` means on the default backend (``"auto"``:
    patches on CPU, where XLA's convolution backward is slow; XLA's own convolution elsewhere)."""
    if _check_impl(impl) == "auto":
        return "patches" if jax.default_backend() == "cpu" else "xla"
    return impl


def _dimension_numbers(layout: str, n: int) -> lax.ConvDimensionNumbers:
    """Dimension numbers of ``layout`` for ``n``-dimensional operands: input and output
    ``[B, *spatial, C]`` (NHWC) or ``[C, *spatial, B]`` (CHWN), kernel ``[*window, C_in, C_out]``
    (HWIO) in both."""
    spatial = tuple(range(1, n - 1))
    io = (0, n - 1, *spatial) if layout == "NHWC" else (n - 1, 0, *spatial)
    return lax.ConvDimensionNumbers(io, (n - 1, n - 2, *range(n - 2)), io)


def _patch_layout(lhs_shape, rhs_shape, dimension_numbers) -> Optional[str]:
    """The layout (``LAYOUTS``) that ``dimension_numbers`` describe, ``None`` for any other."""
    given = lax.conv_dimension_numbers(lhs_shape, rhs_shape, dimension_numbers)
    return next((layout for layout in LAYOUTS if given == _dimension_numbers(layout, len(lhs_shape))), None)


def swap_batch_and_channels(x: Array) -> Array:
    """``[B, *spatial, C]`` (NHWC) to ``[C, *spatial, B]`` (CHWN), and back: swaps the first and
    last axes (its own inverse)."""
    return jnp.swapaxes(x, 0, -1)


def layout_for(impl: str = "auto") -> str:
    """The layout fljax's models run their convolutions in: ``"CHWN"`` with patch convolutions
    (CPU), flax's ``"NHWC"`` with XLA's."""
    return "CHWN" if resolve_impl(impl) == "patches" else "NHWC"


def from_nhwc(x: Array, layout: str) -> Array:
    """``x`` (NHWC) in ``layout``."""
    return swap_batch_and_channels(x) if _check_layout(layout) == "CHWN" else x


def to_nhwc(x: Array, layout: str) -> Array:
    """``x`` (in ``layout``) in NHWC; also ``[C, B]`` features to ``[B, C]``. The swap is its own
    inverse, so this is ``from_nhwc`` read the other way."""
    return from_nhwc(x, layout)


def _pads(spatial, window, strides, padding, dilation):
    """``(dilation, [(lo, hi)] pads)`` of ``padding`` (a string or explicit pairs) for ``spatial``."""
    dilation = tuple(dilation or (1,) * len(spatial))
    dilated = [(k - 1) * d + 1 for k, d in zip(window, dilation)]
    pads = lax.padtype_to_pads(spatial, dilated, strides, padding) if isinstance(padding, str) else padding
    return dilation, [tuple(p) for p in pads]


def _window_slices(x: Array, window: Sequence[int], strides: Sequence[int], dilation: Sequence[int]) -> list:
    """One strided slice ``[B, *out_spatial, C]`` of the (already padded) ``x`` per window position,
    positions in row-major order."""
    dilated = [(k - 1) * d + 1 for k, d in zip(window, dilation)]
    out = [(n - k) // s + 1 for n, k, s in zip(x.shape[1:-1], dilated, strides)]
    slices = []
    for offset in itertools.product(*[range(k) for k in window]):
        start = [0, *[o * d for o, d in zip(offset, dilation)], 0]
        limit = [x.shape[0], *[s + (m - 1) * st + 1 for s, m, st in zip(start[1:-1], out, strides)], x.shape[-1]]
        slices.append(lax.slice(x, start, limit, [1, *strides, 1]))
    return slices


def _concat(cols: list) -> Array:
    return cols[0] if len(cols) == 1 else jnp.concatenate(cols, axis=-1)


def image_patches(
    x: Array, window: Sequence[int], strides: Sequence[int], padding, dilation: Optional[Sequence[int]] = None
) -> Array:
    """``[B, *out_spatial, prod(window) * C]`` patches of a channels-last ``x [B, *spatial, C]``.

    Patch features are ordered (window position row-major, then channel), the order of an HWIO
    kernel reshaped to ``[prod(window) * C_in, C_out]``. Built from one strided slice per window
    position, so its transpose (the gradient) is pads and adds, no gather or scatter.
    """
    dilation, pads = _pads(x.shape[1:-1], window, strides, padding, dilation)
    if any(lo or hi for lo, hi in pads):
        x = lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0), *[(lo, hi, 0) for lo, hi in pads], (0, 0, 0)])
    return _concat(_window_slices(x, window, strides, dilation))


def conv_general_dilated(
    lhs: Array,
    rhs: Array,
    window_strides: Sequence[int],
    padding,
    lhs_dilation: Optional[Sequence[int]] = None,
    rhs_dilation: Optional[Sequence[int]] = None,
    dimension_numbers=None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision=None,
    preferred_element_type=None,
    *,
    impl: str = "auto",
) -> Array:
    """``lax.conv_general_dilated`` computed as ``impl`` says (see ``resolve_impl``).

    ``"patches"`` takes channels-last operands (flax's layout: NHWC input, HWIO kernel) or
    ``"CHWN"`` ones (``[C, *spatial, B]`` input and output, HWIO kernel) with no input dilation
    and no feature or batch groups; ``"auto"`` falls back to XLA's convolution for anything
    else, an explicit ``"patches"`` raises.
    """
    resolved = resolve_impl(impl)
    conv = functools.partial(
        lax.conv_general_dilated,
        lhs,
        rhs,
        window_strides,
        padding,
        lhs_dilation,
        rhs_dilation,
        dimension_numbers,
        feature_group_count,
        batch_group_count,
        precision,
        preferred_element_type,
    )
    if resolved == "xla":
        return conv()
    layout = _patch_layout(lhs.shape, rhs.shape, dimension_numbers)
    unsupported = [
        name
        for name, bad in (
            ("channels-last or CHWN dimension_numbers", layout is None),
            ("lhs_dilation of 1", any(d != 1 for d in (lhs_dilation or ()))),
            ("feature_group_count=1", feature_group_count != 1),
            ("batch_group_count=1", batch_group_count != 1),
        )
        if bad
    ]
    if unsupported and impl == "auto":
        return conv()
    if unsupported:
        raise ValueError(f"impl='patches' needs {', '.join(unsupported)}; use impl='xla' (or 'auto')")
    window = tuple(rhs.shape[:-2])
    dilation, pads = _pads(lhs.shape[1:-1], window, window_strides, padding, rhs_dilation)
    if any(lo or hi for lo, hi in pads):  # padded outside the custom gradient: its transpose is a slice
        lhs = lax.pad(lhs, jnp.zeros((), lhs.dtype), [(0, 0, 0), *[(lo, hi, 0) for lo, hi in pads], (0, 0, 0)])
    patch_conv = _patch_conv_chwn if layout == "CHWN" else _patch_conv
    return patch_conv(lhs, rhs, tuple(window_strides), tuple(dilation), precision, preferred_element_type)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _patch_conv(x: Array, kernel: Array, strides, dilation, precision, preferred_element_type) -> Array:
    """VALID convolution of the (padded) channels-last ``x`` with the HWIO ``kernel``: image
    patches ``[..., K]`` times the kernel as a ``[K, N]`` matrix.

    Its gradient: the input's is the patches' gradient (the output gradient times the kernel's
    transpose) scattered back by the patches' own transpose (pads and adds); the kernel's
    contracts patches and output gradient over the output positions. For a one-channel input
    (a first layer) that product takes the patches built directly as ``[K, positions]`` (strided
    slices of the input stacked, no transpose: 0.8 ms of a 10 ms CNN client step, jax 0.10.2);
    otherwise the smaller of patches and output gradient (patches when K < N) is the one XLA:CPU
    transposes.
    """
    return _patch_conv_fwd(x, kernel, strides, dilation, precision, preferred_element_type)[0]


def _patch_conv_fwd(x, kernel, strides, dilation, precision, preferred_element_type):
    window, cout = kernel.shape[:-2], kernel.shape[-1]
    patches = _concat(_window_slices(x, window, strides, dilation))
    y = lax.dot_general(
        patches,
        kernel.reshape(-1, cout),
        (((patches.ndim - 1,), (0,)), ((), ())),
        precision=precision,
        preferred_element_type=preferred_element_type,
    )
    return y, (x, None if x.shape[-1] == 1 else patches, kernel)


def _patch_conv_bwd(strides, dilation, precision, preferred_element_type, residual, g):
    x, patches, kernel = residual
    window, cout = kernel.shape[:-2], kernel.shape[-1]
    matrix = kernel.reshape(-1, cout)
    g2 = g.reshape(-1, cout)
    if patches is None:  # one input channel: [K, positions] patches are the strided slices stacked
        columns = jnp.stack(_window_slices(x, window, strides, dilation)).reshape(matrix.shape[0], -1)
        d_kernel = lax.dot_general(columns, g2, (((1,), (0,)), ((), ())), precision=precision)
    else:
        p2 = patches.reshape(-1, matrix.shape[0])
        if matrix.shape[0] < cout:
            d_kernel = lax.dot_general(g2, p2, (((0,), (0,)), ((), ())), precision=precision).T
        else:
            d_kernel = lax.dot_general(p2, g2, (((0,), (0,)), ((), ())), precision=precision)
    d_patches = lax.dot_general(g, matrix, (((g.ndim - 1,), (1,)), ((), ())), precision=precision).astype(x.dtype)
    _, scatter = jax.vjp(lambda x: _concat(_window_slices(x, window, strides, dilation)), x)
    (d_x,) = scatter(d_patches)
    return d_x, d_kernel.reshape(kernel.shape).astype(kernel.dtype)


_patch_conv.defvjp(_patch_conv_fwd, _patch_conv_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _patch_conv_chwn(x: Array, kernel: Array, strides, dilation, precision, preferred_element_type) -> Array:
    """VALID convolution of the (padded) CHWN ``x [C, *spatial, B]`` with the HWIO ``kernel``:
    the kernel as a ``[K, N]`` matrix contracted with the ``[K, positions]`` patches (one
    strided slice per window position, stacked), giving ``[N, *out, B]``.

    Its gradient: the kernel's contracts the ``[N, positions]`` output gradient with the patches
    over the positions, as the ``[K, N]`` product when N is a multiple of 16, else as ``[N, K]``
    transposed after an optimization barrier (XLA would otherwise fold the transpose into the
    product): measured on one core (YNNPACK, jax 0.10.2), the ``[K, N]`` form is 1.3-2x faster
    for N = 16, 64 (LeNet-5, ResNet-20) and 1.5x slower for N = 50 (Fang et al.'s CNN). The
    input's gradient is the kernel matrix times the output gradient, ``[K, positions]``,
    scattered back by the slices' transpose (pads and adds).
    """
    return _patch_conv_chwn_fwd(x, kernel, strides, dilation, precision, preferred_element_type)[0]


def _chwn_patches(x: Array, window, strides, dilation) -> Array:
    """``[prod(window), C, *out, B]``: one strided slice of ``x [C, *spatial, B]`` per window
    position, row-major (reshaped to ``[K, positions]`` it matches the HWIO kernel's rows)."""
    return jnp.stack(_window_slices(x, window, strides, dilation))


def _patch_conv_chwn_fwd(x, kernel, strides, dilation, precision, preferred_element_type):
    window, cout = kernel.shape[:-2], kernel.shape[-1]
    patches = _chwn_patches(x, window, strides, dilation)
    out = patches.shape[2:]
    patches = patches.reshape(-1, math.prod(out))
    # [N, K] x [K, positions] with the kernel transposed first (the barrier keeps XLA from folding
    # the transpose into the product): a YNNPACK product run in place, not an Eigen one run
    # asynchronously (measured: the CNN round 263 -> 249 ms, ResNet-20 within noise).
    kernel_t = lax.optimization_barrier(kernel.reshape(-1, cout).T)
    y = lax.dot_general(
        kernel_t, patches, (((1,), (0,)), ((), ())), precision=precision, preferred_element_type=preferred_element_type
    )
    return y.reshape(cout, *out), (x, patches, kernel)


def _patch_conv_chwn_bwd(strides, dilation, precision, preferred_element_type, residual, g):
    x, patches, kernel = residual
    window, cout = kernel.shape[:-2], kernel.shape[-1]
    g2 = g.reshape(cout, -1)
    if cout % 16 == 0:  # N fills whole vectors: the [K, N] product is the faster one (measured)
        d_kernel = lax.dot_general(patches, g2, (((1,), (1,)), ((), ())), precision=precision)
    else:
        d_kernel_t = lax.dot_general(g2, patches, (((1,), (1,)), ((), ())), precision=precision)
        d_kernel = lax.optimization_barrier(d_kernel_t).T
    d_patches = lax.dot_general(kernel.reshape(-1, cout), g2, (((1,), (0,)), ((), ())), precision=precision)
    _, scatter = jax.vjp(lambda x: _chwn_patches(x, window, strides, dilation), x)
    (d_x,) = scatter(d_patches.reshape(math.prod(window), x.shape[0], *g.shape[1:]).astype(x.dtype))
    return d_x, d_kernel.reshape(kernel.shape).astype(kernel.dtype)


_patch_conv_chwn.defvjp(_patch_conv_chwn_fwd, _patch_conv_chwn_bwd)


def crop_for_pool(x: Array, kernel_size: Sequence[int], window: Sequence[int]) -> Array:
    """``x [B, *spatial, C]`` (or CHWN ``[C, *spatial, B]``) without the trailing rows (and
    columns) that a stride-1 VALID convolution of ``kernel_size`` followed by a VALID
    non-overlapping max-pool of ``window`` never uses: the convolution's last outputs that do
    not fill a pooling window are dropped by the pool, so they need not be computed. Values and
    gradients are unchanged (the dropped outputs have gradient zero, and so do the cropped
    inputs); Fang et al.'s CNN on 28x28 inputs computes 10x10 instead of 11x11 outputs in its
    second convolution (17% of its FLOPs)."""
    keep = []
    for n, k, w in zip(x.shape[1:-1], kernel_size, window):
        used = (n - k + 1) // w * w
        keep.append(used + k - 1 if used > 0 else n)
    return x[(slice(None), *[slice(0, m) for m in keep])]


class Conv(nn.Conv):
    """``flax.linen.Conv`` computed at matmul speed on CPU (see the module docstring).

    Same attributes, parameter names (``kernel`` ``[*kernel_size, C_in, C_out]``, ``bias``),
    initialisation and results as ``flax.linen.Conv``, plus ``impl``: ``"auto"`` (default:
    patches times a matmul on CPU, XLA's convolution on GPU/TPU), ``"xla"`` or ``"patches"``;
    and ``layout``: ``"NHWC"`` (flax's) or ``"CHWN"`` (inputs and outputs ``[C, *spatial, B]``,
    the same kernel; one batch axis, zero padding, no input dilation, masks or feature groups).

    Examples:
      >>> conv = fljax.layers.Conv(32, (3, 3), padding="SAME")
      >>> x = jnp.ones((2, 8, 8, 1))  # [B, H, W, C]
      >>> conv.apply(conv.init(jax.random.PRNGKey(0), x), x).shape
      (2, 8, 8, 32)
      >>> chwn = fljax.layers.Conv(32, (3, 3), padding="SAME", layout="CHWN")
      >>> x = fljax.layers.swap_batch_and_channels(x)  # [C, H, W, B]
      >>> chwn.apply(chwn.init(jax.random.PRNGKey(0), x), x).shape
      (32, 8, 8, 2)
    """

    impl: str = "auto"
    layout: str = "NHWC"

    @nn.compact
    def __call__(self, inputs: Array) -> Array:
        if self.layout == "NHWC":
            return super().__call__(inputs)
        kernel_size = (self.kernel_size,) if isinstance(self.kernel_size, int) else tuple(self.kernel_size)
        unsupported = [
            name
            for name, bad in (
                (f"inputs [C, *spatial, B] of rank {len(kernel_size) + 2}", inputs.ndim != len(kernel_size) + 2),
                ("zero padding", isinstance(self.padding, str) and self.padding.upper() not in ("SAME", "VALID")),
                ("input_dilation=1", any(d != 1 for d in _broadcast(self.input_dilation, len(kernel_size)))),
                ("feature_group_count=1", self.feature_group_count != 1),
                ("shared_weights=True and no mask", not self.shared_weights or self.mask is not None),
            )
            if bad
        ]
        if unsupported:
            raise ValueError(f"layout='CHWN' needs {', '.join(unsupported)}; use layout='NHWC'")
        kernel = self.param(
            "kernel", self.kernel_init, (*kernel_size, inputs.shape[0], self.features), self.param_dtype
        )
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
        inputs, kernel, bias = self.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
        padding = (
            self.padding.upper()
            if isinstance(self.padding, str)
            else nn.linear.canonicalize_padding(self.padding, len(kernel_size))
        )
        y = self.conv_general_dilated(
            inputs,
            kernel,
            _broadcast(self.strides, len(kernel_size)),
            padding,
            rhs_dilation=_broadcast(self.kernel_dilation, len(kernel_size)),
            dimension_numbers=_dimension_numbers("CHWN", inputs.ndim),
            precision=self.precision,
        )
        return y if bias is None else y + bias.reshape(-1, *(1,) * (y.ndim - 1))

    def __post_init__(self):
        _check_impl(self.impl)
        _check_layout(self.layout)
        own = self.conv_general_dilated
        if own is None or (isinstance(own, functools.partial) and own.func is conv_general_dilated):
            # Set before flax binds the module (its fields are frozen after); re-set on clone(impl=...).
            object.__setattr__(self, "conv_general_dilated", functools.partial(conv_general_dilated, impl=self.impl))
        super().__post_init__()


class GroupNorm(nn.GroupNorm):
    """``flax.linen.GroupNorm`` with a ``layout``: ``"NHWC"`` (flax's) or ``"CHWN"`` (inputs
    ``[C, *spatial, B]``: statistics per example and group of ``C / num_groups`` channels, over
    the group's channels and the spatial axes). Same parameters (``scale``, ``bias``, ``[C]``)
    and results; CHWN takes ``num_groups`` (no ``group_size``, mask, ``reduction_axes`` or
    ``axis_name``) and computes the variance as flax does by default (E[x^2] - E[x]^2).

    Examples:
      >>> norm = fljax.layers.GroupNorm(num_groups=2, layout="CHWN")
      >>> x = jnp.arange(32.0).reshape(4, 2, 2, 2)  # [C, H, W, B]
      >>> y = norm.apply(norm.init(jax.random.PRNGKey(0), x), x)
      >>> print(jnp.round(y[:2, ..., 0].mean(), 4), jnp.round(y[:2, ..., 0].std(), 3))
      0.0 1.0
    """

    layout: str = "NHWC"

    @nn.compact
    def __call__(self, x: Array, *, mask=None) -> Array:
        if self.layout == "NHWC":
            return super().__call__(x, mask=mask)
        unsupported = [
            name
            for name, bad in (
                ("num_groups (not group_size)", self.num_groups is None or self.group_size is not None),
                ("no mask", mask is not None),
                ("no reduction_axes", self.reduction_axes is not None),
                ("no axis_name", self.axis_name is not None),
                ("use_fast_variance=True", not self.use_fast_variance),
            )
            if bad
        ]
        if unsupported:
            raise ValueError(f"layout='CHWN' needs {', '.join(unsupported)}; use layout='NHWC'")
        channels, groups = x.shape[0], self.num_groups
        if groups <= 0 or channels % groups:
            raise ValueError(f"num_groups: {groups} does not divide the number of channels ({channels})")
        dtype = jnp.promote_types(self.dtype or x.dtype, jnp.float32)
        grouped = x.astype(dtype).reshape(groups, channels // groups, *x.shape[1:])
        axes = tuple(range(1, grouped.ndim - 1))  # the group's channels and the spatial axes
        mean = grouped.mean(axes, keepdims=True)
        var = jnp.maximum(0.0, (grouped * grouped).mean(axes, keepdims=True) - mean * mean)
        y = ((grouped - mean) * lax.rsqrt(var + self.epsilon)).reshape(x.shape)
        per_channel = (channels,) + (1,) * (x.ndim - 1)
        if self.use_scale:
            y = y * self.param("scale", self.scale_init, (channels,), self.param_dtype).reshape(per_channel)
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, (channels,), self.param_dtype).reshape(per_channel)
        return y.astype(self.dtype or x.dtype)

    def __post_init__(self):
        _check_layout(self.layout)
        super().__post_init__()


def _broadcast(value, n: int) -> tuple:
    """A per-spatial-axis setting (``None`` or an int for all ``n`` axes, else a sequence) as a tuple."""
    value = 1 if value is None else value
    return (value,) * n if isinstance(value, int) else tuple(value)


def _first_max_pool(x: Array, window: Sequence[int]) -> Array:
    """Non-overlapping max-pool of ``x [B, *spatial, C]`` or ``[C, *spatial, B]`` (trailing rows
    that do not fill a window dropped, like VALID pooling) whose gradient goes to the first
    maximum of each window in row-major order, as XLA's ``select_and_scatter``
    (``flax.linen.max_pool``'s gradient) breaks ties."""
    spatial = x.shape[1:-1]
    out = [n // k for n, k in zip(spatial, window)]
    x = x[(slice(None), *[slice(0, m * k) for m, k in zip(out, window)])]
    shape = [x.shape[0]]
    for m, k in zip(out, window):
        shape += [m, k]
    x = x.reshape(*shape, x.shape[-1])  # [B, m1, k1, m2, k2, ..., C]
    window_axes = tuple(2 + 2 * i for i in range(len(window)))
    return _window_max(x, window_axes)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _window_max(x: Array, axes: tuple) -> Array:
    return jnp.max(x, axis=axes)


def _window_max_fwd(x, axes):
    y = jnp.max(x, axis=axes)
    return y, (x, y)


def _window_max_bwd(axes, residual, g):
    x, y = residual
    # Window positions in row-major order; each takes the gradient where it holds the window's
    # maximum and no earlier position did.
    offsets = list(itertools.product(*[range(x.shape[a]) for a in axes]))
    taken = jnp.zeros(y.shape, bool)
    grads = []
    for offset in offsets:
        index = [slice(None)] * x.ndim
        for a, o in zip(axes, offset):
            index[a] = o
        selected = (x[tuple(index)] == y) & ~taken
        taken = taken | selected
        grads.append(jnp.where(selected, g, jnp.zeros((), g.dtype)))
    # [prod(k), B, m1, m2, ..., C] -> [B, m1, k1, m2, k2, ..., C]
    stacked = jnp.stack(grads).reshape(*[x.shape[a] for a in axes], *y.shape)
    k = len(axes)
    perm = [k]
    for i in range(k):
        perm += [k + 1 + i, i]
    perm.append(x.ndim - 1)
    return (jnp.transpose(stacked, perm),)


_window_max.defvjp(_window_max_fwd, _window_max_bwd)


def max_pool(
    x: Array, window_shape: Sequence[int], strides: Optional[Sequence[int]] = None, padding="VALID", impl: str = "auto"
) -> Array:
    """``flax.linen.max_pool`` (channels-last ``x``, or CHWN: the pool works on the axes between
    the first and the last), with the same values and gradients.

    On CPU (``impl`` ``"auto"`` or ``"patches"``), non-overlapping VALID windows (``strides``
    equal to ``window_shape``) are a reshape and a max whose gradient is a select, instead of
    XLA's ``select_and_scatter``; other configurations use ``flax.linen.max_pool``.
    """
    window_shape = tuple(window_shape)
    strides = window_shape if strides is None else tuple(strides)
    non_overlapping = strides == window_shape and padding == "VALID" and x.ndim == len(window_shape) + 2
    if resolve_impl(impl) == "patches" and non_overlapping:
        return _first_max_pool(x, window_shape)
    return nn.max_pool(x, window_shape, strides=strides, padding=padding)
