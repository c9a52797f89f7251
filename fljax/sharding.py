"""The cohort's client axis on a device mesh: one host, or many hosts via ``jax.distributed``.

A round's per-client arrays (client ids, malicious flags, PRNG keys) and the ``[n, d]`` update
matrix have a leading client axis. With ``make_round(..., shard_clients=True)`` that axis is
split over a one-dimensional ``Mesh`` of every visible device (``jax.devices()``: all processes'
devices after ``jax.distributed.initialize``):

* local training runs under ``jax.shard_map``: each device trains its own ``ceil(n / D)`` clients
  with the round's execution strategy (``sequential``, ``chunked`` or ``vmap``; see
  ``fljax.client.map_clients``; ``auto`` and ``parallel`` mean ``vmap`` on accelerators and
  ``sequential`` on CPU inside the shard). The devices train at once: on the 2-core CPU with
  ``use_cpu_cores`` (jax 0.10.2) the default run took 8.90 rounds/s sharded against 8.85 with
  ``execution="parallel"`` and 5.34 sequential (``python -m experiments.run --shard_clients
  --aggregator=mean --attack=none --rounds=30``).
  When D does not divide n the cohort is padded with copies of its last client, whose updates
  are dropped (at most D - 1 wasted client trainings per round; pick n a multiple of D to avoid
  them);
* the model attack and the aggregation rule run on the sharded ``[n, d]`` matrix as ordinary
  array code: XLA's partitioner inserts the collectives (all-gathers for sorts and Gram
  matrices, all-reduces for weighted sums), so every rule works unchanged;
* everything else (global params, the example arrays, server state) is replicated.

Per-client computations are the same with and without sharding (same ids, same keys), so a
sharded run equals the unsharded one up to the float reassociation of cross-device reductions.

Examples:
  >>> update = fljax.fedsgd(fljax.classification_loss(lambda params, x: x @ params))
  >>> round_ = fljax.make_round(
  ...     update, fljax.aggregators.median(), clients_per_round=64, shard_clients=True
  ... )  # on 8 devices: 8 clients on each
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from fljax.client import map_clients, pad_clients

CLIENT_AXIS = "clients"
"""Name of the mesh axis the cohort's client axis is split over."""


def client_mesh(devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
    """A one-dimensional mesh named ``"clients"`` over ``devices`` (default: ``jax.devices()``,
    every device of every process)."""
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("client_mesh: devices must hold at least one device, got none")
    return Mesh(np.asarray(devices), (CLIENT_AXIS,))


def resolve_mesh(shard_clients) -> Optional[Mesh]:
    """``make_round``'s ``shard_clients`` argument as a mesh: ``False`` -> ``None``, ``True`` ->
    ``client_mesh()``, or a ``Mesh`` with a ``"clients"`` axis, returned as is."""
    if isinstance(shard_clients, Mesh):
        if CLIENT_AXIS not in shard_clients.axis_names:
            raise ValueError(
                f"shard_clients: a Mesh needs an axis named {CLIENT_AXIS!r}, got axes {tuple(shard_clients.axis_names)}"
            )
        return shard_clients
    if not isinstance(shard_clients, bool):
        raise ValueError(f"shard_clients must be a bool or a jax.sharding.Mesh, got {shard_clients!r}")
    return client_mesh() if shard_clients else None


def num_shards(mesh: Mesh) -> int:
    """How many pieces the client axis is cut into (the size of the mesh's ``"clients"`` axis)."""
    return int(mesh.shape[CLIENT_AXIS])


def padded_cohort(clients_per_round: int, mesh: Mesh) -> int:
    """The cohort size rounded up to a multiple of the mesh's device count D: the number of
    clients local training runs (``clients_per_round % D`` padding clients are trained and
    dropped, at most D - 1 per round)."""
    if isinstance(clients_per_round, bool) or not isinstance(clients_per_round, int) or clients_per_round < 1:
        raise ValueError(f"shard_clients: clients_per_round must be an integer >= 1, got {clients_per_round!r}")
    d = num_shards(mesh)
    return -(-clients_per_round // d) * d


def client_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of an array whose leading axis is the cohort's client axis (other axes whole)."""
    return NamedSharding(mesh, PartitionSpec(CLIENT_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding of an array every device holds whole."""
    return NamedSharding(mesh, PartitionSpec())


def constrain_clients(tree, mesh: Mesh):
    """``with_sharding_constraint``: every leaf of ``tree`` split along its leading client axis."""
    sharding = client_sharding(mesh)
    return jax.tree.map(lambda a: jax.lax.with_sharding_constraint(a, sharding), tree)


def constrain_replicated(tree, mesh: Mesh):
    """``with_sharding_constraint``: every leaf of ``tree`` whole on every device of ``mesh``."""
    sharding = replicated(mesh)
    return jax.tree.map(lambda a: jax.lax.with_sharding_constraint(a, sharding), tree)


def map_clients_sharded(fn: Callable, xs, mesh: Mesh, execution: str = "auto", chunk_size: int = 8):
    """``map_clients`` with the client axis split over ``mesh``: each device applies ``fn`` to its
    own ``ceil(n / D)`` clients with ``execution`` (``sequential`` / ``chunked`` / ``vmap`` /
    ``auto``). When D does not divide n, copies of the last client pad the cohort and their
    results are dropped, so the output is ``fn`` of exactly the n given clients.

    ``fn`` may close over traced values (the global params, the example arrays): inside the
    ``shard_map`` they are replicated on every device. The result is constrained to the same
    client sharding as ``xs``.
    """
    if execution in ("auto", "parallel"):  # no pmap inside shard_map: the mesh already splits the cohort
        execution = "sequential" if jax.default_backend() == "cpu" else "vmap"
    xs, n = pad_clients(xs, num_shards(mesh))  # copies of the last client fill the cohort up to a multiple of D
    xs = constrain_clients(xs, mesh)
    # check_vma=False: client updates mix replicated values (params, examples) with per-device
    # ones (ids, keys) in scans and conds; JAX's varying-axes type check would reject some of them.
    local = jax.shard_map(
        lambda shard: map_clients(fn, shard, execution, chunk_size),
        mesh=mesh,
        in_specs=PartitionSpec(CLIENT_AXIS),
        out_specs=PartitionSpec(CLIENT_AXIS),
        check_vma=False,
    )
    out = jax.tree.map(lambda a: a[:n], local(xs))  # the padding clients' rows dropped
    return constrain_clients(out, mesh)


def replicate(tree, mesh: Mesh):
    """Places every array leaf of ``tree`` whole on every device of ``mesh`` (global arrays when
    the mesh spans several processes; each process passes its own identical copy).

    Uncommitted arrays (``jnp.asarray``, the results of jitted calls) need no placing; arrays
    committed to one device (``jax.device_put(x, device)``) must be placed before a sharded round
    reads them, or ``jit`` rejects the mix of devices."""
    sharding = replicated(mesh)

    def place(a):
        if isinstance(a, jax.Array) and a.sharding == sharding:
            return a
        return jax.make_array_from_process_local_data(sharding, np.asarray(a))

    return jax.tree.map(place, tree)


def initialize_distributed(
    coordinator_address: Optional[str] = None,
    num_processes: Optional[int] = None,
    process_id: Optional[int] = None,
    heartbeat_timeout: Optional[int] = None,
) -> None:
    """Joins this process to a multi-process JAX run (``jax.distributed.initialize``).

    Must run before any other JAX call. On Cloud TPU pod slices, Slurm (``srun``) and Open MPI
    every argument may be left ``None``: JAX detects the cluster. Elsewhere give all three
    (the same ``coordinator_address`` "host:port" of process 0 and ``num_processes`` on every
    process, and each its own ``process_id`` in ``0..num_processes-1``). Afterwards
    ``jax.devices()`` lists every process's devices, so ``client_mesh()`` spans them all.
    ``heartbeat_timeout`` (seconds, JAX's default 100 when ``None``): after this long without a
    heartbeat the coordination service declares a process lost and stops the others
    (``fljax.multihost``).
    """
    if coordinator_address is not None and (not isinstance(coordinator_address, str) or ":" not in coordinator_address):
        raise ValueError(
            f"--coordinator_address must be 'host:port' (process 0's address), got {coordinator_address!r}"
        )
    if num_processes is not None and (
        isinstance(num_processes, bool) or not isinstance(num_processes, int) or num_processes < 1
    ):
        raise ValueError(
            f"--num_processes must be an integer >= 1 (or unset for auto-detection), got {num_processes!r}"
        )
    if process_id is not None:
        bound = f"0..num_processes-1={num_processes - 1}" if num_processes else "0..num_processes-1"
        if (
            isinstance(process_id, bool)
            or not isinstance(process_id, int)
            or process_id < 0
            or (num_processes is not None and process_id >= num_processes)
        ):
            raise ValueError(
                f"--process_id must be an integer in {bound} (or unset for auto-detection), got {process_id!r}"
            )
    if heartbeat_timeout is not None and (
        isinstance(heartbeat_timeout, bool) or not isinstance(heartbeat_timeout, int) or heartbeat_timeout < 1
    ):
        raise ValueError(f"--heartbeat_timeout must be an integer >= 1 (seconds), got {heartbeat_timeout!r}")
    timeout = {} if heartbeat_timeout is None else {"heartbeat_timeout_seconds": heartbeat_timeout}
    jax.distributed.initialize(
        coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id, **timeout
    )
