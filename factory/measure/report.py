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

from factory.core.errors import FactoryError
from factory.core.files import read_json
from factory.core.stats import overlaps


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
                 curate: Path | str | None = None, classifier_timings: Path | str | None = None,
                 baselines: Mapping[str, str] | None = None) -> dict[str, Any]:
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
        "baselines": dict(baselines or {}),
    }


def fraction_rows(classifier: Mapping[str, Any], pools: Sequence[str]) -> list[dict[str, Any]]:
    """Accuracy against synthetic fraction: one row per pool of ``pools`` that has metrics."""
    rows = [{"pool": p, "synthetic_fraction": m["synthetic_fraction"], "top1": m["top1"], "n_train": m["n_train"]}
            for p in pools if (m := classifier.get(p))]
    return sorted(rows, key=lambda r: (r["synthetic_fraction"], r["pool"]))


def _pct_ci(m: Mapping[str, Any], metric: str) -> str:
    """``97.1% [96.5, 97.7]`` from ``<metric>`` (or ``<metric>_mean``) and ``<metric>_ci95``."""
    v = m.get(f"{metric}_mean", m.get(metric))
    ci = m.get(f"{metric}_ci95")
    return _pct(v) + ("" if not ci else f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]")


def _seeds(m: Mapping[str, Any]) -> str:
    seeds = m.get("seeds")
    return "1" if not seeds else str(len(seeds))


def compare(m: Mapping[str, Any], base: Mapping[str, Any] | None, metric: str = "top1") -> str:
    """``-0.4 pt vs real, within noise`` (intervals overlap), or ``above``/``below`` when they do not."""
    if not base:
        return ""
    a, b = m.get(f"{metric}_mean", m.get(metric)), base.get(f"{metric}_mean", base.get(metric))
    if a is None or b is None:
        return "n/a"
    verdict = overlaps(m.get(f"{metric}_ci95"), base.get(f"{metric}_ci95"))
    word = "no interval" if verdict is None else "within noise" if verdict else ("above" if a > b else "below")
    return f"{100 * (a - b):+.1f} pt, {word}"


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
                     _pct_ci(d, "cas") if d.get("cas") is not None else "n/a"] + [_with_ci(d, k) for k in _METRICS]
                    + [_fmt(d["class_balance_tv"]), _within_noise(d)])
    out.append(table(["dataset", "images", "guidance", "recognition", "CAS [95% CI]", "FD", "KID", "precision", "recall",
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


def _pt_ci(d: Mapping[str, Any], metric: str) -> str:
    """A difference in points with its interval: ``+31.1 pt [20.3, 41.9]``."""
    v = d.get(f"{metric}_mean", d.get(metric))
    if v is None:
        return "n/a"
    ci = d.get(f"{metric}_ci95")
    return f"{100 * v:+.1f} pt" + ("" if not ci else f" [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]")


def bias_section(bias: Mapping[str, Any]) -> list[str]:
    """The bias benchmark: every pool on val (where the study's design is judged) and on test (reported),
    means over training seeds with intervals; the realised colour balance of the synthetic sets."""
    out = ["## Bias benchmark (coloured digits)", "",
           f"Train split: colour = the class's colour for {_pct(bias['train_correlation'])} of images; "
           f"val: {_pct(bias.get('val_correlation'))}, test: {_pct(bias['test_correlation'])} (colour independent "
           f"of class). The study's design is judged on {bias.get('chosen_on', 'val')}; test is reported. Means over "
           f"{len(bias.get('seeds') or [0])} training seeds, in brackets the 95% interval.", ""]
    rows = []
    for p, r in bias["pools"].items():
        val, test = r.get("val") or {}, r.get("test") or r
        rows.append([p, r["n_train"], _pct(r["synthetic_fraction"]), _pct_ci(val, "top1"), _pct_ci(test, "top1"),
                     _pct_ci(test, "consistent_top1"), _pct_ci(test, "flipped_top1"), _pt_ci(test, "gap")])
    out.append(table(["pool", "training images", "synthetic share", "val top-1", "test top-1",
                      "test colour-consistent", "test colour-flipped", "test gap"], rows))
    out.append("")
    syn = bias.get("synthetic") or {}
    if syn:
        out += ["Colour the synthetic images show (stroke colour measured from pixels) against the colour their "
                "prompts asked for:", ""]
        out.append(table(["synthetic set", "images", "shows the requested colour", "no colour",
                          "per-class TV from uniform: shown", "asked"],
                         [[name, s.get("samples"), _pct(s.get("agreement")), s.get("unmeasured"),
                           _fmt((s.get("realised") or {}).get("tv_mean_per_class")),
                           _fmt((s.get("requested") or {}).get("tv_mean_per_class"))]
                          for name, s in syn.items()]))
        out.append("")
    return out


def classifier_section(cls: Mapping[str, Any], baselines: Mapping[str, str],
                       seconds: Mapping[str, Any]) -> list[str]:
    """Each pool's classifier on the real test split: mean top-1 over seeds with its interval, against
    its baseline pool."""
    out = ["## Classifiers trained on each pool, tested on the REAL test split", "",
           "Synthetic-only pools give the Classification Accuracy Score (CAS). Each top-1 is the mean over "
           "training seeds (the pool's draw fixed), in brackets its 95% Student-t interval; a pool is compared "
           "with its baseline pool, and called within noise when the two intervals overlap.", ""]
    rows = []
    for p, c in cls.items():
        if not c:
            rows.append([p, "missing", "", "", "", "", ""])
            continue
        base = baselines.get(p)
        rows.append([p, c["n_train"], _pct(c["synthetic_fraction"]), _pct_ci(c, "top1"), _seeds(c),
                     f"{compare(c, cls.get(base))} ({base})" if base and cls.get(base) else "",
                     _fmt((seconds.get(p) or {}).get("seconds"), 0)])
    out.append(table(["pool", "training images", "synthetic share", "real-test top-1 [95% CI]", "seeds",
                      "vs baseline", "seconds"], rows))
    return out + [""]


def contrastive_section(con: Mapping[str, Any]) -> list[str]:
    """Each pool's contrastive encoders: linear-probe and 10-shot top-1 over seeds with intervals."""
    out = ["## Contrastive encoders: linear-probe top-1 on the real test split", "",
           "Probes fit on all real train images and on 10 real images per class; means over training seeds, "
           "in brackets the 95% interval. The synthetic share counts the images the method actually drew "
           "into its batches.", ""]
    rows = []
    for p, c in con.items():
        if not c:
            rows.append([p, "missing", "", "", "", ""])
            continue
        for method, r in c["methods"].items():
            if "skipped" in r:
                rows.append([p, method, "", "", f"skipped ({r['skipped']})", ""])
                continue
            few = next((k[:-5] for k in r if k.startswith("top1_") and k.endswith("shot_mean")),
                       next((k for k in r if k.startswith("top1_") and k.endswith("shot")), None))
            share = r.get("effective_synthetic_share", c.get("synthetic_fraction"))
            rows.append([p, method, _pct(share), _seeds(r), _pct_ci(r, "top1"),
                         "n/a" if few is None else _pct_ci(r, few)])
    out.append(table(["pool", "method", "synthetic share", "seeds", "linear probe [95% CI]",
                      "10-shot probe [95% CI]"], rows))
    return out + [""]


def render(m: Mapping[str, Any]) -> str:
    """The Markdown results page."""
    out = ["# Results", ""]
    if m["classifier"]:
        out += classifier_section(m["classifier"], m.get("baselines") or {},
                                  m.get("timings", {}).get("classifier", {}))
    if m["contrastive"]:
        out += contrastive_section(m["contrastive"])
    ev = m["evaluate"]
    if ev:
        out += evaluation_section(ev)
    bias = m["bias"]
    if bias:
        out += bias_section(bias)
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
        cal = cur.get("calibration")
        if cal:
            out += [_calibration_text(cal), ""]
    return "\n".join(out)


def _calibration_text(cal: dict[str, Any]) -> str:
    """What the curation thresholds do to real images, per split, with the single-threshold shares and an
    interval where the curate report has them (older reports: the shares alone)."""
    shares, detail = cal.get("reject_share") or {}, cal.get("reject_share_detail") or {}
    text = (f"Thresholds calibrated on {cal.get('split')} ({cal.get('n')} real images scored against captions "
            f"of the samples' form, percentile {_fmt(cal.get('percentile'), 1)}); they would reject ")
    if not detail:
        return text + ", ".join(f"{_pct(v)} of real {k}" for k, v in shares.items()) + "."
    parts = [f"{_pct_ci(d, 'either')} of real {k} (score alone {_pct(d['score'])}, "
             f"margin alone {_pct(d['margin'])})" for k, d in detail.items()]
    text += "; ".join(parts) + " (an image fails on either)."
    if {"val", "test"} <= detail.keys():
        lo, hi = detail["val"]["either_ci95"]
        inside = lo <= detail["test"]["either"] <= hi
        text += (" The test share lies " + ("inside" if inside else "outside") + " the val share's interval"
                 + (": within noise." if inside else "."))
    return text


def to_html(markdown: str) -> str:
    """A dependency-free HTML page of the results (tables rendered, the rest preformatted)."""
    style = "body{font-family:sans-serif;max-width:70em;margin:2em auto}td,th{padding:.2em .6em;border:1px solid #ccc}"
    return f"<!doctype html><meta charset=utf-8><title>Results</title><style>{style}</style>\n" + html_body(markdown)


def html_body(markdown: str) -> str:
    """The HTML of the results' Markdown (headings, paragraphs, tables; code blocks preformatted), every
    text escaped; :func:`to_html` wraps it in a page, the visual report (:mod:`factory.measure.page`) in its
    tables section."""
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
    return "\n".join(body) + "\n"


def markers(name: str) -> tuple[str, str]:
    """The README lines around the quoted copy of ``name`` (e.g. ``reports/results.md``)."""
    return (f"<!-- {name} begins: `make readme` copies it here, tests/test_results.py checks -->",
            f"<!-- {name} ends -->")


RESULTS_BEGIN, RESULTS_END = markers("reports/results.md")


def results_block(results_md: str) -> str:
    """What the README quotes of ``reports/results.md``: all of it but its title line."""
    lines = results_md.strip("\n").splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    return "\n".join(lines).strip("\n")


def readme_with_results(readme: str, results_md: str, name: str = "reports/results.md") -> str:
    """``readme`` with the text between the :func:`markers` of ``name`` replaced by :func:`results_block` of
    ``results_md``."""
    begin, end = _markers_in(readme, name)
    head, rest = readme.split(begin)
    _, tail = rest.split(end)
    return f"{head}{begin}\n\n{results_block(results_md)}\n\n{end}{tail}"


def quoted_results(readme: str, name: str = "reports/results.md") -> str:
    """The block of ``name`` the README quotes now."""
    begin, end = _markers_in(readme, name)
    return readme.split(begin)[1].split(end)[0].strip("\n")


def _markers_in(readme: str, name: str) -> tuple[str, str]:
    begin, end = markers(name)
    if readme.count(begin) != 1 or readme.count(end) != 1:
        raise FactoryError(f"README: expected one {begin!r} and one {end!r} line")
    return begin, end
