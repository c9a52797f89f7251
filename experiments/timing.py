"""Measuring tools shared by ``experiments/benchmark.py`` and ``experiments/device_check.py``.

Timers, the synthetic MNIST-shaped federated data both scripts train on, the aggregation rules
built with benchmark hyper-parameters, and the plain PyTorch per-client loop they compare against.
Nothing here defines flags or prints.
"""

from __future__ import annotations

import copy
import inspect
import statistics
import time
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

import fljax
from fljax.aggregators import REGISTRY

INPUT_SHAPE, NUM_CLASSES = (28, 28, 1), 10


def now() -> float:
    return time.perf_counter()


def timed(fn: Callable[[], object], repeats: int, best: bool = False) -> tuple[float, float]:
    """``(first call seconds (compile + run), median (or best) seconds of the next repeats)``."""
    start = now()
    jax.block_until_ready(fn())
    first = now() - start
    times = []
    for _ in range(repeats):
        start = now()
        jax.block_until_ready(fn())
        times.append(now() - start)
    return first, min(times) if best else statistics.median(times)


def table(title: str, header: list[str], rows: list[list[str]]) -> str:
    """A plain text table (first column left-aligned, the others right-aligned)."""
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    line = lambda cells: "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([f"\n{title}", line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def matmul_peak(repeats: int, precision=jax.lax.Precision.HIGHEST) -> float:
    """Measured matmul FLOP/s of float32 inputs: the best of ``repeats`` square ``jnp.dot`` at
    ``precision`` (``HIGHEST``: true fp32; ``DEFAULT``: the backend's default, TF32 on recent
    NVIDIA GPUs)."""
    size = 2048 if jax.default_backend() == "cpu" else 8192
    a = jax.random.normal(jax.random.PRNGKey(0), (size, size), jnp.float32)
    dot = jax.jit(lambda a: jnp.dot(a, a, precision=precision))
    _, seconds = timed(lambda: dot(a), repeats, best=True)
    return 2 * size ** 3 / seconds


def synthetic_data(num_clients: int, examples_per_client: int, *, input_shape: Sequence[int] = INPUT_SHAPE,
                   num_classes: int = NUM_CLASSES, pool: int = 10_000, seed: int = 0) -> fljax.FederatedData:
    """Random examples of ``input_shape`` in a shared pool of ``pool``; each client holds
    ``examples_per_client`` random indices into it (the real shapes, no real data needed)."""
    rng = np.random.default_rng(seed)
    x = rng.random((pool, *input_shape), dtype=np.float32)
    y = rng.integers(0, num_classes, pool).astype(np.int32)
    indices = rng.integers(0, pool, (num_clients, examples_per_client)).astype(np.int32)
    counts = np.full(num_clients, examples_per_client, np.int32)
    test = min(pool, 1000)
    return fljax.FederatedData(jnp.asarray(x), jnp.asarray(y), jnp.asarray(indices), jnp.asarray(counts),
                               jnp.asarray(x[:test]), jnp.asarray(y[:test]))


def parse_execution(spec: str) -> tuple[str, int]:
    """``'chunked:10'`` -> ``('chunked', 10)``; other strategies -> ``(name, 8)``."""
    name, _, chunk = spec.partition(":")
    return name, int(chunk) if chunk else 8


def build_aggregator(name: str, n: int):
    """``(aggregator, None)`` or ``(None, reason)``: the REGISTRY factory called with the
    arguments it takes among ``num_byzantine`` (20% of n) and benchmark values of the others."""
    f = n // 5
    known = {"num_byzantine": f, "num_clients": n, "max_norm": 1.0, "noise_std": 1e-3, "clip_radius": 1.0,
             "learning_threshold": f + 1}
    factory = REGISTRY.get(name)
    if factory is None:
        return None, f"not in REGISTRY ({', '.join(sorted(REGISTRY))})"
    try:
        params = inspect.signature(factory).parameters
        kwargs = {k: v for k, v in known.items() if k in params}
        missing = [k for k, p in params.items() if p.default is inspect.Parameter.empty and k not in kwargs
                   and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if missing:
            return None, f"needs {', '.join(missing)}"
        aggregator = factory(**kwargs)
        aggregator.requirement(n)
        return aggregator, None
    except Exception as e:  # report and go on: other rules are still measured
        return None, f"{type(e).__name__}: {e}"


def time_aggregator(aggregator, updates: jax.Array, repeats: int) -> tuple[float, float]:
    """``aggregator.update`` on ``updates [n, d]`` under jit, as a round calls it:
    ``(compile + first call seconds, median seconds)``."""
    n, d = updates.shape
    flat_params = jnp.zeros(d, updates.dtype)
    context = fljax.AggregationContext(weights=jnp.full(n, 600.0, updates.dtype), key=jax.random.PRNGKey(0),
                                       client_ids=jnp.arange(n), params=flat_params,
                                       reference=jnp.mean(updates[: max(1, n // 10)], axis=0))
    state = aggregator.init(flat_params)
    step = jax.jit(lambda u, s: (lambda out: (out[0], out[2]["weights"]))(aggregator.update(u, s, context)))
    return timed(lambda: step(updates, state), repeats)


def round_updates(client_update, params, data: fljax.FederatedData, n: int, execution: str = "auto") -> jax.Array:
    """The ``[n, d]`` updates of clients ``0..n-1`` of ``data`` from ``params``: what a round's
    rule sees."""
    from jax.flatten_util import ravel_pytree

    keys = jax.random.split(jax.random.PRNGKey(2), n)

    def one_client(client, key):
        client_data = fljax.ClientData(data.x, data.y, data.client_indices[client], data.client_counts[client])
        return ravel_pytree(client_update(params, client_data, key))[0]

    return jax.jit(lambda c, k: fljax.client.map_clients(lambda a: one_client(*a), (c, k), execution))(
        jnp.arange(n), keys)


def torch_version(threads: int = 0) -> Optional[str]:
    """``'torch X, N thread(s)'`` or ``None`` when torch is not importable."""
    try:
        import torch
    except ImportError:
        return None
    return f"torch {torch.__version__}, {threads or torch.get_num_threads()} thread(s)"


def torch_median_seconds(updates: np.ndarray, repeats: int, device: str = "cpu") -> Optional[float]:
    """Median seconds of ``torch.median(updates, dim=0)`` on ``device`` (``None`` without torch)."""
    try:
        import torch
    except ImportError:
        return None
    x = torch.from_numpy(np.array(updates)).to(device)
    times = []
    for _ in range(repeats + 1):
        start = now()
        torch.median(x, dim=0)
        if device != "cpu":
            torch.cuda.synchronize()
        times.append(now() - start)
    return statistics.median(times[1:])


def torch_mlp_round(data: fljax.FederatedData, init_params, *, local_steps: int, batch_size: int, lr: float,
                    device: str = "cpu", threads: int = 1) -> Optional[Callable[[int], float]]:
    """A FedAvg round of the MLP as a plain PyTorch loop: per client, copy the global model, run
    ``local_steps`` SGD steps of ``batch_size`` on its batches, keep the delta; average; apply.

    Returns ``one_round(n) -> seconds`` (a round of clients ``0..n-1`` on ``device``, synchronised)
    with the same initial weights as ``init_params`` (flax's MLP, kernels ``[in, out]``), or
    ``None`` when torch is not importable. ``threads`` sets ``torch.set_num_threads`` for the
    loop's duration (0: torch's default)."""
    try:
        import torch
    except ImportError:
        return None
    torch.manual_seed(0)
    widths = [np.asarray(init_params[f"Dense_{i}"]["kernel"]).shape for i in range(3)]
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(*widths[0]), torch.nn.ReLU(),
                                torch.nn.Linear(*widths[1]), torch.nn.ReLU(), torch.nn.Linear(*widths[2]))
    with torch.no_grad():
        for layer, i in zip([model[1], model[3], model[5]], range(3)):
            p = init_params[f"Dense_{i}"]
            layer.weight.copy_(torch.from_numpy(np.asarray(p["kernel"]).T.copy()))
            layer.bias.copy_(torch.from_numpy(np.array(p["bias"])))
    model = model.to(device)
    x = torch.from_numpy(np.array(data.x)).to(device)
    y = torch.from_numpy(np.array(data.y)).long().to(device)
    indices = torch.from_numpy(np.array(data.client_indices)).long().to(device)
    local = copy.deepcopy(model)
    loss_fn = torch.nn.CrossEntropyLoss()
    generator = torch.Generator(device=device).manual_seed(0)
    sync = torch.cuda.synchronize if device != "cpu" else (lambda: None)

    def one_round(n: int) -> float:
        default_threads = torch.get_num_threads()
        if threads:
            torch.set_num_threads(threads)
        sync()
        start = now()
        global_params = [p.detach().clone() for p in model.parameters()]
        total = [torch.zeros_like(p) for p in global_params]
        for client in range(n):
            with torch.no_grad():
                for p, g in zip(local.parameters(), global_params):
                    p.copy_(g)
            optimizer = torch.optim.SGD(local.parameters(), lr=lr)
            mine = indices[client]
            order = mine[torch.randperm(len(mine), generator=generator, device=device)]
            for t in range(local_steps):
                idx = order[(t * batch_size) % len(order):][:batch_size]
                optimizer.zero_grad()
                loss_fn(local(x[idx]), y[idx]).backward()
                optimizer.step()
            with torch.no_grad():
                for acc, p, g in zip(total, local.parameters(), global_params):
                    acc += p - g
        with torch.no_grad():
            for p, acc in zip(model.parameters(), total):
                p += acc / n
        sync()
        seconds = now() - start
        torch.set_num_threads(default_threads)
        return seconds

    return one_round
