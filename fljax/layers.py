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
"""

from __future__ import annotations

import functools
import itertools
from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from fljax.types import Array

IMPLS = ("auto", "xla", "patches")


def _check_impl(impl: str) -> str:
    if impl not in IMPLS:
        raise ValueError(f"impl: unknown implementation {impl!r}; valid: {', '.join(IMPLS)}")
    return impl


def resolve_impl(impl: str = "auto") -> str:
    """``"xla"`` or ``"patches"``: what ``impl`` means on the default backend (``"auto"``:
    patches on CPU, where XLA's convolution backward is slow; XLA's own convolution elsewhere)."""
    if _check_impl(impl) == "auto":
        return "patches" if jax.default_backend() == "cpu" else "xla"
    return impl


def _channels_last(lhs_shape, rhs_shape, dimension_numbers) -> bool:
    """Whether ``dimension_numbers`` put channels last (NHWC input, HWIO kernel, NHWC output)."""
    n = len(lhs_shape)
    expected = lax.ConvDimensionNumbers((0, n - 1, *range(1, n - 1)), (n - 1, n - 2, *range(n - 2)),
                                        (0, n - 1, *range(1, n - 1)))
    return lax.conv_dimension_numbers(lhs_shape, rhs_shape, dimension_numbers) == expected


def image_patches(x: Array, window: Sequence[int], strides: Sequence[int], padding,
                  dilation: Optional[Sequence[int]] = None) -> Array:
    """``[B, *out_spatial, prod(window) * C]`` patches of a channels-last ``x [B, *spatial, C]``.

    Patch features are ordered (window position row-major, then channel), the order of an HWIO
    kernel reshaped to ``[prod(window) * C_in, C_out]``. Built from one strided slice per window
    position, so its transpose (the gradient) is pads and adds, no gather or scatter.
    """
    spatial = x.shape[1:-1]
    dilation = tuple(dilation or (1,) * len(spatial))
    dilated = [(k - 1) * d + 1 for k, d in zip(window, dilation)]
    pads = lax.padtype_to_pads(spatial, dilated, strides, padding) if isinstance(padding, str) else padding
    if any(lo or hi for lo, hi in pads):
        x = lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0), *[(lo, hi, 0) for lo, hi in pads], (0, 0, 0)])
    padded = x.shape[1:-1]
    out = [(n - k) // s + 1 for n, k, s in zip(padded, dilated, strides)]
    cols = []
    for offset in itertools.product(*[range(k) for k in window]):
        start = [0, *[o * d for o, d in zip(offset, dilation)], 0]
        limit = [x.shape[0], *[s + (m - 1) * st + 1 for s, m, st in zip(start[1:-1], out, strides)], x.shape[-1]]
        cols.append(lax.slice(x, start, limit, [1, *strides, 1]))
    return cols[0] if len(cols) == 1 else jnp.concatenate(cols, axis=-1)


def conv_general_dilated(lhs: Array, rhs: Array, window_strides: Sequence[int], padding,
                         lhs_dilation: Optional[Sequence[int]] = None, rhs_dilation: Optional[Sequence[int]] = None,
                         dimension_numbers=None, feature_group_count: int = 1, batch_group_count: int = 1,
                         precision=None, preferred_element_type=None, *, impl: str = "auto") -> Array:
    """``lax.conv_general_dilated`` computed as ``impl`` says (see ``resolve_impl``).

    ``"patches"`` takes channels-last operands (flax's layout: NHWC input, HWIO kernel) with no
    input dilation and no feature or batch groups; ``"auto"`` falls back to XLA's convolution
    for anything else, an explicit ``"patches"`` raises.
    """
    resolved = resolve_impl(impl)
    conv = functools.partial(lax.conv_general_dilated, lhs, rhs, window_strides, padding, lhs_dilation,
                             rhs_dilation, dimension_numbers, feature_group_count, batch_group_count, precision,
                             preferred_element_type)
    if resolved == "xla":
        return conv()
    unsupported = [name for name, bad in (
        ("channels-last dimension_numbers", not _channels_last(lhs.shape, rhs.shape, dimension_numbers)),
        ("lhs_dilation of 1", any(d != 1 for d in (lhs_dilation or ()))),
        ("feature_group_count=1", feature_group_count != 1),
        ("batch_group_count=1", batch_group_count != 1)) if bad]
    if unsupported and impl == "auto":
        return conv()
    if unsupported:
        raise ValueError(f"impl='patches' needs {', '.join(unsupported)}; use impl='xla' (or 'auto')")
    window, cout = rhs.shape[:-2], rhs.shape[-1]
    patches = image_patches(lhs, window, window_strides, padding, rhs_dilation)
    kernel = rhs.reshape(-1, cout)  # HWIO rows in the patches' feature order
    return _patch_matmul(patches, kernel, precision, preferred_element_type)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _patch_matmul(patches: Array, kernel: Array, precision, preferred_element_type) -> Array:
    """``patches [..., K] @ kernel [K, N]``; its kernel gradient contracts the two large
    operands so that the smaller of them (patches when K < N, else the output gradient) is the
    one XLA:CPU transposes (measured ~4% of a CNN client step, jax 0.10.2)."""
    return lax.dot_general(patches, kernel, (((patches.ndim - 1,), (0,)), ((), ())), precision=precision,
                           preferred_element_type=preferred_element_type)


def _patch_matmul_fwd(patches, kernel, precision, preferred_element_type):
    return _patch_matmul(patches, kernel, precision, preferred_element_type), (patches, kernel)


def _patch_matmul_bwd(precision, preferred_element_type, residual, g):
    patches, kernel = residual
    d_patches = lax.dot_general(g, kernel, (((g.ndim - 1,), (1,)), ((), ())), precision=precision)
    rows = tuple(range(patches.ndim - 1))
    if kernel.shape[0] < kernel.shape[1]:
        d_kernel = lax.dot_general(g, patches, ((rows, rows), ((), ())), precision=precision).T
    else:
        d_kernel = lax.dot_general(patches, g, ((rows, rows), ((), ())), precision=precision)
    return d_patches.astype(patches.dtype), d_kernel.astype(kernel.dtype)


_patch_matmul.defvjp(_patch_matmul_fwd, _patch_matmul_bwd)


class Conv(nn.Conv):
    """``flax.linen.Conv`` computed at matmul speed on CPU (see the module docstring).

    Same attributes, parameter names (``kernel`` ``[*kernel_size, C_in, C_out]``, ``bias``),
    initialisation and results as ``flax.linen.Conv``, plus ``impl``: ``"auto"`` (default:
    patches times a matmul on CPU, XLA's convolution on GPU/TPU), ``"xla"`` or ``"patches"``.

    Examples:
      >>> y = fljax.layers.Conv(32, (3, 3), padding="SAME").apply(params, x)  # x: [B, H, W, C]
    """

    impl: str = "auto"

    def __post_init__(self):
        _check_impl(self.impl)
        own = self.conv_general_dilated
        if own is None or (isinstance(own, functools.partial) and own.func is conv_general_dilated):
            # Set before flax binds the module (its fields are frozen after); re-set on clone(impl=...).
            object.__setattr__(self, "conv_general_dilated", functools.partial(conv_general_dilated, impl=self.impl))
        super().__post_init__()


def _first_max_pool(x: Array, window: Sequence[int]) -> Array:
    """Non-overlapping max-pool of ``x [B, *spatial, C]`` (trailing rows that do not fill a
    window dropped, like VALID pooling) whose gradient goes to the first maximum of each window
    in row-major order, as XLA's ``select_and_scatter`` (``flax.linen.max_pool``'s gradient)
    breaks ties."""
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


def max_pool(x: Array, window_shape: Sequence[int], strides: Optional[Sequence[int]] = None, padding="VALID",
             impl: str = "auto") -> Array:
    """``flax.linen.max_pool`` (channels-last ``x``), with the same values and gradients.

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
