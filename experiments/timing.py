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
import jax.extend
import jax.numpy as jnp
import numpy as np

import fljax
from fljax.aggregators import REGISTRY, column_split

INPUT_SHAPE, NUM_CLASSES = (28, 28, 1), 10


def now() -> float:
    return time.perf_counter()


def timed(fn: Callable[[], object], repeats: int, best: bool = False) -> tuple[float, float]:
    """``(first call seconds (compile + run), median (or best) seconds of the next repeats)``;
    with ``repeats=0`` both are the one call's."""
    start = now()
    jax.block_until_ready(fn())
    first = now() - start
    times = []
    for _ in range(repeats):
        start = now()
        jax.block_until_ready(fn())
        times.append(now() - start)
    if not times:
        return first, first
    return first, min(times) if best else statistics.median(times)


def table(title: str, header: list[str], rows: list[list[str]]) -> str:
    """A plain text table (first column left-aligned, the others right-aligned)."""
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    line = lambda cells: "  ".join(
        str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(cells, widths))
    )
    return "\n".join([f"\n{title}", line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def matmul_peak(repeats: int, precision=jax.lax.Precision.HIGHEST) -> float:
    """Measured matmul FLOP/s of float32 inputs: the best of ``repeats`` square ``jnp.dot`` at
    ``precision`` (``HIGHEST``: true fp32; ``DEFAULT``: the backend's default, TF32 on recent
    NVIDIA GPUs)."""
    size = 2048 if jax.default_backend() == "cpu" else 8192
    a = jax.random.normal(jax.random.PRNGKey(0), (size, size), jnp.float32)
    dot = jax.jit(lambda a: jnp.dot(a, a, precision=precision))
    _, seconds = timed(lambda: dot(a), repeats, best=True)
    return 2 * size**3 / seconds


def synthetic_data(
    num_clients: int,
    examples_per_client: int,
    *,
    input_shape: Sequence[int] = INPUT_SHAPE,
    num_classes: int = NUM_CLASSES,
    pool: int = 10_000,
    seed: int = 0,
    tokens: bool = False,
) -> fljax.FederatedData:
    """Random examples of ``input_shape`` in a shared pool of ``pool``; each client holds
    ``examples_per_client`` random indices into it (the real shapes, no real data needed).
    ``tokens``: sequences of ``input_shape = (T,)`` token ids in ``[0, num_classes)`` with
    next-token labels ``[T]`` (next-character prediction)."""
    rng = np.random.default_rng(seed)
    if tokens:
        (length,) = input_shape
        text = rng.integers(0, num_classes, (pool, length + 1)).astype(np.int32)
        x, y = text[:, :-1], text[:, 1:]
    else:
        x = rng.random((pool, *input_shape), dtype=np.float32)
        y = rng.integers(0, num_classes, pool).astype(np.int32)
    indices = rng.integers(0, pool, (num_clients, examples_per_client)).astype(np.int32)
    counts = np.full(num_clients, examples_per_client, np.int32)
    test = min(pool, 1000)
    return fljax.FederatedData(
        jnp.asarray(x),
        jnp.asarray(y),
        jnp.asarray(indices),
        jnp.asarray(counts),
        jnp.asarray(x[:test]),
        jnp.asarray(y[:test]),
    )


def forward_flops(apply_fn: Callable, params, x) -> float:
    """Matmul and convolution FLOPs of ``apply_fn(params, x)`` (2 per multiply-add), counted on
    its jaxpr: loops count once per iteration, elementwise work not at all. Training counts as
    3x the forward (the backward's two products per forward one)."""

    def count(jaxpr) -> float:
        total = 0.0
        for eqn in jaxpr.eqns:
            name = eqn.primitive.name
            if name == "dot_general":
                (contract, _), _ = eqn.params["dimension_numbers"]
                lhs = eqn.invars[0].aval.shape
                total += 2 * np.prod(eqn.outvars[0].aval.shape) * np.prod([lhs[d] for d in contract])
            elif name == "conv_general_dilated":
                rhs = eqn.invars[1].aval.shape
                dn = eqn.params["dimension_numbers"]
                out_features = rhs[dn.rhs_spec[0]]
                total += 2 * np.prod(eqn.outvars[0].aval.shape) * np.prod(rhs) / out_features
            times = eqn.params.get("length", 1) if name == "scan" else 1
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                total += times * count(sub)
        return total

    return count(jax.make_jaxpr(apply_fn)(params, x).jaxpr)


def parse_execution(spec: str) -> tuple[str, int]:
    """``'chunked:10'`` -> ``('chunked', 10)``; other strategies -> ``(name, 8)``."""
    name, _, chunk = spec.partition(":")
    return name, int(chunk) if chunk else 8


def build_aggregator(name: str, n: int):
    """``(aggregator, None)`` or ``(None, reason)``: the REGISTRY factory called with the
    arguments it takes among ``num_byzantine`` (20% of n) and benchmark values of the others."""
    f = n // 5
    known = {
        "num_byzantine": f,
        "num_clients": n,
        "max_norm": 1.0,
        "noise_std": 1e-3,
        "clip_radius": 1.0,
        "learning_threshold": f + 1,
    }
    factory = REGISTRY.get(name)
    if factory is None:
        return None, f"not in REGISTRY ({', '.join(sorted(REGISTRY))})"
    try:
        params = inspect.signature(factory).parameters
        kwargs = {k: v for k, v in known.items() if k in params}
        missing = [
            k
            for k, p in params.items()
            if p.default is inspect.Parameter.empty
            and k not in kwargs
            and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]
        if missing:
            return None, f"needs {', '.join(missing)}"
        aggregator = factory(**kwargs)
        aggregator.requirement(n)
        return aggregator, None
    except Exception as e:  # report and go on: other rules are still measured
        return None, f"{type(e).__name__}: {e}"


def model_access(apply_fn: Callable, params, input_shape: Sequence[int], dtype=jnp.float32) -> fljax.types.ModelAccess:
    """What ``make_round`` gives a rule that reads the model (``Aggregator.needs_model``): the
    params' unravel, ``apply_fn`` and one input's shape and dtype."""
    from jax.flatten_util import ravel_pytree

    return fljax.types.ModelAccess(
        unravel=ravel_pytree(params)[1], apply=apply_fn, inputs=jax.ShapeDtypeStruct(tuple(input_shape), dtype)
    )


def time_aggregator(
    aggregator, updates: jax.Array, repeats: int, model: Optional[fljax.types.ModelAccess] = None
) -> tuple[float, float]:
    """``aggregator.update`` on ``updates [n, d]`` under jit, as a round calls it (under the
    default ``parallel`` client execution of a multi-core CPU, with the coordinates split over
    the cores: ``column_split.columns_over_devices``): ``(compile + first call seconds,
    median seconds)``. ``model`` (``model_access``): the model the updates belong to, for a rule
    that reads it (DeepSight); without it such a rule raises."""
    n, d = updates.shape
    flat_params = jnp.zeros(d, updates.dtype)
    context = fljax.AggregationContext(
        weights=jnp.full(n, 600.0, updates.dtype),
        key=jax.random.PRNGKey(0),
        client_ids=jnp.arange(n),
        params=flat_params,
        reference=jnp.mean(updates[: max(1, n // 10)], axis=0),
        model=model,
    )
    state = aggregator.init(flat_params)
    step = jax.jit(lambda u, s: (lambda out: (out[0], out[2]["weights"]))(aggregator.update(u, s, context)))
    with column_split.columns_over_devices(fljax.client.default_execution() == "parallel"):
        return timed(lambda: step(updates, state), repeats)  # traced at its first call, in the context


def round_updates(client_update, params, data: fljax.FederatedData, n: int, execution: str = "auto") -> jax.Array:
    """The ``[n, d]`` updates of clients ``0..n-1`` of ``data`` from ``params``: what a round's
    rule sees."""
    from jax.flatten_util import ravel_pytree

    keys = jax.random.split(jax.random.PRNGKey(2), n)

    def one_client(client, key):
        client_data = fljax.ClientData(data.x, data.y, data.client_indices[client], data.client_counts[client])
        return ravel_pytree(client_update(params, client_data, key))[0]

    return jax.jit(lambda c, k: fljax.client.map_clients(lambda a: one_client(*a), (c, k), execution))(
        jnp.arange(n), keys
    )


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


def _torch_zoo(torch, name: str, input_shape: Sequence[int], num_classes: int):
    """Torch versions of LeNet-5, the GroupNorm ResNets, VGG-11 and the character LSTM, with the
    layer shapes of ``fljax.models`` (timing only: torch's own initialisation)."""
    nn = torch.nn

    class Block(nn.Module):
        def __init__(self, cin, cout, stride, shortcut):
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
                nn.GroupNorm(2, cout),
                nn.ReLU(),
                nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
                nn.GroupNorm(2, cout),
            )
            self.stride, self.extra, self.project = stride, cout - cin, None
            if (stride != 1 or cin != cout) and shortcut == "projection":
                self.project = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.GroupNorm(2, cout))

        def forward(self, x):
            y = self.body(x)
            if self.project is not None:
                x = self.project(x)
            elif self.stride != 1 or self.extra:
                x = x[:, :, :: self.stride, :: self.stride]
                x = torch.nn.functional.pad(x, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))
            return torch.relu(x + y)

    def resnet(stages, widths, shortcut):
        layers, cin = (
            [nn.Conv2d(input_shape[-1], widths[0], 3, 1, 1, bias=False), nn.GroupNorm(2, widths[0]), nn.ReLU()],
            widths[0],
        )
        for stage, (blocks, width) in enumerate(zip(stages, widths)):
            for block in range(blocks):
                layers.append(Block(cin, width, 2 if stage > 0 and block == 0 else 1, shortcut))
                cin = width
        return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes))

    class CharLSTM(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(num_classes, 8)
            self.lstm = nn.LSTM(8, 256, num_layers=2, batch_first=True)
            self.out = nn.Linear(256, num_classes)

        def forward(self, tokens):
            return self.out(self.lstm(self.embed(tokens))[0])

    if name == "lenet5":
        h, w, c = input_shape
        pads = [(max(0, (32 - n) // 2), max(0, 32 - n - (32 - n) // 2)) for n in (h, w)]
        side = lambda n, p: ((n + sum(p) - 4) // 2 - 4) // 2
        return nn.Sequential(
            nn.ZeroPad2d((*pads[1], *pads[0])),
            nn.Conv2d(c, 6, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(16 * side(h, pads[0]) * side(w, pads[1]), 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, num_classes),
        )
    if name == "resnet18":
        return resnet((2, 2, 2, 2), (64, 128, 256, 512), "projection")
    if name == "resnet20":
        return resnet((3, 3, 3), (16, 32, 64), "pad")
    if name == "vgg11":
        layers, cin = [], input_shape[-1]
        for v in (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"):
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU()]
                cin = v
        flat = 512 * (input_shape[0] // 32) * (input_shape[1] // 32)
        return nn.Sequential(*layers, nn.Flatten(), nn.Linear(flat, num_classes))
    if name == "char_lstm":
        return CharLSTM()
    raise ValueError(f"torch_round: no torch version of model {name!r}")


def _torch_model(torch, name: str, input_shape: Sequence[int], num_classes: int, init_params):
    """The torch twin of ``fljax.models.get(name, ...)`` for the timing loop: the same layers and
    shapes (channels-first). ``mlp`` and ``cnn`` start from ``init_params`` (flax's weights,
    copied); the other models from torch's own initialisation (timing only)."""
    nn = torch.nn
    copy_weights, conv_out = name in ("mlp", "cnn"), None
    if name == "mlp":
        widths = [np.asarray(init_params[f"Dense_{i}"]["kernel"]).shape for i in range(3)]
        model = nn.Sequential(
            nn.Flatten(), nn.Linear(*widths[0]), nn.ReLU(), nn.Linear(*widths[1]), nn.ReLU(), nn.Linear(*widths[2])
        )
        dense, convs = [model[1], model[3], model[5]], []
    elif name == "cnn":
        h, w, c = input_shape
        side = lambda n: ((n - 2) // 2 - 2) // 2  # conv 3x3 VALID, pool 2, conv 3x3 VALID, pool 2
        conv_out = (side(h), side(w), 50)
        model = nn.Sequential(
            nn.Conv2d(c, 30, 3),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(30, 50, 3),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(int(np.prod(conv_out)), 200),
            nn.ReLU(),
            nn.Linear(200, num_classes),
        )
        dense, convs = [model[7], model[9]], [model[0], model[3]]
    else:
        model = _torch_zoo(torch, name, input_shape, num_classes)
    if copy_weights:
        with torch.no_grad():
            for i, layer in enumerate(convs):
                p = init_params[f"Conv_{i}"]  # HWIO -> OIHW
                layer.weight.copy_(torch.from_numpy(np.asarray(p["kernel"]).transpose(3, 2, 0, 1).copy()))
                layer.bias.copy_(torch.from_numpy(np.array(p["bias"])))
            for i, layer in enumerate(dense):
                p = init_params[f"Dense_{i}"]
                kernel = np.asarray(p["kernel"])
                if i == 0 and conv_out:  # flax flattens (h, w, c), torch (c, h, w)
                    kernel = kernel.reshape(*conv_out, -1).transpose(2, 0, 1, 3).reshape(kernel.shape)
                layer.weight.copy_(torch.from_numpy(kernel.T.copy()))
                layer.bias.copy_(torch.from_numpy(np.array(p["bias"])))
    return model


def torch_round(
    model_name: str,
    data: fljax.FederatedData,
    init_params,
    *,
    local_steps: int,
    batch_size: int,
    lr: float,
    num_classes: int = NUM_CLASSES,
    device: str = "cpu",
    threads: int = 1,
) -> Optional[Callable[[int], float]]:
    """A FedAvg round of ``model_name`` as a plain PyTorch loop: per client, copy the global
    model, run ``local_steps`` SGD steps of ``batch_size`` on its batches, keep the delta;
    average; apply.

    Returns ``one_round(n) -> seconds`` (a round of clients ``0..n-1`` on ``device``,
    synchronised), or ``None`` when torch is not importable. The torch model has the layers of
    ``fljax.models.get(model_name, data.x.shape[1:], num_classes)`` (``_torch_model``; images
    channels-first); ``mlp`` and ``cnn`` start from ``init_params``. ``threads`` sets
    ``torch.set_num_threads`` for the loop's duration (0: torch's default)."""
    try:
        import torch
    except ImportError:
        return None
    torch.manual_seed(0)
    input_shape = tuple(data.x.shape[1:])
    model = _torch_model(torch, model_name, input_shape, num_classes, init_params).to(device)
    x = torch.from_numpy(np.array(data.x))
    if x.ndim == 4:  # NHWC -> NCHW
        x = x.permute(0, 3, 1, 2).contiguous()
    x = x.long().to(device) if model_name == "char_lstm" else x.to(device)
    y = torch.from_numpy(np.array(data.y)).long().to(device)
    indices = torch.from_numpy(np.array(data.client_indices)).long().to(device)
    local = copy.deepcopy(model)
    loss_fn = torch.nn.CrossEntropyLoss()
    if model_name == "char_lstm":  # per-token loss: logits [B, T, V] against labels [B, T]
        loss_fn = (lambda ce: lambda logits, labels: ce(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)))(
            torch.nn.CrossEntropyLoss()
        )
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
                idx = order[(t * batch_size) % len(order) :][:batch_size]
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


def torch_mlp_round(data: fljax.FederatedData, init_params, **kwargs) -> Optional[Callable[[int], float]]:
    """``torch_round("mlp", ...)``: the MLP's PyTorch loop (kept for ``experiments/device_check.py``)."""
    return torch_round("mlp", data, init_params, **kwargs)
