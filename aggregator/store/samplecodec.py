"""How NØMADE packs a run of samples into one chunk, and unpacks it, losslessly.

A chunk holds the samples of one job on one node within one time window, column by column
(wire.SAMPLE_FIELDS after the job id).  Each column is turned into 64-bit integers, then into
the smallest of three streams: the values, their differences, or the differences of those
(counters grow steadily, so their second differences are near zero); the stream is divided by
a page, a sector or a power of ten where all its values are multiples of one (memory moves in
pages, cgroup v1 counts CPU time in 10 ms ticks),
zigzagged so that small negatives stay small, stored in the narrowest of 1, 2, 4 or 8 bytes
per value with its bytes regrouped by significance (the high, mostly-zero bytes of every
value side by side), and the whole chunk is compressed with Zstandard.

The integers a column becomes:

- an integer column: its values (booleans as 0 and 1, an integral float as its integer);
- a column with fractions (times, CPU seconds): the values times 10^k for the smallest k in
  0, 3, 6, 9 that gives them back exactly (cgroup v2's microseconds give k = 6); where none
  does (time.time() stamps), the bit patterns of the doubles, which for non-negative numbers
  increase with the value, so their differences stay small too.

None ("not available on this node") is kept as a bitmap beside the column.  Every value the
aggregator accepts (issue 7's bounds: null, or a non-negative integer below 2^63 or finite
float) comes back exactly, with one exception no agent produces: an integer past 2^53 in a
column that also holds a fraction comes back as the nearest double.  An integral float in an
integer column comes back as that integer (as SQLite's INTEGER columns did).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import numpy as np
import zstandard

from nomade_common.wire import SAMPLE_FIELDS

FIELDS: tuple[str, ...] = SAMPLE_FIELDS[1:]  # "t" and the readings, as a chunk holds them
FLOAT_FIELDS = frozenset(f for f in FIELDS if f == "t" or f.endswith("_seconds"))
MAGIC = b"NSC1"
_HEAD = struct.Struct("<4sIB")  # magic, samples, columns
_COLUMN = struct.Struct("<BBBBQ")  # kind, order, width, scale exponent or 0, divisor
ALL_NULL, INTEGER, SCALED, FLOAT_BITS = 0, 1, 2, 3
HAS_NULLS = 0x80  # on the kind: a null bitmap of ceil(samples / 8) bytes follows the header
_WIDTHS = ((0xFF, 1, np.uint8), (0xFFFF, 2, np.uint16), (0xFFFFFFFF, 4, np.uint32))
# Differences are taken in 64-bit arithmetic that wraps, and undone the same way, so any
# integers (a double's bit pattern too) difference exactly.  Only a divisor other than a power
# of two needs the differences unwrapped: values below _SAFE; and scaling must stay below it.
_SAFE = 1 << 62
# Tried in turn on each column's stream: a page, a sector, and the decimal steps of counters
# kept in clock ticks (cgroup v1's cpuacct.stat counts 10 ms: 10 at the millisecond scale).
_DIVISORS = (4096, 512, 10000, 1000, 100, 10)
_LEVEL = 3  # Zstandard's default: 2x better than zlib's default here, 5x faster
_compressor = zstandard.ZstdCompressor(level=_LEVEL)
_decompressor = zstandard.ZstdDecompressor()


class ChunkError(ValueError):
    """Bytes that are not a chunk this code wrote (damaged on disk, or from a newer NØMADE)."""


# -- packing ---------------------------------------------------------------------------------
EXACT = float(1 << 53)  # integers below this are exact in a double
_TOP = float(1 << 63)


def matrix(
    rows: Sequence[Sequence[Any]], fields: Sequence[str] = FIELDS
) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """ROWS (FIELDS each: [t, *readings] by default) as a float64 matrix (None as NaN), and the
    integer columns whose values a double cannot hold exactly (past 2^53), exactly, by column
    index."""
    m = np.array(rows, dtype=np.float64).reshape(len(rows), len(fields))
    exact: dict[int, np.ndarray] = {}
    if len(rows) and np.nanmax(m, initial=0.0) >= EXACT:
        big = np.nonzero(np.nanmax(m, axis=0, initial=0.0) >= EXACT)[0]
        for c in big.tolist():
            if fields[c] in FLOAT_FIELDS:
                continue
            values = [r[c] for r in rows]
            if all(
                v is None or isinstance(v, int) or (v < _TOP and v.is_integer()) for v in values
            ):
                exact[c] = np.array([0 if v is None else int(v) for v in values], dtype=np.int64)
    return m, exact


def encode_rows(rows: Sequence[Sequence[Any]]) -> bytes:
    """ROWS, each [t, *readings] in FIELDS order and sorted by time, as a chunk."""
    m, exact = matrix(rows)
    return encode(m, exact)


def encode(m: np.ndarray, exact: dict[int, np.ndarray] | None = None) -> bytes:
    """M (samples x FIELDS, float64, NaN for None, sorted by time) as a chunk; EXACT gives
    integer columns whose values pass 2^53 as int64, by column index."""
    return encode_many(m, np.zeros(1, dtype=np.int64), exact)[0]


_HEADER = np.dtype(
    [("kind", "u1"), ("order", "u1"), ("width", "u1"), ("scale", "u1"), ("div", "<u8")]
)
assert _HEADER.itemsize == _COLUMN.size


def encode_many(
    m: np.ndarray, starts: np.ndarray, exact: dict[int, np.ndarray] | None = None
) -> list[bytes]:
    """The rows of M (samples x FIELDS as in `encode`) cut at STARTS (the first row of each
    chunk, ascending, STARTS[0] = 0) as one chunk each.  Every choice (scale, stream, divisor,
    width) is made per chunk and column, over all chunks at once."""
    n, ncols = m.shape
    if ncols != len(FIELDS):
        raise ValueError(f"a chunk has {len(FIELDS)} columns, not {ncols}")
    if n == 0:
        return [_compressor.compress(_HEAD.pack(MAGIC, 0, ncols) + _empty_columns(ncols))]
    starts = np.asarray(starts, dtype=np.int64)
    lengths = np.diff(starts, append=n)
    seg = np.repeat(np.arange(len(starts)), lengths)  # each row's chunk

    def per_chunk(ufunc: np.ufunc, x: np.ndarray) -> np.ndarray:
        return ufunc.reduceat(x, starts, axis=0)

    nan = np.isnan(m)
    has_nulls = per_chunk(np.logical_or, nan)
    all_null = per_chunk(np.logical_and, nan)
    m0 = np.where(nan, 0.0, m) if has_nulls.any() else m
    top = per_chunk(np.maximum, m0)
    # Per chunk and column: the smallest power of ten that makes its values integers exactly.
    scale = np.full(top.shape, -1, dtype=np.int64)
    ints = np.zeros((n, ncols), dtype=np.int64)
    for k in (0, 3, 6, 9):
        with np.errstate(over="ignore", invalid="ignore"):
            open_ = (scale < 0) & (top * 10.0**k < _SAFE)
            cols = np.nonzero(open_.any(axis=0))[0]  # the columns some chunk still has open
            if not len(cols):
                break
            sub = m0[:, cols]
            q = np.rint(sub * 10.0**k) if k else np.rint(sub)
            fits = per_chunk(np.logical_and, (q / 10.0**k if k else q) == sub)
        done = open_[:, cols] & fits
        whole = done.all(axis=0)  # the usual case: a column that fits in every chunk
        if whole.any():
            scale[:, cols[whole]] = k
            ints[:, cols[whole]] = q[:, whole].astype(np.int64)
        some = done.any(axis=0) & ~whole
        if some.any():
            for j in np.nonzero(some)[0].tolist():
                c = cols[j]
                scale[done[:, j], c] = k
                rows = done[seg, j]
                ints[rows, c] = q[rows, j].astype(np.int64)
    bits = scale < 0
    if bits.any():
        rows = bits[seg]
        ints[rows] = m0.view(np.int64)[rows]
    kind = np.where(bits, FLOAT_BITS, SCALED)
    integer_field = np.array([f not in FLOAT_FIELDS for f in FIELDS])
    kind[integer_field[None, :] & (scale == 0)] = INTEGER
    for c, column in (exact or {}).items():
        ints[:, c] = column
        kind[:, c], scale[:, c] = INTEGER, 0
    kind[all_null] = ALL_NULL
    # The stream per chunk and column: values, differences, or differences of differences,
    # each chunk's first row differenced against zero.
    first = np.diff(ints, axis=0, prepend=np.zeros((1, ncols), dtype=np.int64))
    first[starts] = ints[starts]
    second = np.diff(first, axis=0, prepend=np.zeros((1, ncols), dtype=np.int64))
    second[starts] = first[starts]
    costs = np.stack(
        [per_chunk(np.add, np.abs(x.astype(np.float64))) for x in (ints, first, second)]
    )
    order = costs.argmin(axis=0)
    order[lengths < 2] = 0
    small = per_chunk(np.maximum, np.abs(ints.astype(np.float64))) < _SAFE
    rows_order = order[seg]
    stream = np.where(rows_order == 0, ints, np.where(rows_order == 1, first, second))
    # Memory and block I/O move in pages and sectors: divide those steps out.
    divisor = np.ones(top.shape, dtype=np.int64)
    nonzero = per_chunk(np.logical_or, stream != 0)
    # Pages and sectors in every column; powers of ten only where fractions were scaled (CPU
    # seconds), whose values are small enough to difference without wrapping.
    decimal = (kind == SCALED) & (scale > 0) & small
    for d in _DIVISORS:
        open_ = (divisor == 1) & nonzero & (decimal if d & (d - 1) else True)
        cols = np.nonzero(open_.any(axis=0))[0]
        if not len(cols):
            continue
        sub = stream[:, cols]
        rest = sub & (d - 1) if d & (d - 1) == 0 else sub % d
        whole = open_[:, cols] & per_chunk(np.logical_and, rest == 0)
        divisor[:, cols] = np.where(whole, d, divisor[:, cols])
    if (divisor > 1).any():
        stream = stream // divisor[seg]
    zigzag = ((stream << 1) ^ (stream >> 63)).view(np.uint64)
    top_z = per_chunk(np.maximum, zigzag)
    width = np.select([top_z <= 0xFF, top_z <= 0xFFFF, top_z <= 0xFFFFFFFF], [1, 2, 4], 8)
    width[all_null] = 0
    header = np.zeros(top.shape, dtype=_HEADER)
    header["kind"] = kind | np.where(has_nulls & ~all_null, HAS_NULLS, 0)
    header["order"], header["width"] = order, width
    header["scale"], header["div"] = np.maximum(scale, 0), divisor
    # Every column's bytes by significance (byte 0 of all its values, then byte 1, ...), once
    # per width in use: (columns, width, samples); a chunk takes its rows of its columns.
    planes = {}  # width -> (column -> its row in the planes, the planes)
    for w, dtype in ((1, np.uint8), (2, np.uint16), (4, np.uint32), (8, np.uint64)):
        cols = np.nonzero((width == w).any(axis=0))[0]
        if len(cols):
            narrow = np.ascontiguousarray(zigzag[:, cols], dtype=dtype)
            narrow = narrow.view(np.uint8).reshape(n, len(cols), w)
            where = np.full(ncols, -1, dtype=np.int64)
            where[cols] = np.arange(len(cols))
            planes[w] = (where, np.ascontiguousarray(narrow.transpose(1, 2, 0)))
    null_cols = has_nulls & ~all_null
    out = []
    for i, (a, length) in enumerate(zip(starts.tolist(), lengths.tolist(), strict=True)):
        b = a + length
        parts = [_HEAD.pack(MAGIC, length, ncols), header[i].tobytes()]
        if null_cols[i].any():
            for c in np.nonzero(null_cols[i])[0].tolist():
                parts.append(np.packbits(nan[a:b, c]).tobytes())
        w_i = width[i]
        for w, (where, plane) in planes.items():
            cols = np.nonzero(w_i == w)[0]
            if len(cols):
                parts.append(plane[where[cols], :, a:b].tobytes())
        out.append(_compressor.compress(b"".join(parts)))
    return out


def _empty_columns(ncols: int) -> bytes:
    return np.zeros(ncols, dtype=_HEADER).tobytes()


# -- unpacking -------------------------------------------------------------------------------
class Chunk:
    """A decoded chunk: N samples; per FIELDS column its integers (INTS), how to read them
    (KIND, SCALE) and its nulls (NULLS, n x columns)."""

    __slots__ = ("n", "ints", "kind", "scale", "nulls")

    def __init__(self, n, ints, kind, scale, nulls) -> None:
        self.n, self.ints, self.kind, self.scale, self.nulls = n, ints, kind, scale, nulls

    def column(self, c: int) -> np.ndarray:
        """Column C as float64 (NaN where null): for sums, peaks and quantiles."""
        k = self.kind[c]
        if k == FLOAT_BITS:
            out = self.ints[:, c].view(np.float64).copy()
        else:
            out = self.ints[:, c].astype(np.float64)
            if k == SCALED and self.scale[c]:
                out /= 10.0 ** self.scale[c]
        if k == ALL_NULL:
            out[:] = np.nan
        elif self.nulls is not None:
            out[self.nulls[:, c]] = np.nan
        return out

    def values(self, c: int) -> list[Any]:
        """Column C exactly as it was stored, as Python numbers and None."""
        k = self.kind[c]
        if k == ALL_NULL:
            return [None] * self.n
        if k == INTEGER:
            items = self.ints[:, c].tolist()
        elif k == FLOAT_BITS:
            items = self.ints[:, c].view(np.float64).tolist()
        elif self.scale[c]:
            items = (self.ints[:, c] / 10.0 ** self.scale[c]).tolist()
        else:
            items = self.ints[:, c].astype(np.float64).tolist()
        if self.nulls is not None and self.nulls[:, c].any():
            items = [
                None if m else v for v, m in zip(items, self.nulls[:, c].tolist(), strict=True)
            ]
        return items

    def rows(self) -> list[list[Any]]:
        return [list(r) for r in zip(*(self.values(c) for c in range(len(FIELDS))), strict=True)]


def decode(chunk: bytes) -> Chunk:
    try:
        raw = _decompressor.decompress(chunk)
        magic, n, ncols = _HEAD.unpack_from(raw, 0)
    except (zstandard.ZstdError, struct.error) as exc:
        raise ChunkError(f"not a sample chunk: {exc}") from None
    if magic != MAGIC or ncols != len(FIELDS):
        raise ChunkError(f"not a sample chunk of this NØMADE (magic {magic!r}, {ncols} columns)")
    try:
        heads = [_COLUMN.unpack_from(raw, _HEAD.size + c * _COLUMN.size) for c in range(ncols)]
        pos = _HEAD.size + ncols * _COLUMN.size
        kind = np.array([h[0] & ~HAS_NULLS for h in heads], dtype=np.int64)
        order = np.array([h[1] for h in heads], dtype=np.int64)
        width = np.array([h[2] for h in heads], dtype=np.int64)
        scale = np.array([h[3] for h in heads], dtype=np.int64)
        divisor = np.array([h[4] for h in heads], dtype=np.uint64).view(np.int64)
        nulls = None
        mask_bytes = (n + 7) // 8
        for c, h in enumerate(heads):
            if h[0] & HAS_NULLS:
                if nulls is None:
                    nulls = np.zeros((n, ncols), dtype=bool)
                bits = np.frombuffer(raw, dtype=np.uint8, count=mask_bytes, offset=pos)
                nulls[:, c] = np.unpackbits(bits, count=n).astype(bool)
                pos += mask_bytes
        zigzag = np.zeros((n, ncols), dtype=np.uint64)
        for w, dtype in ((1, np.uint8), (2, np.uint16), (4, np.uint32), (8, np.uint64)):
            cols = np.nonzero(width == w)[0]
            if len(cols):
                size = n * len(cols) * w
                block = np.frombuffer(raw, dtype=np.uint8, count=size, offset=pos)
                block = block.reshape(len(cols), w, n).transpose(2, 0, 1).copy()
                zigzag[:, cols] = block.view(dtype).reshape(n, len(cols))
                pos += size
        if pos != len(raw) or not set(kind.tolist()) <= {ALL_NULL, INTEGER, SCALED, FLOAT_BITS}:
            raise ValueError("its layout does not add up")
    except (struct.error, ValueError) as exc:
        raise ChunkError(f"a damaged sample chunk: {exc}") from None
    ints = (zigzag >> np.uint64(1)).view(np.int64) ^ -(zigzag & np.uint64(1)).view(np.int64)
    ints *= divisor
    once = order >= 1
    if once.any():
        ints[:, once] = np.cumsum(ints[:, once], axis=0, dtype=np.int64)
        twice = order >= 2
        if twice.any():
            ints[:, twice] = np.cumsum(ints[:, twice], axis=0, dtype=np.int64)
    return Chunk(n, ints, kind, scale, nulls)


def decode_rows(chunk: bytes) -> list[list[Any]]:
    """CHUNK as rows [t, *readings], in time order."""
    return decode(chunk).rows()
