"""Numerical precision of client training: matmul precision and bfloat16 mixed precision.

Both act on local training only; the server step, the aggregation rules (whose distance and
Gram matmuls ask for ``Precision.HIGHEST`` themselves) and evaluation stay in float32.

* ``with_matmul_precision(client_update, "tf32")`` traces the client's training under
  ``jax.default_matmul_precision``, so every matmul and convolution of its forward and backward
  pass carries that precision: ``fp32`` (full float32 passes), ``tf32`` (TensorFloat-32 on
  NVIDIA Ampere and later, 3 bf16 passes on TPU), ``bf16`` (one bfloat16 pass, the TPU default),
  ``default`` (no override: the backend's default; on recent NVIDIA GPUs that is TF32). XLA:CPU
  computes float32 matmuls in full float32 whatever the setting.
* ``mixed_precision(apply_fn)`` runs the model in bfloat16: the float32 master params and the
  inputs are cast to bfloat16 inside the forward pass and the logits cast back to float32 for the
  loss, so gradients (the cast's transpose) and the client's update stay float32.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp

from fljax.types import Array, PyTree

PRECISIONS = {"default": None, "fp32": "float32", "tf32": "tensorfloat32", "bf16": "bfloat16"}
"""``--precision`` names and the ``jax.default_matmul_precision`` value each sets."""


def check_precision(precision: str) -> str:
    """Returns ``precision`` if it is a key of ``PRECISIONS``, else raises ``ValueError``."""
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise ValueError(f"precision: unknown matmul precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    return precision


def with_matmul_precision(client_update: Callable, precision: str) -> Callable:
    """``client_update`` traced under ``jax.default_matmul_precision(PRECISIONS[precision])``.

    The precision is fixed at trace time into every ``dot_general`` / convolution of the client's
    training (and of its gradient), so it holds inside ``jit``, ``scan`` and ``vmap``.

    Examples:
      >>> import optax
      >>> loss_fn = fljax.classification_loss(lambda params, x: x @ params)
      >>> update = with_matmul_precision(fljax.fedavg(loss_fn, optax.sgd(0.1), local_steps=5), "bf16")
    """
    value = PRECISIONS[check_precision(precision)]
    if value is None:
        return client_update

    @functools.wraps(client_update)
    def update(*args, **kwargs):
        with jax.default_matmul_precision(value):
            return client_update(*args, **kwargs)

    return update


def _cast_floats(tree: PyTree, dtype) -> PyTree:
    return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


def mixed_precision(
    apply_fn: Callable[[PyTree, Array], Array], compute_dtype=jnp.bfloat16, output_dtype=jnp.float32
) -> Callable[[PyTree, Array], Array]:
    """``apply_fn`` computed in ``compute_dtype`` with float32 master params.

    Floating params and inputs are cast to ``compute_dtype`` before the forward pass and the
    outputs cast to ``output_dtype`` after it, so a loss built on it (``classification_loss``)
    reduces in float32 and ``jax.grad`` returns float32 gradients for the float32 params.

    References:
      Micikevicius et al., "Mixed Precision Training", ICLR 2018.

    Examples:
      >>> model = fljax.models.get("mlp", (8, 8, 1), 10)
      >>> loss_fn = fljax.classification_loss(mixed_precision(model.apply))
    """

    @functools.wraps(apply_fn)
    def apply(params, x):
        return apply_fn(_cast_floats(params, compute_dtype), _cast_floats(x, compute_dtype)).astype(output_dtype)

    return apply
