"""Local training of one client, and how a cohort of clients is executed.

A client update is a pure function ``update(params, data, key, transform) -> delta`` returning
``local - global`` (a pytree shaped like ``params``). ``transform(x, y, mask, key) -> (x, y)`` is
applied to every training batch, ``mask`` marking its real examples (the round passes a
malicious client's data attack there, which poisons a share of the real examples only).
Clients hold different amounts of data: ``ClientData.indices`` is padded and
``ClientData.count`` says how many entries are real; padded entries are masked out of every
loss and gradient.
"""

from __future__ import annotations

import math
import os
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax
from jax import lax

from fljax.types import Array, PyTree

EXECUTIONS = ("auto", "vmap", "chunked", "sequential", "parallel")


class Batch(NamedTuple):
    """A batch of examples; ``mask`` marks the real ones (padding must not count)."""

    x: Array
    y: Array
    mask: Array


class ClientData(NamedTuple):
    """One client's data: indices into the shared example arrays, padded past ``count``."""

    x: Array
    y: Array
    indices: Array
    count: Array


LossFn = Callable[[PyTree, Batch, Array], Array]
ClientUpdate = Callable[..., PyTree]


def identity_transform(x: Array, y: Array, mask: Array, key: Array) -> tuple[Array, Array]:
    return x, y


def label_mask(labels: Array, mask: Array) -> Array:
    """Which labels count: those of real examples (``mask [B]``) that are >= 0. ``labels`` is
    ``[B]`` (one class per example) or ``[B, T, ...]`` (one per token of a sequence model, whose
    logits are ``[B, T, ..., classes]``); negative labels mark padding tokens."""
    return mask.reshape(mask.shape + (1,) * (labels.ndim - mask.ndim)) & (labels >= 0)


def classification_loss(apply_fn: Callable[[PyTree, Array], Array]) -> LossFn:
    """Softmax cross-entropy averaged over the labels that count (``label_mask``): the real
    (``mask``) examples of a batch, or for per-token labels ``[B, T]`` the real tokens (labels
    >= 0) of the real examples, each token weighing the same.

    A batch with no real example has loss 0 and gradient 0.
    """

    def loss_fn(params, batch: Batch, key=None):
        logits = apply_fn(params, batch.x)
        valid = label_mask(batch.y, batch.mask)
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(valid, batch.y, 0))
        return jnp.sum(jnp.where(valid, losses, 0.0)) / jnp.maximum(jnp.sum(valid.astype(losses.dtype)), 1.0)

    return loss_fn


def fedsgd(loss_fn: LossFn, optimizer: Optional[optax.GradientTransformation] = None) -> ClientUpdate:
    """FedSGD: one gradient on all of the client's data, passed through ``optimizer`` once.

    With the default ``optax.sgd(1.0)`` the client sends ``-grad``, so a server SGD step of
    learning rate eta on the mean is McMahan et al.'s FedSGD with learning rate eta.

    References:
      McMahan et al., "Communication-Efficient Learning of Deep Networks from Decentralized
      Data", AISTATS 2017.
    """
    optimizer = optax.sgd(1.0) if optimizer is None else optimizer

    def update(params, data: ClientData, key, transform=identity_transform):
        k_data, k_loss = jax.random.split(key)
        mask = jnp.arange(data.indices.shape[0]) < data.count
        x, y = transform(data.x[data.indices], data.y[data.indices], mask, k_data)
        grads = jax.grad(loss_fn)(params, Batch(x, y, mask), k_loss)
        delta, _ = optimizer.update(grads, optimizer.init(params), params)
        return delta

    return update


def fedavg(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    *,
    local_steps: Optional[int] = None,
    local_epochs: Optional[int] = None,
    batch_size: int = 32,
) -> ClientUpdate:
    """FedAvg: ``local_steps`` steps (or ``local_epochs`` epochs) of minibatch training.

    Each epoch visits the client's examples in a fresh random order (a permutation of its real
    examples only); a step takes the next ``batch_size`` of them (the last batch of an epoch may
    be short, its missing entries masked). With ``local_steps`` the client runs exactly that
    many steps, wrapping into new epochs as needed; with ``local_epochs`` a client with n
    examples runs ``E * ceil(n / B)`` steps, and the scan runs to the largest client's count
    with later steps masked (no-ops). Returns ``local - global``.

    References:
      McMahan et al., "Communication-Efficient Learning of Deep Networks from Decentralized
      Data", AISTATS 2017.
    """
    if (local_steps is None) == (local_epochs is None):
        raise ValueError("fedavg: give exactly one of local_steps or local_epochs (each an integer >= 1)")
    for name, value in (("local_steps", local_steps), ("local_epochs", local_epochs), ("batch_size", batch_size)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"fedavg: {name} must be an integer >= 1, got {value!r}")
    grad_fn = jax.grad(loss_fn)

    def update(params, data: ClientData, key, transform=identity_transform):
        width = data.indices.shape[0]
        count = data.count
        steps_per_epoch = jnp.maximum((count + batch_size - 1) // batch_size, 1)
        if local_steps is not None:
            total, active_steps = local_steps, local_steps
        else:
            total = local_epochs * max(1, math.ceil(width / batch_size))
            active_steps = local_epochs * steps_per_epoch
        k_perm, k_data, k_loss = jax.random.split(key, 3)
        real = jnp.arange(width) < count
        # Steps never reach past position local_steps * batch_size of an epoch's order: only that
        # prefix is drawn, with top_k (the first entries of the same stable argsort, ~10x faster on
        # CPU than sorting a client's 600 keys), when it is a small part of the order.
        prefix = width if local_steps is None else min(width, local_steps * batch_size)

        def epoch_order(epoch):  # a fresh permutation of the real examples (padding sorts last)
            keys = jnp.where(real, jax.random.uniform(jax.random.fold_in(k_perm, epoch), (width,)), 2.0)
            return lax.top_k(-keys, prefix)[1] if 4 * prefix <= width else jnp.argsort(keys)[:prefix]

        def step(carry, t):
            p, opt_state, order = carry
            epoch, b = t // steps_per_epoch, t % steps_per_epoch
            # Drawn at the first step of each epoch only (a real branch under sequential execution).
            order = lax.cond(b == 0, lambda: epoch_order(epoch), lambda: order)
            pos = b * batch_size + jnp.arange(batch_size)
            mask = pos < count
            idx = data.indices[order[jnp.minimum(pos, prefix - 1)]]
            x, y = transform(data.x[idx], data.y[idx], mask, jax.random.fold_in(k_data, t))
            grads = grad_fn(p, Batch(x, y, mask), jax.random.fold_in(k_loss, t))
            upd, new_opt_state = optimizer.update(grads, opt_state, p)
            return (optax.apply_updates(p, upd), new_opt_state, order), None

        def masked_step(carry, t):  # E epochs: steps past this client's E * ceil(n / B) are no-ops
            return lax.cond(t < active_steps, step, lambda c, _: (c, None), carry, t)

        body = step if local_steps is not None else masked_step
        start = (params, optimizer.init(params), jnp.arange(prefix))
        (local, _, _), _ = lax.scan(body, start, jnp.arange(total))
        # A client with no data sends a zero update (selected once here, not at every step).
        # (a literal 0, not zeros_like: in a program with two pmaps, e.g. a targeted adaptive
        # attack's, params can carry the first one's mesh, which zeros_like would copy into the
        # second one's trace, where JAX refuses it)
        return jax.tree.map(lambda a, b: jnp.where(count > 0, a - b, 0), local, params)

    return update


def default_execution() -> str:
    """The fastest strategy measured on each backend (``experiments/benchmark.py``,
    ``experiments/device_check.py``): ``vmap`` on GPU/TPU; on CPU ``parallel`` when
    ``use_cpu_cores`` exposed several cores as devices (one sequential stream of clients per
    core), else ``sequential``."""
    if jax.default_backend() != "cpu":
        return "vmap"
    return "parallel" if jax.local_device_count() > 1 else "sequential"


def resolve_execution(execution: str) -> str:
    """``execution``, with ``auto`` replaced by ``default_execution()``."""
    return default_execution() if execution == "auto" else execution


def use_cpu_cores(count: Optional[int] = None) -> None:
    """Exposes ``count`` CPU cores (default: all this process may use) as separate JAX devices,
    so that ``execution="parallel"`` trains one sequential stream of clients per core.

    XLA's CPU backend runs one small matmul per local training step on a single core (measured
    on a 2-core machine: a 100-client MLP round takes the same time pinned to one core), so
    without this a CPU round uses one core whatever the strategy. Call it before the first JAX
    computation of the process (it sets ``jax_num_cpu_devices``, read when the backend starts).
    """
    if count is None:
        count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"use_cpu_cores: count must be an integer >= 1, got {count!r}")
    try:
        jax.config.update("jax_num_cpu_devices", count)
    except RuntimeError as e:  # JAX reads the setting once, when its backends start
        raise RuntimeError(
            "use_cpu_cores: call it before the first JAX computation of the process "
            f"(JAX's backends are already running with {jax.local_device_count()} device(s))"
        ) from e


def pad_clients(xs, multiple: int):
    """``(padded, n)``: the leading (client) axis of every leaf padded to a multiple of
    ``multiple`` with copies of the last client, whose results callers drop; ``n`` the original
    count."""
    n = jax.tree.leaves(xs)[0].shape[0]
    pad = -n % multiple
    if pad:
        xs = jax.tree.map(lambda a: jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)]), xs)
    return xs, n


def map_clients(fn: Callable, xs, execution: str = "auto", chunk_size: int = 8):
    """Applies ``fn`` to each client's slice of ``xs`` (leading axis) and stacks the results.

    ``vmap``: all clients at once (fastest on GPU/TPU, memory O(cohort)); ``chunked``: vmap over
    chunks of ``chunk_size`` clients inside a sequential loop (memory O(chunk)); ``sequential``:
    one client at a time; ``parallel``: the clients split over the local devices with
    ``jax.pmap``, each device running its share one at a time (fastest local training on a
    multi-core CPU after ``use_cpu_cores()``; with one device it is ``sequential``);
    ``auto``: ``default_execution()``.
    Every strategy computes the same per-client function, so results agree to float rounding.
    """
    execution = resolve_execution(execution)
    if execution == "vmap":
        return jax.vmap(fn)(xs)
    if execution == "chunked":
        return lax.map(fn, xs, batch_size=chunk_size)
    if execution == "sequential":
        return lax.map(fn, xs)
    if execution == "parallel":
        devices = jax.local_device_count()
        if devices == 1:
            return lax.map(fn, xs)
        xs, n = pad_clients(xs, devices)  # the padding clients are trained and dropped
        split = jax.tree.map(lambda a: a.reshape(devices, a.shape[0] // devices, *a.shape[1:]), xs)
        out = jax.pmap(lambda shard: lax.map(fn, shard))(split)
        return jax.tree.map(lambda a: a.reshape(-1, *a.shape[2:])[:n], out)
    raise ValueError(f"execution: unknown client execution {execution!r}; valid: {', '.join(EXECUTIONS)}")
