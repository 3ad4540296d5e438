"""The visual report: one self-contained HTML page (``reports/index.html``) from a run's own outputs.

Sections, with stable ids (tests and the browser test find them by these): ``run`` (git revision, params
hash, date, machine, stage timings), ``sheets`` (a contact sheet per dataset, a labelled row per class),
``rejected`` (rejected samples by reason with their evidence; the matched image beside a leak or
near-duplicate), ``scores`` (CLIP score and margin histograms, real val against synthetic, with the
thresholds), ``charts`` (guidance trade-off, synthetic share, per-class bars, confusion matrix, training
curves) and ``tables`` (every table of ``reports/results.md``). Images are inlined as ``data:`` URIs,
charts as inline SVG, the style sheet inline: the page makes no request. Every text is escaped. An input
that is missing shows as a visible note (``class="note"``), never as a crash or an invented number.
"""

from __future__ import annotations

import base64
import html
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from PIL import Image

from factory.core.errors import FactoryError
from factory.core.files import atomic_write_bytes, read_json
from factory.core.shards import INDEX_NAME, Dataset
from factory.data.classnames import display_names
from factory.measure import charts, sheets
from factory.measure.rejections import matched_samples, rejections
from factory.measure.report import html_body, results_block
from factory.measure.runinfo import run_info
from factory.measure.training_curves import read_curves

SECTIONS = {"run": "Run", "sheets": "Contact sheets", "rejected": "Rejected samples",
            "scores": "CLIP scores against the thresholds", "charts": "Charts", "tables": "Tables"}
CHARTS = ("chart-guidance", "chart-fraction", "chart-per-class", "chart-confusion", "chart-curves")
STYLE = ("body{font-family:sans-serif;max-width:78em;margin:1.5em auto;padding:0 1em;color:#222}"
         "nav a{margin-right:1em}td,th{padding:.2em .6em;border:1px solid #ccc;text-align:left}"
         "table{border-collapse:collapse;margin:.5em 0}table.sheet th{font-weight:normal;white-space:nowrap}"
         "table.sheet td,table.sheet th{border:none;padding:1px .5em}.note{color:#8a4b00;background:#fff4e0;"
         "padding:.3em .6em;border-left:3px solid #e0a040}.cards{display:flex;flex-wrap:wrap;gap:.6em}"
         "figure{margin:.4em 0}.card{border:1px solid #ddd;padding:.3em;max-width:20em;font-size:85%}"
         "figure svg{max-width:100%;height:auto}img{image-rendering:pixelated}.path{color:#666;font-size:85%}"
         "#charts>figure,#scores>figure{display:inline-block;vertical-align:top;max-width:48%;margin-right:1%}"
         "#charts>#chart-per-class,#charts>#chart-curves{max-width:100%}")


@dataclass
class PageInputs:
    """What the page is made from (every path is a declared input of the ``report`` stage)."""
    metrics: Mapping[str, Any]                      # factory.measure.report.load_metrics
    markdown: str                                   # reports/results.md
    run: Mapping[str, Any]                          # factory.measure.runinfo.run_info
    sheets: Sequence[tuple[str, Path]] = ()         # (name, dataset folder)
    rejected: Path | None = None                    # the curation's rejected dataset
    score_sets: Sequence[Path] = ()                 # curated + rejected: the synthetic (raw) set's scores
    lookup: Mapping[str, Path] = field(default_factory=dict)   # where matched images are read from
    guidance: Sequence[Mapping[str, Any]] | None = None        # plots/guidance.json
    fraction_pools: Sequence[str] = ()
    cas_pool: str = "synthetic"
    dvclive: Path | None = None                     # dvclive/classifier: <pool>/plots/metrics/...
    loop_link: str | None = None                    # relative link to the loops' page, when it exists
    per_class: int = 8
    cell: int = 40
    seed: int = 0


@dataclass
class Page:
    html: str
    figures: dict[str, bytes]                       # README pictures: file name -> PNG bytes


def esc(v: Any) -> str:
    return html.escape(str(v), quote=True)


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def img(im: Image.Image, alt: str) -> str:
    mime, data = sheets.encode(im)
    return f'<img alt="{esc(alt)}" src="data:{mime};base64,{base64.b64encode(data).decode()}">'


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "x"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def chart(fig: Any, ident: str, caption: str, missing: str, figures: dict[str, bytes] | None = None) -> str:
    """A chart's ``<figure>`` (inline SVG and caption), or the note saying what is missing."""
    if fig is None:
        return f'<figure id="{ident}">{note(missing)}</figure>'
    if figures is not None:
        figures[f"{ident.removeprefix('chart-')}.png"] = charts.to_png(fig)
    return f'<figure id="{ident}">{charts.to_svg(fig, ident)}<figcaption>{esc(caption)}</figcaption></figure>'


def run_section(run: Mapping[str, Any]) -> str:
    git, m = run.get("git") or {}, run.get("machine") or {}
    changed = git.get("changed") or []
    dirty = {True: "yes: " + ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else ""),
             False: "no (code and configuration as committed)", None: "unknown"}[git.get("dirty")]
    rows = [("git revision", git.get("revision") or "unknown (not a git work tree)"),
            ("uncommitted code changes", dirty),
            ("params", f"{run.get('params')} sha256 {run.get('params_sha256') or 'not recorded'}"),
            ("date", run.get("date")),
            ("machine", f"{m.get('platform')}, {m.get('cpus')} CPUs, CUDA {'yes' if m.get('cuda') else 'no'}"),
            ("versions", f"python {m.get('python')}, torch {m.get('torch')}, factory {m.get('factory')}")]
    out = ["<table>" + "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in rows) + "</table>"]
    timings = run.get("timings") or {}
    if timings:
        out.append("<h3>Stage timings</h3>" + table(["stage", "seconds"],
                   [(k, f"{v:.1f}") for k, v in timings.items()]
                   + [("sum of the stages above", f"{sum(timings.values()):.1f}")]))
    else:
        out.append(note("stage timings not recorded (no reports/timings/*.json)"))
    return "".join(out)


def sheet_section(name: str, path: Path, per_class: int, cell: int, seed: int = 0,
                  figures: dict[str, bytes] | None = None) -> tuple[str, dict[str, str]]:
    """One dataset's contact sheet (``id="sheet-<name>"``: a labelled row per class), and its class display
    names (empty when the dataset cannot be read: then the sheet is a note)."""
    out = [f'<section class="sheet" id="sheet-{slug(name)}"><h3>{esc(name)} <span class="path">{esc(path)}</span></h3>']
    try:
        ds = Dataset(path)
        rows = sheets.rows(path, per_class, seed)
    except FactoryError as exc:
        return "".join(out) + note(f"{name}: not available ({exc})") + "</section>", {}
    labelled = [(r.name, [sheets.tile(s, cell) for s in r.samples]) for r in rows]
    out.append(f"<p>{len(ds)} images, {len(ds.classes)} classes; {per_class} per class chosen by a seeded hash of "
               "their keys.</p><table class=sheet>")
    for label, tiles in labelled:
        pics = img(sheets.strip(tiles, cell), f"{name}: {label}") if tiles else note("no images")
        out.append(f"<tr><th>{esc(label)}</th><td>{pics}</td></tr>")
    out.append("</table></section>")
    if figures is not None:
        figures[f"samples-{slug(name)}.png"] = sheets.png(sheets.sheet(labelled, cell, f"{name} ({path})"))
    return "".join(out), dict(zip(ds.classes, display_names(ds.classes, ds.meta)))


def sheets_section(inputs: PageInputs, figures: dict[str, bytes]) -> tuple[str, dict[str, str]]:
    """The contact sheets, and the class display names (from the first dataset that has them)."""
    out, names = [], {}
    for name, path in inputs.sheets:
        text, found = sheet_section(name, path, inputs.per_class, inputs.cell, inputs.seed, figures)
        out.append(text)
        names = names or found
    return ("".join(out) or note("no datasets given")), names


def rejected_section(inputs: PageInputs, per_reason: int = 6) -> str:
    if inputs.rejected is None:
        return note("no rejected dataset given")
    try:
        counts, groups = rejections(inputs.rejected, per_reason, inputs.seed)
    except FactoryError as exc:
        return note(f"rejected samples not available ({exc})")
    if not counts:
        return "<p>No sample was rejected.</p>"
    wanted = [r.matched for g in groups.values() for r in g if r.matched]
    found, problems = matched_samples(wanted, inputs.lookup)
    out = [table(["reason", "samples"], sorted(counts.items(), key=lambda kv: -kv[1]))]
    for reason, items in groups.items():
        out.append(f'<h3 id="rejected-{slug(reason)}">{esc(reason)} ({counts[reason]}; {len(items)} shown)</h3>'
                   '<div class="cards">')
        for r in items:
            pics = img(sheets.tile(r.sample, 2 * inputs.cell), f"rejected {r.sample.key}")
            if r.matched:
                m = found.get(r.matched)
                pics += (img(sheets.tile(m, 2 * inputs.cell), f"matched {r.matched[1]}") if m is not None
                         else note(f"matched image not available: {problems.get(r.matched[0], 'key not found')}"))
            out.append(f'<figure class="card">{pics}<figcaption>{esc(r.sample.key)} '
                       f'({esc(r.sample.provenance.get("class_name"))}): {esc(r.why)}</figcaption></figure>')
        out.append("</div>")
    return "".join(out)


def synthetic_scores(paths: Sequence[Path]) -> tuple[dict[str, list[float]], list[str]]:
    """The ``scores`` of every record in ``paths`` (the curated and rejected sets: the whole raw set)."""
    out: dict[str, list[float]] = {"clip": [], "clip_margin": []}
    problems = []
    for p in paths:
        try:
            for rec in Dataset(p).records():
                for k in out:
                    if isinstance((rec.get("scores") or {}).get(k), (int, float)):
                        out[k].append(float(rec["scores"][k]))
        except FactoryError as exc:
            problems.append(str(exc))
    return out, problems


def scores_section(inputs: PageInputs) -> str:
    cur = inputs.metrics.get("curate")
    if not cur:
        return note("curation report not available")
    th = (cur.get("filter") or {}).get("thresholds") or {}
    real = ((cur.get("calibration") or {}).get("scores")) or {}
    syn, problems = synthetic_scores(inputs.score_sets)
    out = [note(p) for p in problems]
    if not real:
        out.append(note("real val scores not recorded (reports/curate.json predates calibration.scores): "
                        "the synthetic scores are drawn alone"))
    for key, limit, what in (("clip", "min_score", "CLIP score"), ("clip_margin", "min_margin", "CLIP margin")):
        t = th.get(limit)
        fig = charts.histogram(real.get(key) or [], syn[key], t, xlabel=what, title=f"{what}: real val vs synthetic")
        caption = (f"{what} of real val images (against captions of the samples' form: one score per image and "
                   f"template, one margin per image) and of every raw synthetic image (against its own prompt); "
                   f"dashed: the threshold {limit} = " + ("not recorded" if t is None else f"{t:.4f}"))
        out.append(chart(fig, f"hist-{slug(key)}", caption, f"{what}: no scores recorded"))
    return "".join(out)


def _point(x: Any, d: Mapping[str, Any], metric: str) -> charts.Point | None:
    y = d.get(f"{metric}_mean", d.get(metric))
    return None if x is None or y is None else (float(x), float(y), d.get(f"{metric}_ci95"))


def charts_section(inputs: PageInputs, names: Mapping[str, str], figures: dict[str, bytes]) -> str:
    m, out = inputs.metrics, []
    ev = m.get("evaluate") or {}
    shown = {r.get("dataset") for r in inputs.guidance or []}
    sets = [d for k, d in (ev.get("datasets") or {}).items() if not shown or k in shown]
    series = {"CAS (real-test top-1)": [p for d in sets if (p := _point(d.get("guidance_scale"), d, "cas"))],
              "recognition": [p for d in sets if (p := _point(d.get("guidance_scale"), d, "recognition"))]}
    out.append(chart(charts.lines(series, xlabel="guidance scale", ylabel="rate", title="Guidance trade-off"),
                     "chart-guidance", "Accuracy of a classifier trained on each set alone (CAS) and the share an "
                     "independent real-trained CNN recognises, against guidance; bars: 95% intervals.",
                     "guidance chart: no evaluation metrics (metrics/evaluate.json)", figures))
    cls = m.get("classifier") or {}
    frac = [p for pool in inputs.fraction_pools if (c := cls.get(pool))
            and (p := _point(100 * c["synthetic_fraction"], c, "top1"))]
    out.append(chart(charts.lines({"real-test top-1": frac}, xlabel="synthetic share of the training set (%)",
                                  ylabel="top-1", title="Accuracy against synthetic share"),
                     "chart-fraction", f"Pools {', '.join(inputs.fraction_pools)}: same size, a growing share of "
                     "synthetic images; bars: 95% intervals over training seeds.",
                     "synthetic-share chart: no metrics of the fraction pools", figures))
    cas = cls.get(inputs.cas_pool) or {}
    classes = list((cas.get("per_class") or {}))
    label = [names.get(c, c) for c in classes]
    bars: dict[str, list] = {f"{inputs.cas_pool} pool: accuracy (CAS)": [
        (cas["per_class"][c], (cas.get("per_class_ci95") or {}).get(c)) for c in classes]}
    if (real := cls.get("real")) and real.get("per_class"):
        bars["real pool: accuracy"] = [(real["per_class"].get(c), (real.get("per_class_ci95") or {}).get(c))
                                       for c in classes]
    for name in ("curated", "raw"):
        rec = ((ev.get("datasets") or {}).get(name) or {}).get("recognition_per_class")
        if rec:
            bars[f"{name}: recognition"] = [(rec.get(c), None) for c in classes]
            break
    out.append(chart(charts.bars(label, bars, ylabel="rate", title="Per class, on the real test split"),
                     "chart-per-class", "Per-class accuracy of classifiers trained on each pool (95% intervals over "
                     "training seeds) and the recognition rate of the synthetic images.",
                     f"per-class chart: no per-class metrics of pool {inputs.cas_pool}"))
    conf = cas.get("confusion")
    out.append(chart(charts.confusion(conf, label, title=f"Confusion matrix, {inputs.cas_pool} pool (CAS)")
                     if conf else None, "chart-confusion",
                     cas.get("confusion_note") or "rows: true class, columns: predicted class",
                     f"confusion matrix not recorded (metrics/classifier/{inputs.cas_pool}.json predates it: "
                     "rerun train_classifier)"))
    steps = {p: [h["step"] for h in c.get("history") or []] for p, c in cls.items() if c}
    curves = read_curves(inputs.dvclive, steps) if inputs.dvclive is not None else {}
    out.append(chart(charts.curves(curves, title="Training curves (mean over seeds; band: lowest to highest seed)"),
                     "chart-curves", "Classifier training loss and real-test top-1 per pool at each evaluation "
                     "(dvclive).",
                     "training curves not recorded (no dvclive folder)"))
    return "".join(out)


def named_datasets(specs: Sequence[str]) -> list[tuple[str, Path]]:
    """``NAME=DIR`` arguments as ``(name, folder)``. A ``DIR`` without an ``index.json`` whose folders are
    datasets (the guidance sweep's ``w1``, ``w4``) gives one each, named ``NAME <folder>``, in natural order."""
    out = []
    for spec in specs:
        name, sep, folder = spec.partition("=")
        if not sep or not name or not folder:
            raise FactoryError(f"--sheet {spec!r}: expected NAME=DIR (e.g. curated=data/synthetic/curated)")
        path = Path(folder)
        subs = [] if (path / INDEX_NAME).exists() or not path.is_dir() else \
            [p for p in path.iterdir() if (p / INDEX_NAME).is_file()]
        natural = lambda p: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)]  # noqa: E731
        out += [(f"{name} {p.name}", p) for p in sorted(subs, key=natural)] or [(name, path)]
    return out


def write(page: Page, html_path: Path | str, figures_dir: Path | str | None = None) -> None:
    """The page and (when ``figures_dir`` is given) the README figures, each written atomically."""
    atomic_write_bytes(Path(html_path), page.html.encode())
    if figures_dir is not None:
        Path(figures_dir).mkdir(parents=True, exist_ok=True)
        for name, data in sorted(page.figures.items()):
            atomic_write_bytes(Path(figures_dir) / name, data)


def write_report(metrics: Mapping[str, Any], markdown: str, html_path: Path | str, *, sheets: Sequence[str] = (),
                 rejected: Path | str | None = None, matched: Sequence[Path | str] = (),
                 guidance: Path | str | None = None, dvclive: Path | str | None = None,
                 timings: Path | str | None = None, params: Path | str | None = None,
                 fraction_pools: Sequence[str] = (), cas_pool: str = "synthetic",
                 loop_page: Path | str | None = None, figures: Path | str | None = None, seed: int = 0) -> Page:
    """Build the page from paths as a command line gives them (``sheets``: ``NAME=DIR``) and write it, with
    the README figures into ``figures``; the loops' page is linked (relative to the page) when it exists.
    What ``stages/report.py`` and ``factory report`` call."""
    loop = Path(loop_page) if loop_page else None
    page = build(PageInputs(
        metrics, markdown, run_info(".", params, timings), named_datasets(sheets),
        rejected=Path(rejected) if rejected else None, lookup={str(p): Path(p) for p in matched},
        guidance=read_json(guidance, what="guidance plot data") if guidance else None,
        fraction_pools=fraction_pools, cas_pool=cas_pool, dvclive=Path(dvclive) if dvclive else None,
        loop_link=os.path.relpath(loop, Path(html_path).parent) if loop and loop.is_file() else None, seed=seed))
    write(page, html_path, figures)
    return page


def build(inputs: PageInputs) -> Page:
    """The page and the README figures. The synthetic scores come from ``score_sets``, by default the
    curated and rejected datasets the curation report names; matched images are looked up in ``lookup``,
    the contact sheets' datasets and the rejected one."""
    cur = inputs.metrics.get("curate") or {}
    if not inputs.score_sets:
        inputs = replace(inputs, score_sets=[Path(p) for p in (cur.get("out"), cur.get("rejected_out")) if p])
    extra = [p for _, p in inputs.sheets] + ([inputs.rejected] if inputs.rejected else [])
    inputs = replace(inputs, lookup={**{str(p): p for p in extra}, **inputs.lookup})
    figures: dict[str, bytes] = {}
    sheets_html, names = sheets_section(inputs, figures)
    notices = "".join(note(line[2:].replace("**", "")) for line in inputs.markdown.splitlines()
                      if line.startswith("> "))  # e.g. the random-weights warning: first thing on the page
    body = {"run": notices + run_section(inputs.run), "sheets": sheets_html, "rejected": rejected_section(inputs),
            "scores": scores_section(inputs), "charts": charts_section(inputs, names, figures),
            "tables": html_body(results_block(inputs.markdown))}
    links = {"Self-consuming loops": inputs.loop_link} if inputs.loop_link else {}
    return Page(document("Results", {k: (SECTIONS[k], v) for k, v in body.items()}, links), figures)


def document(title: str, sections: Mapping[str, tuple[str, str]], links: Mapping[str, str] | None = None) -> str:
    """A whole page: ``sections`` is ``{id: (heading, html)}``, each a ``<section>`` reached from the top's
    navigation, with ``links`` (``{text: relative href}``) after them."""
    nav = "".join(f'<a href="#{k}">{esc(h)}</a>' for k, (h, _) in sections.items())
    nav += "".join(f'<a href="{esc(href)}">{esc(text)}</a>' for text, href in (links or {}).items())
    parts = [f'<section id="{k}"><h2>{esc(h)}</h2>{v}</section>' for k, (h, v) in sections.items()]
    return (f"<!doctype html>\n<html lang=en><head><meta charset=utf-8><title>{esc(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{esc(title)}</h1><nav>{nav}</nav>\n" + "\n".join(parts)
            + "\n</body></html>\n")
