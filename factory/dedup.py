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

import json
import logging
import math
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from factory.errors import FactoryError
from factory.sample import Sample
from factory.shards import Dataset, DatasetWriter, atomic_write_bytes, check_output_dir

log = logging.getLogger(__name__)

REPORT_SCHEMA = "factory.dedup/1"
HASHES = ("phash", "dhash", "whash")
MIN_HASH_SIZE, MAX_HASH_SIZE = 2, 32
DEFAULT_SEMANTIC_THRESHOLD = 0.95
MAX_BLOCK_BITS = 22  # bucket tables hold 2**bits int32 counts: at most 16 MiB each
DEFAULT_CHUNK = 1 << 21  # candidate pairs verified at once

Embedder = Callable[[list], np.ndarray]
Progress = Callable[[Iterable[Sample], str, "int | None"], Iterable[Sample]]


def default_max_distance(hash_size: int) -> int:
    """The default Hamming radius: 1/8 of the bits up to 8x8 (8 for a 64-bit hash), 3/16 above
    (48 for a 256-bit hash).

    Measured with phash on the 2,000 imagenette-mini train photos (``bench/dedup.py --real``): at 8
    of 64 bits, JPEG-70 and 0.8x-resized copies are all found, 2%-cropped ones 98%, 3%-cropped 80%,
    and 1 of the 2 million pairs of distinct photos matches; 16x16 phashes of distinct photos lie
    further apart (none within 72 of 256 bits), and 48 finds 98.6% of the 2%-crops.
    """
    bits = hash_size * hash_size
    return max(1, bits // 8) if hash_size <= 8 else 3 * bits // 16


@dataclass(frozen=True)
class DedupConfig:
    """How near two images must be to count as duplicates."""

    hash: str = "phash"
    hash_size: int = 8
    max_distance: int | None = None  # None: default_max_distance(hash_size)
    semantic_threshold: float = DEFAULT_SEMANTIC_THRESHOLD  # used only when an embedder is given

    def __post_init__(self) -> None:
        if self.hash not in HASHES:
            raise FactoryError(f"dedup hash must be one of {', '.join(HASHES)}; got {self.hash!r}")
        if not isinstance(self.hash_size, int) or not MIN_HASH_SIZE <= self.hash_size <= MAX_HASH_SIZE:
            raise FactoryError(f"dedup hash size must be an integer from {MIN_HASH_SIZE} to {MAX_HASH_SIZE}; "
                               f"got {self.hash_size!r}")
        if self.hash == "whash" and self.hash_size & (self.hash_size - 1):
            raise FactoryError(f"whash needs a hash size that is a power of 2; got {self.hash_size}")
        if self.max_distance is not None and self.max_distance < 0:
            raise FactoryError(f"dedup max distance must be >= 0; got {self.max_distance}")
        if self.max_distance is not None and self.max_distance >= self.bits:
            raise FactoryError(f"dedup max distance must be below the {self.bits} bits of a "
                               f"{self.hash_size}x{self.hash_size} hash; got {self.max_distance}")
        if not -1.0 <= self.semantic_threshold <= 1.0:
            raise FactoryError(f"semantic threshold is a cosine similarity in [-1, 1]; got {self.semantic_threshold}")

    @property
    def bits(self) -> int:
        return self.hash_size * self.hash_size

    @property
    def distance(self) -> int:
        return default_max_distance(self.hash_size) if self.max_distance is None else self.max_distance


# --------------------------------------------------------------------------------------------
# Hashes as uint64 words


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


# --------------------------------------------------------------------------------------------
# The exact Hamming-radius search


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


# --------------------------------------------------------------------------------------------
# The semantic pass


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


# --------------------------------------------------------------------------------------------
# Datasets: hash (and embed) them, find pairs, decide what to remove, write the clean set


def image_hash_hex(image: Any, method: str = "phash", hash_size: int = 8) -> str:
    """The perceptual hash of a PIL image as hex (imagehash's own string form)."""
    import imagehash  # lazily: it pulls in scipy

    fn = {"phash": imagehash.phash, "dhash": imagehash.dhash, "whash": imagehash.whash}[method]
    return str(fn(image, hash_size=hash_size))


@dataclass
class HashedDataset:
    """The keys of one dataset with their hashes (and embeddings, when an embedder was given)."""

    path: Path
    keys: list[str]
    words: np.ndarray  # (N, W) uint64
    reused: int = 0  # hashes taken from provenance, without decoding the image
    embeddings: np.ndarray | None = None  # (N, D) float32, L2-normalised

    def __len__(self) -> int:
        return len(self.keys)


def hash_dataset(path: Path | str, config: DedupConfig = DedupConfig(), *, embed: Embedder | None = None,
                 batch_size: int = 64, progress: Progress | None = None) -> HashedDataset:
    """Stream a dataset once and hash every sample; with ``embed``, also embed every image (in
    batches of ``batch_size``) and L2-normalise the result."""
    ds = Dataset(path)
    reuse = config.hash == "phash" and config.hash_size == 8
    digits = (config.bits + 3) // 4
    keys: list[str] = []
    hexes: list[str] = []
    chunks: list[np.ndarray] = []
    embedded: list[np.ndarray] = []
    batch: list[Any] = []
    reused = 0
    samples: Iterable[Sample] = ds
    if progress is not None:
        samples = progress(samples, f"hash {ds.path.name}", len(ds))

    def flush_embeddings() -> None:
        if batch:
            e = np.asarray(embed(batch))  # type: ignore[misc]
            if e.ndim != 2 or len(e) != len(batch):
                raise FactoryError(f"embed() returned shape {e.shape} for {len(batch)} images; "
                                   "expected (images, dimensions)")
            embedded.append(normalize_rows(e, f"{ds.path}: embeddings"))
            batch.clear()

    for s in samples:
        keys.append(s.key)
        stored = s.provenance.get("phash")
        image = None
        if reuse and isinstance(stored, str) and len(stored) == digits:
            hexes.append(stored)
            reused += 1
        else:
            try:
                image = s.pil()
            except Exception as exc:
                raise FactoryError(f"{ds.path}: sample {s.key!r}: image does not decode ({exc})") from None
            hexes.append(image_hash_hex(image, config.hash, config.hash_size))
        if embed is not None:
            batch.append((image if image is not None else s.pil()).convert("RGB"))
            if len(batch) >= batch_size:
                flush_embeddings()
        if len(hexes) >= 65536:
            chunks.append(words_from_hex(hexes, config.bits))
            hexes.clear()
    if embed is not None:
        flush_embeddings()
    chunks.append(words_from_hex(hexes, config.bits))
    if len(set(keys)) != len(keys):
        raise FactoryError(f"{ds.path}: sample keys are not unique")
    emb = None
    if embed is not None:
        emb = np.concatenate(embedded) if embedded else np.zeros((0, 1), np.float32)
    log.info("%s: %d hashes (%d from provenance)", ds.path, len(keys), reused)
    return HashedDataset(ds.path, keys, np.concatenate(chunks), reused, emb)


@dataclass
class DedupReport:
    """What :func:`find_duplicates` found and decided. ``to_json()`` is the report file."""

    dataset: Path
    config: DedupConfig
    samples: int
    against: list[Path]
    report_against: list[Path]
    pairs: list[dict[str, Any]]
    clusters: list[dict[str, Any]]
    removed: list[str]
    reasons: dict[str, str]
    summary: dict[str, Any]
    semantic: bool = False
    reused_hashes: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": REPORT_SCHEMA,
            "dataset": str(self.dataset),
            "hash": self.config.hash,
            "hash_size": self.config.hash_size,
            "bits": self.config.bits,
            "max_distance": self.config.distance,
            "semantic_threshold": self.config.semantic_threshold if self.semantic else None,
            "against": [str(p) for p in self.against],
            "report_against": [str(p) for p in self.report_against],
            "summary": self.summary,
            "pairs": self.pairs,
            "clusters": self.clusters,
            "removed": self.removed,
            "reasons": self.reasons,
        }

    def write(self, path: Path | str) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, json.dumps(self.to_json(), indent=2, sort_keys=False).encode() + b"\n")
        return path


def _merge(hash_pairs: Pairs, sem: Pairs | None, x: HashedDataset, y: HashedDataset,
           within: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Union of hash and semantic pairs: (i, j, hamming distance, similarity or nan, found by hash)."""
    i, j = hash_pairs.i, hash_pairs.j
    by_hash = np.ones(len(i), dtype=bool)
    if sem is not None and len(sem):
        width = np.int64(len(y))
        seen = set((hash_pairs.i * width + hash_pairs.j).tolist())
        extra = np.array([c not in seen for c in (sem.i * width + sem.j).tolist()], dtype=bool)
        i = np.concatenate([i, sem.i[extra]])
        j = np.concatenate([j, sem.j[extra]])
        by_hash = np.concatenate([by_hash, np.zeros(int(extra.sum()), dtype=bool)])
    dist = hamming(x.words[i], y.words[j]) if len(i) else np.zeros(0, np.int32)
    if x.embeddings is not None and y.embeddings is not None and len(i):
        sim = np.einsum("nd,nd->n", x.embeddings[i], y.embeddings[j])
    else:
        sim = np.full(len(i), np.nan, dtype=np.float32)
    return i, j, dist, sim, by_hash


def _pair_records(i, j, dist, sim, by_hash, keys_a, keys_b, b_dataset: str, within: bool) -> list[dict[str, Any]]:
    records = []
    for ii, jj, d, s, h in zip(i.tolist(), j.tolist(), dist.tolist(), sim.tolist(), by_hash.tolist()):
        a, b = keys_a[ii], keys_b[jj]
        if within and b < a:
            a, b = b, a
        rec: dict[str, Any] = {"a": a, "b": b, "b_dataset": b_dataset, "distance": int(d),
                               "method": "hash" if h else "semantic"}
        if not math.isnan(s):
            rec["similarity"] = round(float(s), 6)
        records.append(rec)
    records.sort(key=lambda r: (r["a"], r["b"]))
    return records


def _components(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(i), dtype=np.int8), (i, j)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def find_duplicates(dataset: Path | str, *, against: Sequence[Path | str] = (),
                    report_against: Sequence[Path | str] = (), config: DedupConfig = DedupConfig(),
                    embed: Embedder | None = None, progress: Progress | None = None) -> DedupReport:
    """Near-duplicates within ``dataset``, and its matches in ``against`` (removed: leaks) and in
    ``report_against`` (reported only: memorisation).

    A pair is a duplicate when the Hamming distance of the hashes is ``<= config.distance`` or, with
    ``embed``, when the cosine similarity of the embeddings is ``>= config.semantic_threshold``.
    Removed: every sample that matches any ``against`` dataset; and in each cluster of near-duplicates
    within ``dataset`` every member except one, the first by sorted key among the members not already
    removed as leaks (none is kept if all are leaks).
    """
    dataset = Path(dataset)
    against = [Path(p) for p in against]
    report_against = [Path(p) for p in report_against]
    seen = {dataset.resolve(): "DATASET"}
    for role, paths in (("--against", against), ("--report-against", report_against)):
        for p in paths:
            Dataset(p)  # fails early, naming the path, before any hashing
            if p.resolve() in seen:
                raise FactoryError(f"{role} {p}: already given as {seen[p.resolve()]}")
            seen[p.resolve()] = f"{role} {p}"
    d, semantic = config.distance, embed is not None

    main = hash_dataset(dataset, config, embed=embed, progress=progress)
    n = len(main)
    reasons: dict[str, str] = {}
    pairs: list[dict[str, Any]] = []

    # 1. within the set
    hp = hamming_pairs(main.words, None, d, nbits=config.bits)
    sp = semantic_pairs(main.embeddings, None, config.semantic_threshold) if semantic else None
    wi, wj, wd, ws, wh = _merge(hp, sp, main, main, within=True)
    pairs += _pair_records(wi, wj, wd, ws, wh, main.keys, main.keys, str(dataset), within=True)

    # 2. against other datasets, one at a time (only one other set of hashes in memory)
    cross: list[dict[str, Any]] = []
    matched_any_report = np.zeros(n, dtype=bool)
    leaked = np.zeros(n, dtype=bool)
    for role, paths in (("against", against), ("report", report_against)):
        for p in paths:
            other = hash_dataset(p, config, embed=embed, progress=progress)
            hp = hamming_pairs(main.words, other.words, d, nbits=config.bits)
            sp = semantic_pairs(main.embeddings, other.embeddings, config.semantic_threshold) if semantic else None
            ci, cj, cd, cs, ch = _merge(hp, sp, main, other, within=False)
            records = _pair_records(ci, cj, cd, cs, ch, main.keys, other.keys, str(p), within=False)
            pairs += records
            hit = np.zeros(n, dtype=bool)
            hit[ci] = True
            if role == "against":
                leaked |= hit
                for r in records:
                    reasons.setdefault(r["a"], f"matches {r['b']} in {p} (distance {r['distance']})")
            else:
                matched_any_report |= hit
            cross.append({"dataset": str(p), "role": role, "samples": len(other), "pairs": len(records),
                          "matched": int(hit.sum()), "rate": round(float(hit.mean()), 6) if n else 0.0,
                          "removed": int(hit.sum()) if role == "against" else 0})
            del other

    # 3. clusters within the set: keep the first key not removed as a leak, drop the others
    clusters: list[dict[str, Any]] = []
    removed = leaked.copy()
    if len(wi):
        labels = _components(n, wi, wj)
        members = np.unique(np.concatenate([wi, wj]))
        groups: dict[int, list[int]] = {}
        for idx in members.tolist():
            groups.setdefault(int(labels[idx]), []).append(idx)
        for idxs in groups.values():
            idxs.sort(key=lambda t: main.keys[t])
            keep = next((t for t in idxs if not leaked[t]), None)
            for t in idxs:
                if t != keep and not leaked[t]:
                    removed[t] = True
                    reasons[main.keys[t]] = f"near-duplicate of {main.keys[keep]} (kept)"
            clusters.append({"keep": None if keep is None else main.keys[keep],
                             "members": [main.keys[t] for t in idxs]})
        clusters.sort(key=lambda c: c["members"][0])
    removed_keys = sorted(main.keys[t] for t in np.flatnonzero(removed).tolist())

    leaked_keys = {main.keys[t] for t in np.flatnonzero(leaked).tolist()}
    within_removed = sum(1 for c in clusters for k in c["members"] if k != c["keep"] and k not in leaked_keys)
    summary = {
        "samples": n,
        "kept": n - len(removed_keys),
        "removed": len(removed_keys),
        "hashes_from_provenance": main.reused,
        "within": {"pairs": int(len(wi)), "clusters": len(clusters),
                   "samples_in_clusters": sum(len(c["members"]) for c in clusters),
                   "removed": within_removed},
        "cross": cross,
        "leak_rate": round(float(leaked.mean()), 6) if (n and against) else None,
        "memorization_rate": round(float(matched_any_report.mean()), 6) if (n and report_against) else None,
    }
    return DedupReport(dataset, config, n, against, report_against, pairs, clusters, removed_keys,
                       {k: reasons[k] for k in removed_keys}, summary, semantic, main.reused)


def write_clean(dataset: Path | str, removed: Iterable[str], out_dir: Path | str, *, overwrite: bool = False,
                meta: dict[str, Any] | None = None, progress: Progress | None = None) -> dict[str, Any]:
    """Copy ``dataset`` to a new dataset at ``out_dir`` without the ``removed`` keys (same name,
    classes and shard size; ``meta`` is merged into the index's ``meta``). Returns the new index."""
    ds = Dataset(dataset)
    out_dir = Path(out_dir)
    if out_dir.resolve() == ds.path.resolve():
        raise FactoryError(f"--out {out_dir}: must differ from the dataset being deduplicated")
    check_output_dir(out_dir, overwrite)
    drop = set(removed)
    shard_size = max((int(s["samples"]) for s in ds.shards), default=1) or 1
    samples: Iterable[Sample] = ds
    if progress is not None:
        samples = progress(samples, f"write {out_dir.name}", len(ds))
    with DatasetWriter(out_dir, ds.name, ds.classes, shard_size=shard_size,
                       meta={**ds.meta, **(meta or {})}, overwrite=overwrite) as writer:
        writer.write_all(s for s in samples if s.key not in drop)
        return writer.close()
