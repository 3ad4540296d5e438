"""What each generation of a loop trains on, built from provenance, and proof that it is what the policy says.

Generation 1 is the main generator, trained on real train. Generation k >= 2 trains on a pool (contract
``factory.pool/1``) whose content depends on the run's policy; ``S_j`` is generation j's training set (its
synthetic dataset, or the corrected copy when the run corrects):

- ``replace``: S_{k-1} only (Gerstgrasser et al.'s "replace": error grows);
- ``accumulate``: real train + S_1 .. S_{k-1} (their "accumulate": error stays bounded);
- ``accumulate_subsample``: that pool subsampled to |real train| (as much data as replace, other data);
- ``fresh``: real train + S_{k-1}, a fresh set of lambda x |real train| images (Gillman et al.'s setting);
- ``real``: real train only, every generation (the control: what fine-tuning alone does to the model, with no
  synthetic data in the pool).

``loop.extra`` datasets join every pool after generation 1. Every sample entering a pool must have known
provenance (:func:`provenance_problem`): a real sample with generation 0 and an origin, or a synthetic one
with its generation, its parents (datasets with their index hashes) and its generator's weights hash;
anything else is refused unless ``loop.allow_unknown``. The pool record carries a ``loop`` section with the
generation histogram of every component, and :func:`check_policy` proves it against the policy.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Mapping, Sequence

from factory.config import Component, PoolSpec
from factory.core.errors import FactoryError
from factory.core.quota import largest_remainder
from factory.core.shards import Dataset
from factory.data.pools import build_pool, dataset_pool


def provenance_problem(rec: Mapping[str, Any]) -> str | None:
    """Why a sample's provenance is unknown (None when it is known)."""
    source, gen = rec.get("source"), rec.get("generation")
    if source == "real":
        if gen != 0 or not isinstance(rec.get("origin"), Mapping):
            return "a real sample without generation 0 and an origin"
        return None
    if source != "synthetic":
        return f"source {source!r}"
    if not isinstance(gen, int) or gen < 1:
        return "a synthetic sample without a generation"
    parents = rec.get("parents")
    if not parents or not all(isinstance(p, Mapping) and p.get("path") and p.get("index_sha256") for p in parents):
        return "a synthetic sample whose parents (datasets with index hashes) are not recorded"
    if not (rec.get("generator") or {}).get("weights_sha256"):
        return "a synthetic sample whose generator weights are not recorded"
    return None


def check_known(dataset: Dataset | Path | str, allow_unknown: bool = False) -> dict[str, Any]:
    """The generation histogram of ``dataset``; samples of unknown provenance fail it (one line naming the
    first, how many, and the setting that allows them) unless ``allow_unknown``."""
    ds = dataset if isinstance(dataset, Dataset) else Dataset(dataset)
    gens: Counter[int] = Counter()
    unknown: list[tuple[str, str]] = []
    for rec in ds.records():
        problem = provenance_problem(rec)
        if problem is not None:
            unknown.append((str(rec.get("key")), problem))
        gen = rec.get("generation")
        gens[gen if isinstance(gen, int) and not isinstance(gen, bool) else -1] += 1
    if unknown and not allow_unknown:
        key, why = unknown[0]
        raise FactoryError(f"{ds.path}: {len(unknown)} sample(s) of unknown provenance (first: {key!r}, {why}); "
                           "a loop trains only on samples whose lineage is recorded (set loop.allow_unknown: true "
                           "to train on them anyway)")
    return {"generations": {str(g): n for g, n in sorted(gens.items())}, "unknown": len(unknown)}


def components_for(policy: str, k: int, real: Path | str, sets: Sequence[Path | str],
                   extra: Sequence[Path | str] = ()) -> list[Component]:
    """The pool components of generation ``k`` (>= 2) under ``policy``; ``sets[j-1]`` is S_j (j < k)."""
    if k < 2:
        raise FactoryError(f"generation {k}: only generations >= 2 train on a pool (generation 1 is the main "
                           "generator, trained on real train)")
    if len(sets) != k - 1:
        raise FactoryError(f"generation {k} needs the training sets of generations 1..{k - 1}; got {len(sets)}")
    extra_c = [Component(dataset=str(p)) for p in extra]
    if policy == "replace":
        return [Component(dataset=str(sets[-1])), *extra_c]
    if policy == "real":
        return [Component(dataset=str(real)), *extra_c]
    if policy == "fresh":
        return [Component(dataset=str(real)), Component(dataset=str(sets[-1])), *extra_c]
    if policy in ("accumulate", "accumulate_subsample"):
        comps = [Component(dataset=str(real)), *[Component(dataset=str(s)) for s in sets], *extra_c]
        if policy == "accumulate":
            return comps
        sizes = [len(Dataset(c.dataset)) for c in comps]
        counts = largest_remainder(len(Dataset(real)), sizes)  # |real train| in all, in proportion
        return [Component(dataset=c.dataset, count=n) for c, n in zip(comps, counts) if n]
    raise FactoryError(f"unknown loop policy {policy!r}")


def generation_pool(run: str, policy: str, k: int, real: Path | str, sets: Sequence[Path | str],
                    extra: Sequence[Path | str] = (), *, seed: int = 0, allow_unknown: bool = False) -> dict[str, Any]:
    """The pool record generation ``k`` of ``run`` trains on, with its lineage (``loop``) checked."""
    comps = components_for(policy, k, real, sets, extra)
    known = {c.dataset: check_known(c.dataset, allow_unknown) for c in comps}
    pool = build_pool(PoolSpec(name=f"loop-{run}-g{k}", components=tuple(comps), seed=seed))
    gens: Counter[str] = Counter()
    for comp in pool["components"]:
        recs = {r["key"]: r for r in Dataset(comp["dataset"]["path"]).records()}
        hist = Counter(str(recs[key].get("generation")) for key in comp["keys"])
        comp["generations"] = dict(sorted(hist.items()))
        gens.update(hist)
    pool["loop"] = {"run": run, "policy": policy, "generation": k, "trains": f"the generator of generation {k}",
                    "generations": dict(sorted(gens.items(), key=lambda kv: int(kv[0]))),
                    "unknown": sum(v["unknown"] for v in known.values())}
    check_policy(pool, policy, k, real, extra)
    return pool


def real_pool(run: str, real: Path | str, *, seed: int = 0) -> dict[str, Any]:
    """Generation 1's pool: the whole real train split (what the main generator was trained on)."""
    check_known(real)
    pool = dataset_pool(real, f"loop-{run}-g1", seed)
    pool["components"][0]["generations"] = {"0": pool["samples"]}
    pool["loop"] = {"run": run, "policy": "real", "generation": 1, "trains": "the main generator (generation 1)",
                    "generations": {"0": pool["samples"]}, "unknown": 0}
    return pool


def check_policy(pool: Mapping[str, Any], policy: str, k: int, real: Path | str,
                 extra: Sequence[Path | str] = ()) -> None:
    """Raise unless ``pool`` holds what ``policy`` says generation ``k`` trains on (extra datasets aside):
    replace only generation k-1 samples; accumulate real train and every generation 1..k-1; fresh real
    train and generation k-1 only; real only real train."""
    extra_paths = {str(Path(p)) for p in extra}
    gens: Counter[int] = Counter()
    real_ref = Dataset(real).index_sha256
    real_seen = False
    for comp in pool["components"]:
        if str(Path(comp["dataset"]["path"])) in extra_paths:
            continue
        for g, n in comp["generations"].items():
            gens[int(g)] += n
        if comp["dataset"]["index_sha256"] == real_ref:
            real_seen = True
    want = {"replace": {k - 1}, "fresh": {0, k - 1}, "real": {0}, "accumulate": set(range(k)),
            "accumulate_subsample": set(range(k))}[policy]
    got = {g for g, n in gens.items() if n}
    if got != want or (0 in want and not real_seen):
        raise FactoryError(f"pool {pool.get('name')}: policy {policy} at generation {k} must hold generations "
                           f"{sorted(want)}{' (real train among them)' if 0 in want else ''}; it holds {sorted(got)}")
