"""Near-duplicates and leaks: perceptual hashes, an exact Hamming-radius search, a semantic pass.

Three questions about a (synthetic) dataset, answered in one pass:

- **within the set**: which samples nearly repeat each other? Connected clusters of near-duplicate
  pairs; one sample per cluster is kept (the first by sorted key), the rest are removed;
- **against a held-out split** (``against``, e.g. the real TEST split): which samples nearly copy a test
  image? Those are *leaks* and are always removed: a synthetic image that matches a test image must
  never stay in a training pool;
- **against the real training split** (``report_against``): which samples nearly copy a training image?
  That is *memorisation*; its rate is reported and nothing is removed (pass the split as ``against``
  instead to drop them).

Hashes are perceptual hashes from ``imagehash`` (phash, dhash, whash; ``hash_size`` x ``hash_size``
bits), stored as ``uint64`` words, so a 64-bit phash is one word and a 256-bit one four. When a
dataset already carries the write-time ``phash`` in its provenance and the 8x8 phash is asked for,
it is reused and no image is decoded.

The search (:func:`hamming_pairs`) returns exactly the pairs that brute force returns, without
comparing all pairs. It is multi-index hashing (Norouzi, Punjani and Fleet, "Fast search in Hamming
space with multi-index hashing", CVPR 2012): the bits are cut into ``m`` blocks; if two hashes differ
in at most ``d = r*m + a`` bits (``0 <= a < m``), then one of the first ``a + 1`` blocks differs in at
most ``r`` bits or one of the others in at most ``r - 1`` (pigeonhole). Every block is a bucket
table; each hash probes the buckets within that block radius, candidates are verified on the full
hash, and a pair found in block ``k`` is kept only if no earlier block would have found it, so each
pair comes out once. Everything is vectorised with numpy and processed in bounded chunks.

Perceptual hashes miss many near-duplicates (flips, recolourings, re-generations of the same
prompt), so :func:`semantic_pairs` adds a pass on image embeddings: pairs with cosine similarity
``>= threshold``, computed block by block so that memory stays bounded. :func:`find_duplicates`
runs it when given an ``embed(list[PIL.Image]) -> np.ndarray`` callable.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from itertools import combinations
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from factory.config import DEFAULT_SEMANTIC_THRESHOLD
from factory.core.errors import FactoryError
from factory.core.sample import Sample

log = logging.getLogger(__name__)




MAX_BLOCK_BITS = 22  # bucket tables hold 2**bits int32 counts: at most 16 MiB each


DEFAULT_CHUNK = 1 << 21  # candidate pairs verified at once


Embedder = Callable[[list], np.ndarray]


Progress = Callable[[Iterable[Sample], str, "int | None"], Iterable[Sample]]


def n_words(nbits: int) -> int:
    return (nbits + 63) // 64


def words_from_hex(hexes: Sequence[str], nbits: int) -> np.ndarray:
    """Hex hashes (as ``str(imagehash.ImageHash)``) -> an ``(N, W)`` uint64 array.

    Word ``k`` holds bits ``64k .. 64k+63`` of the hash read as one big integer, so word 0 holds the
    lowest bits and the zero padding of a hash whose bits are not a multiple of 64 sits above bit
    ``nbits``.
    """
    w = n_words(nbits)
    digits = (nbits + 3) // 4
    for h in hexes:
        if len(h) != digits:
            raise FactoryError(f"hash {h!r} has {len(h)} hex digits; a {nbits}-bit hash has {digits}")
    try:
        raw = bytes.fromhex("".join(h.rjust(16 * w, "0") for h in hexes))
    except ValueError:
        raise FactoryError("hashes must be hex strings") from None
    arr = np.frombuffer(raw, dtype=">u8").reshape(len(hexes), w)[:, ::-1]
    return np.ascontiguousarray(arr, dtype=np.uint64)


def hex_from_words(words: np.ndarray, nbits: int) -> list[str]:
    """The inverse of :func:`words_from_hex`."""
    words = as_words(words)
    digits = (nbits + 3) // 4
    raw = np.ascontiguousarray(words[:, ::-1]).astype(">u8").tobytes()
    step = 8 * words.shape[1]
    return [raw[k:k + step].hex()[-digits:] for k in range(0, len(raw), step)]


def as_words(h: np.ndarray) -> np.ndarray:
    """``(N,)`` or ``(N, W)`` unsigned 64-bit hashes -> a contiguous ``(N, W)`` uint64 array."""
    h = np.asarray(h)
    if h.dtype != np.uint64:
        if h.dtype.kind not in "ui":
            raise FactoryError(f"hashes must be an integer array of uint64 words; got dtype {h.dtype}")
        h = h.astype(np.uint64)
    if h.ndim == 1:
        h = h[:, None]
    if h.ndim != 2:
        raise FactoryError(f"hashes must be a (N,) or (N, words) array; got shape {h.shape}")
    return np.ascontiguousarray(h)


def _popcount_rows(x: np.ndarray) -> np.ndarray:
    """Bits set per row of an ``(n, W)`` uint64 array (int32)."""
    if x.shape[1] == 1:
        return np.bitwise_count(x[:, 0]).astype(np.int32)
    return np.bitwise_count(x).sum(axis=1, dtype=np.int32)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise Hamming distance between two ``(n, W)`` hash arrays."""
    return _popcount_rows(as_words(a) ^ as_words(b))


@dataclass(frozen=True)
class Pairs:
    """Index pairs ``(i[k], j[k])`` and their distance (Hamming) or similarity (cosine), sorted by
    ``(i, j)``. Within one set, ``i < j``."""

    i: np.ndarray
    j: np.ndarray
    value: np.ndarray

    def __len__(self) -> int:
        return len(self.i)

    def tolist(self) -> list[tuple[int, int, Any]]:
        return list(zip(self.i.tolist(), self.j.tolist(), self.value.tolist()))

    @staticmethod
    def build(i: list[np.ndarray], j: list[np.ndarray], v: list[np.ndarray], dtype: Any) -> "Pairs":
        ii = np.concatenate(i).astype(np.int64) if i else np.zeros(0, np.int64)
        jj = np.concatenate(j).astype(np.int64) if j else np.zeros(0, np.int64)
        vv = np.concatenate(v).astype(dtype) if v else np.zeros(0, dtype)
        order = np.lexsort((jj, ii))
        return Pairs(ii[order], jj[order], vv[order])


@dataclass(frozen=True)
class Block:
    """Bits ``start .. start+width-1`` of the hash, probed up to ``radius`` flipped bits."""

    start: int
    width: int
    radius: int


def _n_patterns(width: int, radius: int) -> int:
    return sum(math.comb(width, k) for k in range(radius + 1))


def split_blocks(nbits: int, max_distance: int, m: int) -> list[Block]:
    """Cut ``nbits`` into ``m`` near-equal blocks and give each its probe radius (pigeonhole).

    With ``d = r*m + a``: blocks ``0..a`` get radius ``r``, the others ``r - 1`` (those with a
    negative radius are left out, they can never be the block that finds a pair).
    """
    r, a = divmod(max_distance, m)
    blocks, start = [], 0
    for k in range(m):
        width = nbits // m + (1 if k < nbits % m else 0)
        radius = r if k <= a else r - 1
        if radius >= 0 and width > 0:
            blocks.append(Block(start, width, radius))
        start += width
    return blocks


def plan_blocks(nbits: int, max_distance: int, n_queries: int, n_table: int) -> list[Block]:
    """Choose the number of blocks that minimises a simple cost model: every probe scans the
    queries once, every candidate costs about twice as much as a scanned query (measured), every
    block sorts both sides and fills a table of ``2**width`` buckets. Blocks are at most
    MAX_BLOCK_BITS wide."""
    m_min = max(1, -(-nbits // MAX_BLOCK_BITS))
    m_max = max(m_min, min(max_distance + 1, nbits))
    best, best_cost = None, math.inf
    for m in range(m_min, m_max + 1):
        blocks = split_blocks(nbits, max_distance, m)
        cost = 0.0
        for b in blocks:
            probes = _n_patterns(b.width, b.radius)
            candidates = n_queries * n_table / 2.0 ** b.width
            cost += probes * (n_queries + 2.0 * candidates) + 0.3 * 2.0 ** b.width + 8.0 * (n_queries + n_table)
        if cost < best_cost:
            best, best_cost = blocks, cost
    assert best is not None
    return best


def block_keys(words: np.ndarray, block: Block) -> np.ndarray:
    """The value of one block of bits for every hash, as uint32 (blocks are at most 32 bits wide)."""
    w0, off = divmod(block.start, 64)
    key = words[:, w0] >> np.uint64(off)
    if off + block.width > 64:
        key = key | (words[:, w0 + 1] << np.uint64(64 - off))
    key = key & np.uint64((1 << block.width) - 1)
    return key.astype(np.uint32)


def _patterns(width: int, radius: int) -> Iterator[int]:
    for k in range(radius + 1):
        for bits in combinations(range(width), k):
            yield sum(1 << b for b in bits)


def _expand(qpos: np.ndarray, pstart: np.ndarray, counts: np.ndarray,
            max_chunk: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """For every ``t``, the pairs ``(qpos[t], pstart[t] + 0 .. counts[t]-1)``, in chunks of about
    ``max_chunk`` pairs (a single query with more partners than that is one chunk)."""
    csum = np.cumsum(counts)
    lo, n = 0, len(counts)
    while lo < n:
        base = int(csum[lo - 1]) if lo else 0
        hi = max(int(np.searchsorted(csum, base + max_chunk, side="right")), lo + 1)
        c = counts[lo:hi]
        total = int(csum[hi - 1]) - base
        first = (csum[lo:hi] - base) - c  # offset of each query's first pair in this chunk
        q = np.repeat(qpos[lo:hi], c)
        p = np.repeat(pstart[lo:hi] - first, c) + np.arange(total)
        yield q, p
        lo = hi


class _Side:
    """One set of hashes sorted by the key of one block, with its bucket table."""

    def __init__(self, words: np.ndarray, keys: np.ndarray, width: int, table: bool) -> None:
        self.order = np.argsort(keys, kind="stable")
        self.keys = keys[self.order]
        self.words = words[self.order]
        if table:
            self.count = np.bincount(self.keys, minlength=1 << width).astype(np.int32)
            self.start = (np.cumsum(self.count, dtype=np.int64) - self.count).astype(np.int64)


def hamming_pairs(a: np.ndarray, b: np.ndarray | None = None, max_distance: int = 8, *,
                  nbits: int | None = None, blocks: int | None = None,
                  max_chunk: int = DEFAULT_CHUNK) -> Pairs:
    """All pairs of hashes within Hamming distance ``max_distance``: exactly brute force's answer.

    ``a`` (and ``b``) are ``(N,)`` uint64 hashes or ``(N, W)`` arrays of uint64 words. With ``b``
    None, pairs ``i < j`` within ``a``; otherwise pairs ``(i in a, j in b)``. ``nbits`` (default
    ``64 * W``) is the number of meaningful low bits; ``blocks`` forces the number of blocks
    (default: chosen by a cost model). Memory beyond the inputs and the result is bounded by
    ``max_chunk`` candidate pairs and one bucket table.
    """
    A = as_words(a)
    within = b is None
    B = A if within else as_words(b)
    if A.shape[1] != B.shape[1]:
        raise FactoryError(f"hashes of different lengths: {A.shape[1]} and {B.shape[1]} words")
    nbits = 64 * A.shape[1] if nbits is None else int(nbits)
    if not 0 < nbits <= 64 * A.shape[1]:
        raise FactoryError(f"nbits must be in 1..{64 * A.shape[1]}; got {nbits}")
    if max_distance < 0:
        raise FactoryError(f"max distance must be >= 0; got {max_distance}")
    n, m = len(A), len(B)
    if n == 0 or m == 0 or (within and n < 2):
        return Pairs.build([], [], [], np.int32)
    if blocks is None:
        plan = plan_blocks(nbits, max_distance, n, m)
    else:
        lowest = -(-nbits // MAX_BLOCK_BITS)
        if not lowest <= blocks <= nbits:
            raise FactoryError(f"blocks must be in {lowest}..{nbits} for {nbits} bits; got {blocks}")
        plan = split_blocks(nbits, max_distance, blocks)
    log.debug("hamming search: %d x %d hashes, d=%d, blocks %s", n, m, max_distance, plan)

    keys_a = [block_keys(A, blk) for blk in plan]
    keys_b = keys_a if within else [block_keys(B, blk) for blk in plan]
    out_i: list[np.ndarray] = []
    out_j: list[np.ndarray] = []
    out_d: list[np.ndarray] = []

    def verify(k: int, qa: _Side, tb: _Side, tq: np.ndarray, tp: np.ndarray) -> None:
        """Keep candidate pairs (sorted positions tq in qa, tp in tb) that are within range and that
        no earlier block finds."""
        dist = _popcount_rows(qa.words[tq] ^ tb.words[tp])
        ok = dist <= max_distance
        if not ok.any():
            return
        i, j, dist = qa.order[tq[ok]], tb.order[tp[ok]], dist[ok]
        for e in range(k):
            found_before = np.bitwise_count(keys_a[e][i] ^ keys_b[e][j]) <= plan[e].radius
            i, j, dist = i[~found_before], j[~found_before], dist[~found_before]
        if within:
            i, j = np.minimum(i, j), np.maximum(i, j)
        out_i.append(i)
        out_j.append(j)
        out_d.append(dist)

    def probe(k: int, query: _Side, table: _Side, keys: np.ndarray, where: np.ndarray | None, p: int) -> None:
        """Candidates: query positions (``where``, default all) against the table bucket ``key ^ p``."""
        target = keys ^ np.uint32(p)
        counts = table.count[target]
        nz = np.flatnonzero(counts)
        if len(nz) == 0:
            return
        qpos = nz if where is None else where[nz]
        for tq, tp in _expand(qpos, table.start[target[nz]], counts[nz], max_chunk):
            verify(k, query, table, tq, tp)

    for k, blk in enumerate(plan):
        table = _Side(B, keys_b[k], blk.width, table=True)
        if not within:
            query = _Side(A, keys_a[k], blk.width, table=False)
            for p in _patterns(blk.width, blk.radius):
                probe(k, query, table, query.keys, None, p)
            continue
        # Within one set, the bucket pair (key, key ^ p) would be seen from both sides: probe only
        # from the keys where the top bit of p is 0, i.e. patterns grouped by their top bit.
        # p = 0 first: each sorted position pairs with the later positions of its own bucket.
        positions = np.arange(n, dtype=np.int64)
        counts = table.start[table.keys] + table.count[table.keys] - positions - 1
        nz = np.flatnonzero(counts)
        for tq, tp in _expand(nz, nz + 1, counts[nz], max_chunk):
            verify(k, table, table, tq, tp)
        for top in range(blk.width):
            if blk.radius == 0:
                break
            where = np.flatnonzero((table.keys & np.uint32(1 << top)) == 0)
            sub = table.keys[where]
            for p in _patterns(top, blk.radius - 1):
                probe(k, table, table, sub, where, p | (1 << top))
    return Pairs.build(out_i, out_j, out_d, np.int32)


def hamming_pairs_bruteforce(a: np.ndarray, b: np.ndarray | None = None, max_distance: int = 8, *,
                             max_chunk: int = 1 << 22) -> Pairs:
    """The reference answer: XOR and popcount of every pair, in row chunks (O(N*M) work)."""
    A = as_words(a)
    within = b is None
    B = A if within else as_words(b)
    n, m, w = len(A), len(B), A.shape[1]
    rows = max(1, max_chunk // max(1, m * w))
    out_i, out_j, out_d = [], [], []
    for i0 in range(0, n, rows):
        i1 = min(n, i0 + rows)
        j0 = i0 + 1 if within else 0
        if j0 >= m:
            break
        if w == 1:
            dist = np.bitwise_count(A[i0:i1, 0, None] ^ B[None, j0:, 0])
        else:
            dist = np.bitwise_count(A[i0:i1, None, :] ^ B[None, j0:, :]).sum(axis=2, dtype=np.int32)
        mask = dist <= max_distance
        if within:  # row i pairs only with j > i
            mask &= (np.arange(j0, m)[None, :] > np.arange(i0, i1)[:, None])
        ii, jj = np.nonzero(mask)
        out_i.append(ii + i0)
        out_j.append(jj + j0)
        out_d.append(dist[ii, jj])
    return Pairs.build(out_i, out_j, out_d, np.int32)


def check_normalized(x: np.ndarray, name: str, atol: float = 1e-3) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or x.dtype.kind != "f":
        raise FactoryError(f"{name}: embeddings must be a 2-D float array (N x D); got {x.dtype} {x.shape}")
    if len(x) and not np.all(np.abs(np.linalg.norm(x, axis=1) - 1.0) <= atol):
        raise FactoryError(f"{name}: embeddings must be L2-normalised (every row of norm 1)")
    return x.astype(np.float32, copy=False)


def normalize_rows(x: np.ndarray, name: str = "embeddings") -> np.ndarray:
    """Divide every row by its L2 norm (float32); a zero row is an error."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise FactoryError(f"{name}: embeddings must be 2-D (N x D); got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if np.any(norms == 0) or not np.all(np.isfinite(norms)):
        raise FactoryError(f"{name}: an embedding is zero or not finite; cannot normalise it")
    return x / norms


def semantic_pairs(a: np.ndarray, b: np.ndarray | None = None, threshold: float = DEFAULT_SEMANTIC_THRESHOLD,
                   *, block: int = 2048) -> Pairs:
    """Pairs of L2-normalised embeddings with cosine similarity ``>= threshold``.

    ``a`` is N x D, ``b`` M x D (None: pairs ``i < j`` within ``a``). The similarity matrix is
    computed ``block`` x ``block`` at a time, so memory stays bounded whatever N and M.
    """
    A = check_normalized(a, "a")
    within = b is None
    B = A if within else check_normalized(b, "b")
    if len(A) == 0 or len(B) == 0:
        return Pairs.build([], [], [], np.float32)
    if A.shape[1] != B.shape[1]:
        raise FactoryError(f"embeddings of different widths: {A.shape[1]} and {B.shape[1]}")
    if not -1.0 <= threshold <= 1.0:
        raise FactoryError(f"threshold is a cosine similarity in [-1, 1]; got {threshold}")
    if block < 1:
        raise FactoryError(f"block must be >= 1; got {block}")
    out_i, out_j, out_s = [], [], []
    for i0 in range(0, len(A), block):
        i1 = min(len(A), i0 + block)
        for j0 in range(i0 if within else 0, len(B), block):
            j1 = min(len(B), j0 + block)
            sim = A[i0:i1] @ B[j0:j1].T
            mask = sim >= threshold
            if within and j0 == i0:
                mask &= np.triu(np.ones(mask.shape, dtype=bool), k=1)
            ii, jj = np.nonzero(mask)
            out_i.append(ii + i0)
            out_j.append(jj + j0)
            out_s.append(sim[ii, jj])
    return Pairs.build(out_i, out_j, out_s, np.float32)


def image_hash_hex(image: Any, method: str = "phash", hash_size: int = 8) -> str:
    """The perceptual hash of a PIL image as hex (imagehash's own string form)."""
    import imagehash  # lazily: it pulls in scipy

    fn = {"phash": imagehash.phash, "dhash": imagehash.dhash, "whash": imagehash.whash}[method]
    return str(fn(image, hash_size=hash_size))
