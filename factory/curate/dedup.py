from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from factory.config import DedupConfig
from factory.config import default_max_distance as default_max_distance  # re-exported
from factory.core.errors import FactoryError
from factory.core.files import atomic_write_bytes
from factory.core.outputs import claim_output_file
from factory.core.sample import Sample
from factory.core.shards import Dataset, DatasetWriter, check_output_dir
from factory.curate.evidence import closest_matches, match_evidence
from factory.curate.hashing import (
    Embedder,
    Pairs,
    Progress,
    hamming,
    hamming_pairs,
    image_hash_hex,
    normalize_rows,
    semantic_pairs,
    words_from_hex,
)

log = logging.getLogger(__name__)


REPORT_SCHEMA = "factory.dedup/1"


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
    evidence: dict[str, dict[str, Any]] = field(default_factory=dict)  # removed key -> its match (see evidence.py)

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
            "evidence": self.evidence,
        }

    def write(self, path: Path | str, others: Iterable[Path | str | None] = ()) -> Path:
        """Write the report to ``path``, which must keep apart from the datasets compared and ``others``."""
        path = Path(path)
        claim_output_file(path, inputs=[self.dataset, *self.against, *self.report_against], others=others)
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
    removed as leaks (none is kept if all are leaks). ``evidence`` holds, per removed key, its match
    (:mod:`factory.curate.evidence`): its closest ``against`` match, or the member of its cluster that was kept.
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
            else:
                matched_any_report |= hit
            cross.append({"dataset": str(p), "role": role, "samples": len(other), "pairs": len(records),
                          "matched": int(hit.sum()), "rate": round(float(hit.mean()), 6) if n else 0.0,
                          "removed": int(hit.sum()) if role == "against" else 0})
            del other

    # 3. clusters within the set: keep the first key not removed as a leak, drop the others
    clusters: list[dict[str, Any]] = []
    removed = leaked.copy()
    evidence = closest_matches(pairs, [str(p) for p in against])  # a leak: its closest match
    for key, ev in evidence.items():
        reasons[key] = f"matches {ev['matched_key']} in {ev['matched_dataset']} (distance {ev['distance']})"
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
                    evidence[main.keys[t]] = _kept_match(main, t, keep, config, str(dataset))
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
                       {k: reasons[k] for k in removed_keys}, summary, semantic, main.reused,
                       {k: evidence[k] for k in removed_keys})


def _kept_match(main: HashedDataset, t: int, keep: int, config: DedupConfig, dataset: str) -> dict[str, Any]:
    """The evidence of near-duplicate ``t``: the kept member ``keep`` of its cluster, their own distance and
    similarity, and how a direct pair of them is found (``cluster``: only through other members)."""
    distance = int(hamming(main.words[t:t + 1], main.words[keep:keep + 1])[0])
    sim = None
    if main.embeddings is not None:
        sim = float(main.embeddings[t] @ main.embeddings[keep])
    method = ("hash" if distance <= config.distance else
              "semantic" if sim is not None and sim >= config.semantic_threshold else "cluster")
    return match_evidence(main.keys[keep], dataset, distance, method, sim)


def write_clean(dataset: Path | str, removed: Iterable[str], out_dir: Path | str, *, overwrite: bool = False,
                meta: dict[str, Any] | None = None, progress: Progress | None = None) -> dict[str, Any]:
    """Copy ``dataset`` to a new dataset at ``out_dir`` without the ``removed`` keys (same name,
    classes and shard size; ``meta`` is merged into the index's ``meta``). Returns the new index."""
    ds = Dataset(dataset)
    out_dir = Path(out_dir)
    if out_dir.resolve() == ds.path.resolve():
        raise FactoryError(f"--out {out_dir}: must differ from the dataset being deduplicated")
    check_output_dir(out_dir, overwrite, inputs=[ds.path])
    drop = set(removed)
    shard_size = max((int(s["samples"]) for s in ds.shards), default=1) or 1
    samples: Iterable[Sample] = ds.iter_checked()  # decoded and re-hashed before being copied
    if progress is not None:
        samples = progress(samples, f"write {out_dir.name}", len(ds))
    with DatasetWriter(out_dir, ds.name, ds.classes, shard_size=shard_size,
                       meta={**ds.meta, **(meta or {})}, overwrite=overwrite, inputs=[ds.path]) as writer:
        writer.write_all(s for s in samples if s.key not in drop)
        return writer.close()
