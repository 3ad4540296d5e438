"""Compact summary metrics: what ``dvc metrics show`` and ``dvc exp show`` display.

The stages' own metrics files hold everything (per-class values, per-seed values, intervals, curves) and are
plain outputs. The DVC metrics are the small files written here, one line each in ``dvc metrics show``
(a line per pool, method, dataset, run), with the same few short columns for every kind:

- ``metrics/summary/classifier/<pool>.json``: ``top1`` (mean over seeds), ``lo``/``hi`` (its 95% interval),
  ``synthetic`` (share of synthetic training images), ``n`` (training images);
- ``metrics/summary/contrastive/<pool>-<method>.json``: ``top1``, ``lo``, ``hi`` (linear probe), ``top1_10shot``;
- ``metrics/summary/evaluate/<dataset>.json``: ``fd``, ``kid``, ``precision``, ``recall``, ``recognition``,
  ``cas`` (the real floor too);
- ``metrics/summary/bias/<pool>.json``: ``top1``, ``lo``, ``hi`` on real test, ``gap`` (consistent minus
  flipped colour);
- ``metrics/summary/curate.json``: ``n`` (generated), ``kept``, ``rejected``, ``leaks``;
- ``metrics/loop/summary/<run>.json`` (the loops' pipeline): ``generations``, ``fd``, ``recognition``, ``cas``
  at the last one and ``fd_g1`` at the first.

Values are rounded to 4 significant decimals; a value a file does not have is left out.

These files are plain outputs too: ``dvc metrics show metrics/summary/classifier`` (any file or folder as a
target) shows them. The only files declared as DVC metrics are the headlines, a handful of numbers each, so
that ``dvc metrics show`` is a few lines and ``dvc exp show --only-changed`` fits a terminal:

- ``metrics/headline.json`` (the main pipeline; photos: ``examples/imagenette/metrics/headline.json``): the
  values ``report.headline`` names, ``name: "<summary file>:<key>"`` (default: ``real``, ``cas``, ``mixed``
  top-1, the curated set's ``fd`` and ``recognition``, ``kept`` by curation);
- ``metrics/loop/headline.json``: ``loop_fd``, the FD at the last generation, one key per run.

Names are apart across the pipelines (the photos' are ``photos_real``, ...): DVC prefixes a column with its
file's path when two files share a key, and ``dvc exp show --only-changed --drop '.*/'`` (which drops the
data dependencies' hash columns, the paths) keeps every unprefixed metric.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from factory.core.files import replace_dir, staging_dir, write_json


def _r(v: Any) -> Any:
    return round(float(v), 4) if isinstance(v, float) else v


def _clean(d: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _r(v) for k, v in d.items() if v is not None}


def _mean_ci(m: Mapping[str, Any], metric: str = "top1") -> dict[str, Any]:
    ci = m.get(f"{metric}_ci95") or [None, None]
    return {metric: m.get(f"{metric}_mean", m.get(metric)), "lo": ci[0], "hi": ci[1]}


def classifier_row(m: Mapping[str, Any]) -> dict[str, Any]:
    return _clean({**_mean_ci(m), "synthetic": m.get("synthetic_fraction"), "n": m.get("n_train")})


def contrastive_rows(m: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {method: _clean({**_mean_ci(v), "top1_10shot": v.get("top1_10shot_mean", v.get("top1_10shot"))})
            for method, v in (m.get("methods") or {}).items()}


def evaluate_rows(m: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    keys = ("fd", "kid", "precision", "recall", "recognition", "cas")
    rows = {"floor": _clean({k: (m.get("floor") or {}).get(k) for k in keys})}
    rows.update({name: _clean({k: d.get(k) for k in keys}) for name, d in (m.get("datasets") or {}).items()})
    return rows


def bias_rows(m: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    out = {}
    for pool, p in (m.get("pools") or {}).items():
        test = p.get("test") or {}
        out[pool] = _clean({**_mean_ci(test), "gap": test.get("gap_mean")})
    return out


def curate_row(m: Mapping[str, Any]) -> dict[str, Any]:
    return _clean({"n": m.get("samples"), "kept": m.get("kept"), "rejected": m.get("rejected"),
                   "leaks": len(m.get("leaks") or [])})


def loop_row(m: Mapping[str, Any]) -> dict[str, Any]:
    rows = [r for r in (m.get("generations") or []) if r.get("active", True)]
    if not rows:
        return {}
    last = rows[-1]
    return _clean({"generations": len(rows), "fd": last.get("fd"), "recognition": last.get("recognition"),
                   "cas": last.get("cas"), "fd_g1": rows[0].get("fd")})


def headline(files: Mapping[str, Mapping[str, Any]], spec: Mapping[str, str]) -> dict[str, Any]:
    """The headline: for each ``name: "<summary file>:<key>"`` of ``spec``, that value of ``files``
    (:func:`summary_files`); a value that is not there is left out, never filled in."""
    out: dict[str, Any] = {}
    for name, ref in spec.items():
        file, _, key = ref.rpartition(":")
        value = (files.get(file) or {}).get(key)
        if value is not None:
            out[name] = value
    return out


def loop_headline(rows: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The loops' headline: ``{"loop_fd": {run: fd at its last generation}}`` of the runs' rows
    (:func:`loop_row`); dvc exp show names its columns ``loop_fd.<run>``."""
    fd = {run: row["fd"] for run, row in rows.items() if row.get("fd") is not None}
    return {"loop_fd": fd} if fd else {}


def summary_files(metrics: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The compact files of a report's metrics (:func:`factory.measure.report.load_metrics`): relative name ->
    row, for what is there."""
    files: dict[str, dict[str, Any]] = {}
    for pool, m in (metrics.get("classifier") or {}).items():
        if m:
            files[f"classifier/{pool}"] = classifier_row(m)
    for pool, m in (metrics.get("contrastive") or {}).items():
        for method, row in (contrastive_rows(m) if m else {}).items():
            files[f"contrastive/{pool}-{method}"] = row
    for name, row in (evaluate_rows(metrics["evaluate"]) if metrics.get("evaluate") else {}).items():
        files[f"evaluate/{name}"] = row
    for pool, row in (bias_rows(metrics["bias"]) if metrics.get("bias") else {}).items():
        files[f"bias/{pool}"] = row
    if metrics.get("curate"):
        files["curate"] = curate_row(metrics["curate"])
    return files


def write_summary(folder: Path | str, files: Mapping[str, Mapping[str, Any]]) -> None:
    """Write ``files`` (relative name -> row) as the whole of ``folder``: assembled aside, then moved in whole,
    so a file of a pool or dataset that is gone does not linger as a metric."""
    folder = Path(folder).resolve()
    staging = staging_dir(folder)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name, row in files.items():
        write_json(staging / f"{name}.json", dict(row))
    replace_dir(staging, folder)
