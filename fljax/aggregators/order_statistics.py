"""Per-coordinate order statistics of a cohort's ``[n, d]`` updates, the kernel behind the
coordinate-wise rules (median, trimmed mean, Bulyan's final step).

A trimmed mean only needs two order statistics per coordinate, the k-th smallest ``lo`` and the
k-th largest ``hi``: the kept values are those strictly between them plus the right number of
copies of ``lo`` and ``hi`` (ties included), so the mean and each client's share follow from
O(n d) masked reductions, with no sort.

How the order statistics are found (exact, no sort; ``experiments/benchmark.py`` measures them):

* Each float32 maps to the int32 key ``bits ^ ((bits >> 31) & 0x7fffffff)``, whose signed
  order is the float order (-inf < finite < +inf; -0.0 sorts just below +0.0, harmless since
  they compare equal as floats). NaN counts as +inf.
* n <= ``NETWORK_MAX_N``: a selection network (Batcher's odd-even merge sort, pruned to the
  comparators the wanted ranks depend on) of integer min/max over whole rows, one fused pass.
* Larger n, radix select: the k-th smallest key is built bit by bit; with the bits found so
  far as a prefix ``p``, the next bit is set iff ``count(key < p | bit) <= k``. Each step is
  one count per column, over int16 halves of the keys (16 lanes per AVX2 register). After the
  16 high bits ``h`` the answer is the (k - below)-th of the keys whose high half is ``h`` (its
  "bucket"); in float data the bucket almost always holds at most 3 keys, or copies of one
  value (colluding clients), and its min, max and sum give the answer at once. Only blocks
  with a column not resolved that way run the 16 low-bit steps, so the result is exact for any
  input. A rank right after another (the two middle values of an even-n median) costs one
  pass: it is the same key or the smallest larger one. Ranks 0 and n - 1 are min and max.
* Column reductions are trees of row slices (XLA CPU's ``jnp.sum(axis=0)`` on ``[n, d]``
  walks one column at a time, ~60x slower than a matvec), a few rows per step of a
  ``fori_loop`` on CPU so that the compiled program does not grow with n.
* Inside ``column_split.columns_over_devices`` (``make_round`` enters it when the clients run
  ``parallel``, one stream per CPU core) wide inputs split their columns over the devices.
* On CPU the columns go in blocks of ~1 MiB of int16 keys (``fori_loop`` over blocks), so
  that all passes over a block hit the cache, ``x`` is read from memory once and no ``[n, d]``
  temporary is stored (fresh buffers cost ~0.6 ms/MB in page faults); on GPU/TPU the whole
  matrix is one block and a reduction is one ``lax.reduce`` kernel.

Everything is ``jnp``/``lax``: jit-, vmap- and differentiable (custom JVPs: the tangent of an
order statistic is that of the entry holding it). float16/bfloat16 widen exactly to float32;
other dtypes fall back to ``jnp.sort``.
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from fljax.aggregators import column_split
from fljax.types import Array

BLOCK_ELEMENTS = 1 << 19
"""Target ``n * columns`` of a CPU column block (1 MiB of int16 keys, 2 MiB of float32)."""

NETWORK_MAX_N = 32
"""Up to this many rows a selection network (min/max of whole rows) replaces radix select."""

_I16_MIN, _I16_MAX = np.int16(-32768), np.int16(32767)
Reduction = tuple[Callable[..., Array], Callable[[Array, Array], Array]]


def _fold(rows: Sequence[Array], op: Callable[[Array, Array], Array]) -> Array:
    """Pairwise tree reduction of a list of equally shaped arrays."""
    rows = list(rows)
    while len(rows) > 1:
        paired = [op(rows[i], rows[i + 1]) for i in range(0, len(rows) - 1, 2)]
        rows = paired + rows[len(paired) * 2 :]
    return rows[0]


def _rows_per_step(n: int) -> int:
    """Rows per loop step of ``_reduce_rows`` on CPU: 8 (a small program for any n, measured as
    fast as a full unroll), fewer for small n so that the loop keeps 2+ steps: XLA inlines a
    one-step loop and then copies the reduction into each consumer of its result."""
    return 8 if n >= 24 else max(1, n // 3)


_LAX_OPS = {jnp.add: lax.add, jnp.minimum: lax.min, jnp.maximum: lax.max}


def _accelerator() -> bool:
    """Whether the kernels take their accelerator form (one kernel per reduction, one column
    block): on GPU/TPU. A function, so tests can run that form on CPU too."""
    return jax.default_backend() != "cpu"


def _identity(op: Callable, dtype) -> Array:
    """The neutral element of ``op`` (add, min or max) in ``dtype``."""
    if op is lax.add:
        return jnp.zeros((), dtype)
    bound = jnp.iinfo(dtype) if jnp.issubdtype(dtype, jnp.integer) else None
    if op is lax.min:
        return jnp.array(bound.max if bound else jnp.inf, dtype)
    return jnp.array(bound.min if bound else -jnp.inf, dtype)


def _reduce_rows(reductions: Sequence[Reduction], *arrays: Array) -> list[Array]:
    """Column reductions of ``[n, c]`` arrays: per ``(fn, op)``, the ``op``-reduction over axis 0
    of the elementwise ``fn(*rows)`` (``[c]`` operands broadcast), as ``[c]``; one pass.

    On CPU, trees of ``op`` over row slices inside a ``fori_loop`` over groups of rows: each
    step fuses into loops vectorized across columns. On GPU/TPU, one ``lax.reduce`` over axis 0
    per reduction, each a single fused kernel (a loop over row groups there launched ~n/8
    kernels per pass and made a GPU median 10x slower than one ``jnp.sort``). Integer sums wrap
    in their own dtype on every backend.
    """
    if _accelerator():
        out = []
        for fn, op in reductions:
            values = fn(*arrays)
            lax_op = _LAX_OPS.get(op, op)
            out.append(lax.reduce(values, _identity(lax_op, values.dtype), lax_op, (0,)))
        return out
    n = arrays[0].shape[0]
    step_rows = _rows_per_step(n)
    head = n % step_rows or step_rows

    def fold_rows(start, count, dynamic):
        rows = [
            [a[start + u] if not dynamic else lax.dynamic_index_in_dim(a, start + u, keepdims=False) for a in arrays]
            for u in range(count)
        ]
        return [_fold([fn(*r) for r in rows], op) for fn, op in reductions]

    acc = fold_rows(0, min(head, n), False)
    if n <= head:
        return acc

    def body(j, acc):
        step = fold_rows(head + j * step_rows, step_rows, True)
        return [op(a, s) for a, s, (_, op) in zip(acc, step, reductions)]

    return lax.fori_loop(0, (n - head) // step_rows, body, acc)


def _counter(pred: Callable[..., Array], dtype) -> Reduction:
    """A ``_reduce_rows`` reduction counting the rows where ``pred`` holds."""
    return (lambda *r: pred(*r).astype(dtype)), jnp.add


def _count_pairs(preds: Sequence[Callable[..., Array]], n: int) -> tuple[list[Reduction], Callable]:
    """Reductions counting each predicate, two per int32 (16 bits each) when ``n < 2^15``, and
    the function unpacking their results into one ``int32 [c]`` count per predicate."""
    if n >= 1 << 15:
        return [_counter(p, jnp.int32) for p in preds], list
    pairs = [preds[i : i + 2] for i in range(0, len(preds), 2)]
    packed = [
        (lambda *r, ps=ps: sum(p(*r).astype(jnp.int32) << (16 * i) for i, p in enumerate(ps)), jnp.add) for ps in pairs
    ]

    def unpack(sums):
        return [(s >> (16 * i)) & 0xFFFF for s, ps in zip(sums, pairs) for i in range(len(ps))]

    return packed, unpack


def float_key(x: Array) -> Array:
    """Order-preserving int32 key of float32 values (the map is its own inverse)."""
    bits = lax.bitcast_convert_type(x, jnp.int32)
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


def key_float(key: Array) -> Array:
    """Inverse of ``float_key``."""
    return lax.bitcast_convert_type(key ^ ((key >> 31) & 0x7FFFFFFF), jnp.float32)


def _bisect16(values: Sequence[Array], ranks: Sequence[int]) -> list[Array]:
    """Radix select on int16 values, one bit per pass, for several (array, rank) pairs at once.

    (Several bits per pass, i.e. 2^bits - 1 counts per pass, did not pay on an H200: XLA runs
    each count as its own reduction; 2 bits were no faster, 4 bits 1.5x and 8 bits 10x slower.)

    Args:
      values: per rank, ``int16 [n, c]`` values (the same array may repeat).
      ranks: static 0-indexed ranks, each in ``[0, n)``.

    Returns:
      per rank, ``int16 [c]``: the rank-th smallest value of each column.
    """
    n, c = values[0].shape
    count_dtype = jnp.int16 if n < 1 << 15 else jnp.int32

    def step(i, prefixes):
        bit = lax.shift_left(jnp.int16(1), (15 - i).astype(jnp.int16))
        # Candidate prefixes as unsigned bit patterns (value + 2^15); compared in signed form.
        candidates = [p | bit for p in prefixes]
        preds = [lambda *r, j=j, t=t ^ _I16_MIN: r[j] < t for j, t in enumerate(candidates)]
        counts = _reduce_rows([_counter(p, count_dtype) for p in preds], *values)
        return tuple(jnp.where(cnt <= rank, t, p) for cnt, t, p, rank in zip(counts, candidates, prefixes, ranks))

    init = tuple(jnp.zeros(c, jnp.int16) for _ in ranks)
    return [p ^ _I16_MIN for p in lax.fori_loop(0, 16, step, init)]


@functools.lru_cache(maxsize=None)
def _network(n: int, outputs: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    """Comparators ``(a, b)`` (min to wire a, max to wire b) of Batcher's odd-even merge sort on
    n wires that the ``outputs`` wires depend on (a selection network)."""
    size = 1 << max(n - 1, 0).bit_length()
    comparators, p = [], 1
    while p < size:  # the power-of-two network; wires >= n hold +inf, so their comparators are no-ops
        k = p
        while k >= 1:
            for j in range(k % p, size - k, 2 * k):
                for i in range(min(k, size - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p) and i + j + k < n:
                        comparators.append((i + j, i + j + k))
            k //= 2
        p *= 2
    needed, kept = set(outputs), []
    for a, b in reversed(comparators):
        if a in needed or b in needed:
            kept.append((a, b))
            needed |= {a, b}
    return tuple(reversed(kept))


def _network_select(rows: Sequence[Array], ranks: Sequence[int]) -> list[Array]:
    """Rank-th smallest of each column by a selection network on the ``n`` rows (small n):
    integer min/max of whole rows, which XLA fuses into one pass (rows given as slices of the
    input, so that their keys are computed inside that pass rather than stored)."""
    wires = list(rows)
    for a, b in _network(len(wires), tuple(sorted(set(ranks)))):
        wires[a], wires[b] = jnp.minimum(wires[a], wires[b]), jnp.maximum(wires[a], wires[b])
    return [wires[r] for r in ranks]


def _select_keys(key: Array, ranks: Sequence[int]) -> list[Array]:
    """Exact rank-th smallest int32 key of each column of ``key [n, c]``, for each static rank."""
    n = key.shape[0]
    if n <= NETWORK_MAX_N:
        return _network_select([key[i] for i in range(n)], ranks)
    wanted = sorted(set(ranks))
    out = {}
    ends = [r for r in wanted if r in (0, n - 1)]
    if ends:
        ops = {0: jnp.minimum, n - 1: jnp.maximum}
        out.update(zip(ends, _reduce_rows([(lambda r: r, ops[r]) for r in ends], key)))
    # A rank right after another wanted rank is that key or the next larger one (one pass).
    successors = [r for r in wanted if r not in out and r - 1 in wanted]
    middle = [r for r in wanted if r not in out and r not in successors]
    if middle:
        out.update(zip(middle, _radix_select(key, middle)))
    for r in successors:
        prev = out[r - 1]
        upto, larger = _reduce_rows(
            [
                _counter(lambda k: k <= prev, jnp.int32),  # noqa: B023
                (lambda k: jnp.where(k > prev, k, jnp.iinfo(jnp.int32).max), jnp.minimum),  # noqa: B023
            ],
            key,
        )
        out[r] = jnp.where(upto >= r + 1, prev, larger)
    return [out[r] for r in ranks]


def _radix_select(key: Array, ranks: Sequence[int]) -> list[Array]:
    """Rank-th smallest int32 key of each column of ``key [n, c]``, by radix select on the
    int16 high halves, then on the low halves only where the bucket does not give it."""
    n = key.shape[0]
    high = (key >> 16).astype(jnp.int16)
    low = ((key & 0xFFFF) - 32768).astype(jnp.int16)
    buckets = _bisect16([high] * len(ranks), ranks)
    # Per rank, over the keys of its bucket (high half == h): how many keys are below / up to
    # it, and the min, max and (wrapping int16) sum of their low halves.
    preds = [f for h in buckets for f in (lambda a, b, h=h: a < h, lambda a, b, h=h: a <= h)]
    count_reductions, unpack = _count_pairs(preds, n)
    reductions = [
        r
        for h in buckets
        for r in (
            (lambda a, b, h=h: jnp.where(a == h, b, _I16_MAX), jnp.minimum),
            (lambda a, b, h=h: jnp.where(a == h, b, _I16_MIN), jnp.maximum),
            (lambda a, b, h=h: jnp.where(a == h, b, jnp.int16(0)), jnp.add),
        )
    ]
    results = _reduce_rows(count_reductions + reductions, high, low)
    counts, stats = unpack(results[: len(count_reductions)]), results[len(count_reductions) :]
    easy, resolved = [], jnp.bool_(True)
    for i, rank in enumerate(ranks):
        below, upto = counts[2 * i], counts[2 * i + 1]
        smallest, largest, total = stats[3 * i : 3 * i + 3]
        size, pos = upto - below, rank - below  # pos: the answer's 0-indexed rank in the bucket
        middle3 = total - smallest - largest  # exact in wrapping int16 arithmetic
        easy.append(
            jnp.where(pos == 0, smallest, jnp.where(pos == size - 1, largest, jnp.where(size == 3, middle3, smallest)))
        )
        resolved = resolved & jnp.all((pos == 0) | (pos == size - 1) | (size == 3) | (smallest == largest))

    def exact():
        # Keys outside the bucket become the extremes of the low half: those below it then
        # always count as smaller, those above never do.
        residuals = [jnp.where(high < h, _I16_MIN, jnp.where(high > h, _I16_MAX, low)) for h in buckets]
        return _bisect16(residuals, ranks)

    lows = lax.cond(resolved, lambda: easy, exact)
    return [(h.astype(jnp.int32) << 16) | (lo16.astype(jnp.int32) + 32768) for h, lo16 in zip(buckets, lows)]


def _block_columns(n: int, d: int) -> int:
    """Columns per block: cache-sized blocks on CPU, one block elsewhere."""
    if _accelerator():
        return d
    return min(d, max(16, BLOCK_ELEMENTS // max(n, 1)) // 16 * 16)


def _over_column_blocks(x: Array, block_fn: Callable, num_columns_out: int, rows_out: int, *columns: Array):
    """Runs ``block_fn(block [n, c], fresh bool[c], *column_blocks) -> (columns
    [num_columns_out, c], rows [rows_out])`` over column blocks of ``x`` (and of the ``[d]``
    arrays ``columns``); returns ``(columns [num_columns_out, d], sum of the rows)``.

    The last block is shifted left to end at ``d`` (no padding copy); ``fresh`` marks its
    columns not already covered, so that row sums count every column once.
    """
    n, d = x.shape
    mesh = column_split.mesh_for(d)
    if mesh is not None:  # each device its share of the columns
        return column_split.over_column_shares(
            mesh, lambda x, *cols: _over_column_blocks(x, block_fn, num_columns_out, rows_out, *cols), x, *columns
        )
    c = _block_columns(n, d)
    if c == d:
        return block_fn(x, jnp.ones(d, bool), *columns)

    def body(j, carry):
        cols, rows = carry
        start = jnp.minimum(j * c, d - c)
        block = lax.dynamic_slice_in_dim(x, start, c, axis=1)
        extra = [lax.dynamic_slice_in_dim(a, start, c) for a in columns]
        block_cols, block_rows = block_fn(block, start + jnp.arange(c) >= j * c, *extra)
        return lax.dynamic_update_slice_in_dim(cols, block_cols, start, axis=1), rows + block_rows

    init = (jnp.zeros((num_columns_out, d), x.dtype), jnp.zeros(rows_out, jnp.float32))
    return lax.fori_loop(0, -(-d // c), body, init)


def _no_nan(x: Array) -> Array:
    return jnp.where(jnp.isnan(x), jnp.inf, x)


def _kth_block(x: Array, k: int) -> tuple[Array, Array]:
    """k-th smallest and k-th largest of each column of a float32 block (NaN as +inf)."""
    n = x.shape[0]
    ranks = (k, n - 1 - k)
    if n > NETWORK_MAX_N:
        lo, hi = (key_float(v) for v in _select_keys(float_key(x), ranks))
        return lo, hi

    def network(x):
        return tuple(key_float(v) for v in _network_select([float_key(_no_nan(x[i])) for i in range(n)], ranks))

    # XLA fuses a network's cheap min/max into every consumer (recomputing it for each entry of
    # the [n, c] masks built from lo/hi, ~20x slower) and sinks it into loops that use it. A
    # conditional's results are always stored: the predicate is false (x is NaN-free), but XLA
    # cannot know it.
    unreachable = lambda x: (x[0], x[0])
    return lax.cond(jnp.isnan(_no_nan(x[0, 0])), unreachable, network, x)


def _sorted_kth(x: Array, k: int) -> tuple[Array, Array]:
    s = jnp.sort(x, axis=0)
    return s[k], s[x.shape[0] - 1 - k]


def _check_rank(n: int, k, trimmed: bool) -> None:
    valid = not isinstance(k, bool) and isinstance(k, (int, np.integer)) and 0 <= (2 * k if trimmed else k) < n
    if not valid:
        raise ValueError(
            f"trimmed mean: k must be an integer with 0 <= 2k < n={n}, got {k!r}"
            if trimmed
            else f"order statistics: k must be an integer in [0, n={n}), got {k!r}"
        )


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def kth_smallest_and_largest(x: Array, k: int) -> tuple[Array, Array]:
    """Per column of ``x [n, d]``: the k-th smallest and the k-th largest value (0-indexed).

    Exact (the values a full sort would give at positions ``k`` and ``n - 1 - k``), ties and
    infinities included. NaN counts as +inf (as ``_common.sanitize`` maps it; sanitizing first is
    unnecessary and costs a copy of ``x``). Differentiable: an output's tangent is that of the
    entry holding it (averaged over tied entries).

    Args:
      x: ``[n, d]`` values.
      k: static rank, ``0 <= k < n``.

    Returns:
      ``(lo [d], hi [d])``.
    """
    n, d = x.shape
    _check_rank(n, k, trimmed=False)
    if x.dtype in (jnp.float16, jnp.bfloat16):
        lo, hi = kth_smallest_and_largest(x.astype(jnp.float32), k)
        return lo.astype(x.dtype), hi.astype(x.dtype)
    if x.dtype != jnp.float32 or d == 0:
        return _sorted_kth(_no_nan(x), k)
    if n <= NETWORK_MAX_N:  # one fused pass over x
        return _kth_block(x, k)
    (lo, hi), _ = _over_column_blocks(
        x, lambda block, fresh: (jnp.stack(_kth_block(_no_nan(block), k)), jnp.zeros(0)), 2, 0
    )
    return lo, hi


@kth_smallest_and_largest.defjvp
def _kth_jvp(k, primals, tangents):
    (x,), (t,) = primals, tangents
    lo, hi = kth_smallest_and_largest(x, k)
    x = _no_nan(x)

    def tie_mean(v):
        total, count = _reduce_rows(
            [(lambda r, s: jnp.where(r == v, s, jnp.zeros_like(s)), jnp.add), _counter(lambda r, s: r == v, jnp.int32)],
            x,
            t,
        )
        return total / jnp.maximum(count, 1).astype(t.dtype)

    return (lo, hi), (tie_mean(lo), tie_mean(hi))


def _trim_stats(x: Array, lo: Array, hi: Array, k: int, aggregate: bool = True) -> tuple[Array, Array, Array, Array]:
    """Per column of ``x [n, c]`` given its ``lo``/``hi``: the trimmed mean (or 0 when
    ``aggregate`` is false), the kept slots of each entry equal to ``lo`` and to ``hi``, and
    whether all n entries are equal."""
    n = x.shape[0]
    kept = n - 2 * k
    count_reductions, unpack = _count_pairs(
        [lambda r: r <= lo, lambda r: r < hi, lambda r: r == lo, lambda r: r == hi], n
    )
    # With at most 2 kept values (the median) they are lo and hi: no sum of the inner values.
    inner = [] if kept <= 2 or not aggregate else [(lambda r: jnp.where((r > lo) & (r < hi), r, 0.0), jnp.add)]
    results = _reduce_rows(count_reductions + inner, x)
    n_le_lo, n_lt_hi, n_at_lo, n_at_hi = (c.astype(x.dtype) for c in unpack(results[: len(count_reductions)]))
    inner_sum = results[-1] if inner else 0.0
    slots_lo = n_le_lo - k  # kept ranks taken by values equal to lo
    slots_hi = (n - k) - n_lt_hi  # kept ranks taken by values equal to hi
    same = lo == hi
    # lo and hi are finite unless more than k values are infinite (beyond the rule's f).
    ends = jnp.where(slots_lo > 0, lo * slots_lo, 0.0) + jnp.where(slots_hi > 0, hi * slots_hi, 0.0)
    mean = jnp.where(same, lo, (inner_sum + ends) / kept) if aggregate else jnp.zeros_like(lo)
    share_lo = jnp.where(same, kept / n_at_lo, slots_lo / jnp.maximum(n_at_lo, 1.0))
    share_hi = jnp.where(same, 0.0, slots_hi / jnp.maximum(n_at_hi, 1.0))
    return mean, share_lo, share_hi, n_at_lo == n


def _kept_slots(r: Array, lo: Array, hi: Array, inner: Array, share_lo: Array, share_hi: Array) -> Array:
    """Kept slots an entry ``r`` fills: ``inner`` strictly between lo and hi, else its tie share."""
    return (
        jnp.where((r > lo) & (r < hi), inner, 0.0)
        + jnp.where(r == lo, share_lo, 0.0)
        + jnp.where(r == hi, share_hi, 0.0)
    )


MASS_CAP = 2.0**100
"""Magnitude an entry counts with in the kept-mass shares at most (infinite entries count as it)."""


def _trimmed_block(x: Array, k: int, fresh: Array, lo: Array, hi: Array) -> tuple[Array, Array]:
    """Trimmed mean of the columns of NaN-free ``x [n, c]`` given their ``lo``/``hi``, and per row,
    summed over the ``fresh`` columns, ``[kept slots, kept mass, mass]`` (``[3n]``; see
    ``trimmed_mean_and_kept_mass``)."""
    aggregate, share_lo, share_hi, everyone = _trim_stats(x, lo, hi, k)
    zero = jnp.zeros_like(lo)
    per_coord = _kept_slots(
        x, lo, hi, jnp.where(fresh, 1.0, zero), jnp.where(fresh, share_lo, zero), jnp.where(fresh, share_hi, zero)
    )
    mass = jnp.where(fresh & ~everyone, jnp.minimum(jnp.abs(x), MASS_CAP), 0.0)  # columns where all tie: none
    ones = jnp.ones(x.shape[1], x.dtype)
    rows = [jnp.dot(r, ones, precision=lax.Precision.HIGHEST) for r in (per_coord, per_coord * mass, mass)]
    return aggregate, jnp.concatenate(rows)


def trimmed_mean_with_shares(x: Array, k: int) -> tuple[Array, Array]:
    """``trimmed_mean_and_kept_mass`` without the kept-mass shares: ``(aggregate, shares)``."""
    aggregate, shares, _ = trimmed_mean_and_kept_mass(x, k)
    return aggregate, shares


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def trimmed_mean_and_kept_mass(x: Array, k: int) -> tuple[Array, Array, Array]:
    """Coordinate-wise mean of the ``n - 2k`` middle values, each client's share, and the share
    of each client's update that the rule kept.

    Differentiable in ``x``: the aggregate's tangent is the mean of the kept entries' tangents
    (tied entries at ``lo`` / ``hi`` sharing their slots); the shares are piecewise constant.

    Args:
      x: ``[n, d]`` updates; NaN counts as +inf (no need to ``_common.sanitize`` first).
      k: how many values to drop at each end, ``0 <= k < n / 2``.

    Returns:
      ``(aggregate [d], shares [n], kept_mass [n])`` where ``shares[i]`` is the fraction of the
      kept slots, averaged over coordinates, that client i filled (ties at ``lo`` / ``hi`` split
      evenly), and ``kept_mass[i]`` the share of client i's update, weighing each entry by its
      magnitude (at most ``MASS_CAP``, so infinite entries outweigh finite ones), that lies in
      kept slots, over the coordinates where not all n values are equal: zero entries and
      all-equal coordinates weigh nothing (1 for a client with no such mass).
    """
    n, d = x.shape
    _check_rank(n, k, trimmed=True)
    dtype = x.dtype
    if dtype in (jnp.float16, jnp.bfloat16):
        x = x.astype(jnp.float32)

    def block_fn(block, fresh, *lo_hi):
        block = _no_nan(block)
        if not lo_hi:
            lo_hi = _kth_block(block, k) if block.dtype == jnp.float32 else _sorted_kth(block, k)
        aggregate, rows = _trimmed_block(block, k, fresh, *lo_hi)
        return aggregate[None], rows

    if x.dtype != jnp.float32 or d == 0:
        (aggregate,), rows = block_fn(x, jnp.ones(d, bool))
    elif n <= NETWORK_MAX_N:  # the network in one pass over x, then the blocked reductions
        (aggregate,), rows = _over_column_blocks(x, block_fn, 1, 3 * n, *_kth_block(x, k))
    else:
        (aggregate,), rows = _over_column_blocks(x, block_fn, 1, 3 * n)
    slots, kept, mass = rows[:n], rows[n : 2 * n], rows[2 * n :]
    shares = slots / (max(d, 1) * (n - 2 * k))
    kept_mass = jnp.where(mass > 0, kept / jnp.where(mass > 0, mass, 1.0), 1.0)
    return aggregate.astype(dtype), shares, kept_mass


@trimmed_mean_and_kept_mass.defjvp
def _trimmed_jvp(k, primals, tangents):
    (x,), (t,) = primals, tangents
    aggregate, shares, kept_mass = trimmed_mean_and_kept_mass(x, k)
    x = _no_nan(x)
    lo, hi = kth_smallest_and_largest(x, k)
    _, share_lo, share_hi, _ = _trim_stats(x, lo, hi, k, aggregate=False)
    one = jnp.ones_like(lo)
    weighted = _reduce_rows(
        [(lambda r, s: _kept_slots(r, lo, hi, one, share_lo, share_hi).astype(s.dtype) * s, jnp.add)], x, t
    )[0]
    return (aggregate, shares, kept_mass), (
        (weighted / (x.shape[0] - 2 * k)).astype(aggregate.dtype),
        jnp.zeros_like(shares),
        jnp.zeros_like(kept_mass),
    )
