"""The results report: every stage's metrics in one Markdown page (and an HTML copy), plus plot data.

Inputs are the metrics files the stages wrote (in ``dvc.yaml``: ``metrics/classifier/*.json``,
``metrics/contrastive/*.json``, ``metrics/evaluate.json``, ``metrics/bias.json``,
``reports/curate.json``) and the classifiers' wall-clock timings (``reports/timings/train_classifier/``);
nothing is recomputed. Missing inputs are reported as missing, never filled in.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from factory.core.files import read_json


def _read(path: Path) -> Any:
    return read_json(path) if path.exists() else None


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        return f"{v:.{digits}f}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"
    return str(v)


def _pct(v: Any) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def load_metrics(pools: Sequence[str] = (), contrastive_pools: Sequence[str] = (), *,
                 classifier: Path | str | None = None, contrastive: Path | str | None = None,
                 evaluate: Path | str | None = None, bias: Path | str | None = None,
                 curate: Path | str | None = None, classifier_timings: Path | str | None = None
                 ) -> dict[str, Any]:
    """The metrics the report shows. ``classifier``, ``contrastive`` and ``classifier_timings`` are folders of
    ``<pool>.json`` files (one per name of ``pools`` or ``contrastive_pools``), the others files; a file
    that is not there reads as None (shown as missing), a folder or file not given leaves its table out."""
    def each(folder: Path | str | None, names: Sequence[str]) -> dict[str, Any]:
        return {} if folder is None else {p: _read(Path(folder) / f"{p}.json") for p in names}

    return {
        "classifier": each(classifier, pools),
        "contrastive": each(contrastive, contrastive_pools),
        "evaluate": None if evaluate is None else _read(Path(evaluate)),
        "bias": None if bias is None else _read(Path(bias)),
        "curate": None if curate is None else _read(Path(curate)),
        "timings": {"classifier": each(classifier_timings, pools)},
    }


def fraction_rows(classifier: Mapping[str, Any], pools: Sequence[str]) -> list[dict[str, Any]]:
    """Accuracy against synthetic fraction: one row per pool of ``pools`` that has metrics."""
    rows = [{"pool": p, "synthetic_fraction": m["synthetic_fraction"], "top1": m["top1"], "n_train": m["n_train"]}
            for p in pools if (m := classifier.get(p))]
    return sorted(rows, key=lambda r: (r["synthetic_fraction"], r["pool"]))


def _probe_cell(m: Mapping[str, Any] | None) -> str:
    if m is None or "skipped" in m:
        return "skipped"
    few = next((v for k, v in m.items() if k.startswith("top1_") and k.endswith("shot")), None)
    return _pct(m["top1"]) + ("" if few is None else f" / {_pct(few)}")


_DIGITS = {"fd": 4, "kid": 4}


def _with_ci(d: Mapping[str, Any], metric: str) -> str:
    """``value [lo, hi]`` (the value alone when there is no interval)."""
    digits = _DIGITS.get(metric, 3)
    ci = d.get(f"{metric}_ci95")
    cell = _fmt(d.get(metric), digits)
    return cell if not ci else f"{cell} [{_fmt(ci[0], digits)}, {_fmt(ci[1], digits)}]"


def _within_noise(d: Mapping[str, Any]) -> str:
    w = d.get("within_noise")
    if w is None:
        return ""
    return ", ".join(k for k, v in w.items() if v) or "none"


_METRICS = ("fd", "kid", "precision", "recall", "density", "coverage")


def evaluation_section(ev: Mapping[str, Any]) -> list[str]:
    """The synthetic datasets against the real test split: the floor row first, then the datasets by
    guidance scale; one table per feature space (the reference CNN's first)."""
    views = ev.get("views") or {}
    primary = ev["encoder"].get("kind")
    label = (views.get(primary) or {}).get("label", primary)
    floor = ev.get("floor")
    datasets = sorted(ev["datasets"].items(), key=lambda kv: (kv[1].get("guidance_scale") or 0, kv[0]))
    n = ev.get("n")
    out = ["## Synthetic datasets against the real test split", ""]
    if n is not None:
        out += [f"Every dataset and a real-vs-real floor is compared with the real test split at n = {n} images per "
                f"side: the mean over {ev.get('draws')} seeded draws, in brackets the bootstrap 95% interval "
                f"({ev.get('bootstrap')} resamples). A metric is within noise when its interval overlaps the "
                "floor's; the last column names those metrics.", ""]
    out += [f"Feature space: {label}; recognition by a CNN trained on real train "
            f"(real-test accuracy {_pct(ev['reference_classifier']['test_accuracy'])}).", ""]
    rows = []
    if floor:
        rows.append([floor["label"], floor["samples"], "", "", ""] + [_with_ci(floor, k) for k in _METRICS] + ["", ""])
    for name, d in datasets:
        rows.append([name, d["samples"], _fmt(d.get("guidance_scale"), 1), _pct(d.get("recognition")),
                     _pct(d.get("cas"))] + [_with_ci(d, k) for k in _METRICS]
                    + [_fmt(d["class_balance_tv"]), _within_noise(d)])
    out.append(table(["dataset", "images", "guidance", "recognition", "CAS", "FD", "KID", "precision", "recall",
                      "density", "coverage", "class TV", "within noise of the floor"], rows))
    out.append("")
    if floor and floor.get("note"):
        out += [f"Floor: {floor['path']} ({floor['note']}).", ""]
    for view, info in views.items():
        if view == primary:
            continue
        out += [f"Feature space: {info.get('label', view)}; same n and draws.", ""]
        rows = [[floor["label"]] + [_with_ci(floor["views"][view], k) for k in _METRICS] + [""]] if floor else []
        rows += [[name] + [_with_ci(d["views"][view], k) for k in _METRICS] + [_within_noise(d["views"][view])]
                 for name, d in datasets if view in d.get("views", {})]
        out.append(table(["dataset", "FD", "KID", "precision", "recall", "density", "coverage",
                          "within noise of the floor"], rows))
        out.append("")
    return out


def render(m: Mapping[str, Any]) -> str:
    """The Markdown results page."""
    out = ["# Results", ""]
    cls, seconds = m["classifier"], m.get("timings", {}).get("classifier", {})
    if cls:
        out += ["## Classifiers trained on each pool, tested on the REAL test split", "",
                "Synthetic-only pools give the Classification Accuracy Score (CAS).", ""]
        out.append(table(["pool", "training images", "synthetic share", "real-test top-1", "seconds"],
                         [[p, c["n_train"], _pct(c["synthetic_fraction"]), _pct(c["top1"]),
                           _fmt((seconds.get(p) or {}).get("seconds"), 0)]
                          if c else [p, "missing", "", "", ""] for p, c in cls.items()]))
        out.append("")
    con = m["contrastive"]
    if con:
        methods = sorted({k for c in con.values() if c for k in c["methods"]},
                         key=lambda k: ["simclr", "stablerep", "stablerep_plus"].index(k)
                         if k in ("simclr", "stablerep", "stablerep_plus") else 9)
        out += ["## Contrastive encoders: linear-probe top-1 on the real test split", "",
                "Each cell: probe fit on all real train images / on 10 real images per class.", ""]
        rows = []
        for p, c in con.items():
            if not c:
                rows.append([p, "missing"] + [""] * (len(methods) - 1))
                continue
            rows.append([f"{p} ({c['n_train']} images)"] + [_probe_cell(c["methods"].get(k)) for k in methods])
        out.append(table(["pool"] + methods, rows))
        out.append("")
    ev = m["evaluate"]
    if ev:
        out += evaluation_section(ev)
    bias = m["bias"]
    if bias:
        out += ["## Bias benchmark (coloured digits)", "",
                f"Train split: colour = the class's colour for {_pct(bias['train_correlation'])} of images; "
                f"test split: {_pct(bias['test_correlation'])} (colour independent of class).", ""]
        out.append(table(["pool", "training images", "synthetic share", "test top-1", "colour-consistent",
                          "colour-flipped", "gap"],
                         [[p, r["n_train"], _pct(r["synthetic_fraction"]), _pct(r["top1"]),
                           _pct(r["consistent_top1"]), _pct(r["flipped_top1"]),
                           "n/a" if r["gap"] is None else f"{100 * r['gap']:+.1f} pt"]
                          for p, r in bias["pools"].items()]))
        out.append("")
    cur = m["curate"]
    if cur:
        th = (cur.get("filter") or {}).get("thresholds") or {}
        out += ["## Curation of the raw synthetic set", "",
                table(["generated", "kept", "rejected", "reasons", "leaks", "memorisation", "thresholds"],
                      [[cur["samples"], cur["kept"], cur["rejected"],
                        ", ".join(f"{k} {v}" for k, v in cur["reasons"].items() if v and k != "kept"),
                        len(cur.get("leaks") or []), _pct(cur.get("memorization_rate")),
                        ", ".join(f"{k} {_fmt(v)}" for k, v in th.items() if isinstance(v, (int, float)))]]),
                ""]
    return "\n".join(out)


def to_html(markdown: str) -> str:
    """A dependency-free HTML page of the results (tables rendered, the rest preformatted)."""
    body, in_table, in_pre = [], False, False
    for line in markdown.splitlines():
        if line.startswith("```"):
            body.append("</pre>" if in_pre else "<pre>")
            in_pre = not in_pre
            continue
        if in_pre:
            body.append(html.escape(line))
            continue
        if line.startswith("|"):
            cells = [html.escape(c.strip()) for c in line.strip("|").split("|")]
            if all(set(c) <= {"-"} for c in cells):
                continue
            if not in_table:
                body.append("<table>")
                body.append("<tr>" + "".join(f"<th>{c}</th>" for c in cells) + "</tr>")
                in_table = True
            else:
                body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
            continue
        if in_table:
            body.append("</table>")
            in_table = False
        if line.startswith("## "):
            body.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.startswith("# "):
            body.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line:
            body.append(f"<p>{html.escape(line)}</p>")
    if in_table:
        body.append("</table>")
    style = "body{font-family:sans-serif;max-width:70em;margin:2em auto}td,th{padding:.2em .6em;border:1px solid #ccc}"
    return f"<!doctype html><meta charset=utf-8><title>Results</title><style>{style}</style>\n" + "\n".join(body) + "\n"
