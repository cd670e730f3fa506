"""Near-duplicate search over 64-bit perceptual hashes in sub-quadratic time: multi-index hashing.

Split the 64 bits into m bands. Two hashes within Hamming distance d differ in at most d // m bits of some band
(pigeonhole), so every pair within d is found by looking up each hash's band values, and the band values within
d // m bits of them, in that band's sorted table; each candidate is then verified on all 64 bits. m is chosen
to make that cheapest for the number of hashes: with d + 1 bands the lookups are exact (radius 0) but the bands
are narrow and their buckets crowded; with fewer, wider bands the buckets are nearly empty and each hash probes a
few hundred neighbouring band values instead. Only numpy arrays: 8 bytes per hash, plus the sorted band table
(16 bytes per hash, one band at a time) and the candidates of one chunk.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

HASH_BITS = 64
CHUNK = 1 << 20  # hashes looked up at once: bounds the lookup arrays of one step
# Candidate pairs verified at once. Real perceptual hashes are not uniform: their bands crowd into few values, and
# a chunk of queries can meet millions of candidates (50,000 generated images: +95 MiB in one step before this
# bound); each candidate costs ~60 bytes of temporary arrays while it is verified.
MAX_CANDIDATES = 1 << 19
DENSE_BITS = 24  # bands up to this wide get a bucket-start table (2**bits + 1 int64) instead of binary search


def _bands(m: int) -> list[tuple[int, int]]:
    """(shift, bits) of m near-equal bands covering the 64 bits."""
    widths = [HASH_BITS // m + (1 if k < HASH_BITS % m else 0) for k in range(m)]
    shifts = [sum(widths[:k]) for k in range(m)]
    return list(zip(shifts, widths, strict=True))


def _probes(bits: int, radius: int) -> int:
    return sum(math.comb(bits, k) for k in range(radius + 1))


def plan(n: int, max_distance: int) -> int:
    """The number of bands that minimises the estimated work: probes per hash times (1 + expected bucket size)
    for uniformly spread hashes, summed over the bands."""
    best, best_cost = 1, math.inf
    for m in range(1, max_distance + 2):
        cost = 0.0
        for _, bits in _bands(m):
            cost += _probes(bits, max_distance // m) * n * (1 + n / 2**bits)
        if cost < best_cost:
            best, best_cost = m, cost
    return best


def _flips(bits: int, radius: int) -> np.ndarray:
    """Every value of `bits` bits with at most `radius` bits set (XOR masks to probe with)."""
    masks = [0]
    for k in range(1, radius + 1):
        masks += [sum(1 << b for b in chosen) for chosen in itertools.combinations(range(bits), k)]
    return np.array(masks, dtype=np.uint64)


def near_pairs(hashes: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs i < j with Hamming distance(hashes[i], hashes[j]) <= max_distance: arrays i, j, distance,
    sorted by (i, j)."""
    hashes = np.ascontiguousarray(hashes, dtype=np.uint64)
    n = len(hashes)
    empty = np.zeros(0, dtype=np.int64)
    if n < 2 or max_distance < 0:
        return empty, empty, empty.astype(np.uint8)
    m = plan(n, max_distance)
    radius = max_distance // m
    found = []
    for shift, bits in _bands(m):
        values = (hashes >> np.uint64(shift)) & np.uint64((1 << bits) - 1)
        order = np.argsort(values, kind="stable")
        table = values[order]
        # the first position of each band value in `table`: a direct lookup, where a binary search over a million
        # values is ~20 cache misses per probe
        starts = None
        if bits <= DENSE_BITS:
            starts = np.zeros((1 << bits) + 1, dtype=np.int64)
            np.cumsum(np.bincount(values.astype(np.int64), minlength=1 << bits), out=starts[1:])
        for flip in _flips(bits, radius):
            for start in range(0, n, CHUNK):
                query = values[start:start + CHUNK] ^ flip
                if starts is not None:
                    lo, hi = starts[query.astype(np.int64)], starts[query.astype(np.int64) + 1]
                else:
                    lo = np.searchsorted(table, query, "left")
                    hi = np.searchsorted(table, query, "right")
                counts = hi - lo
                ends = np.cumsum(counts)
                # runs of queries with at most MAX_CANDIDATES candidates together (a single query may have more)
                cut, a = 0, 0
                while a < len(query):
                    b = max(int(np.searchsorted(ends, cut + MAX_CANDIDATES, "right")), a + 1)
                    found.append(_close(hashes, order, start + a, lo[a:b], counts[a:b], max_distance))
                    cut, a = int(ends[b - 1]), b
    found = [keys for keys in found if len(keys)]
    if not found:
        return empty, empty, empty.astype(np.uint8)
    keys = np.unique(np.concatenate(found))
    i, j = keys // n, keys % n
    return i, j, np.bitwise_count(hashes[i] ^ hashes[j]).astype(np.uint8)


def _close(hashes: np.ndarray, order: np.ndarray, start: int, lo: np.ndarray, counts: np.ndarray,
           max_distance: int) -> np.ndarray:
    """Keys i * n + j of the candidates (queries start.., each with the table's run lo, lo + count) within
    max_distance, i < j."""
    total = int(counts.sum())
    if not total:
        return np.zeros(0, dtype=np.int64)
    i = np.repeat(np.arange(start, start + len(counts), dtype=np.int64), counts)
    first = np.repeat(lo - (np.cumsum(counts) - counts), counts)
    j = order[np.arange(total, dtype=np.int64) + first]
    keep = i < j
    i, j = i[keep], j[keep]
    close = np.bitwise_count(hashes[i] ^ hashes[j]) <= max_distance
    return i[close] * len(hashes) + j[close]
