"""The dataset card (``README.md``) of a Hugging Face export, built from the data itself.

:class:`ExportStats` gathers, in the export's one pass over the samples, what the card says: class counts by
source, generations, the generators and their settings, the requested attributes (the plan's balance), the
curation scores and decisions, the parents. :func:`build_card` turns them, the datasets' index meta and the
pipeline's results (:func:`gather_results`: ``reports/curate.json``, ``metrics/classifier/*.json``,
``metrics/evaluate.json`` of the pipeline folder) into a ``huggingface_hub.DatasetCard``: the YAML header the
Hub reads (license, task categories, tags, size category, source datasets, annotation creators, the
``configs`` that point ``load_dataset`` at the Parquet files, the features) and a Markdown body.
"""

from __future__ import annotations

import io
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from PIL import Image

from factory.core.errors import FactoryError
from factory.core.files import dumps_json, parse_json, read_json
from factory.core.sample import Sample, sample_attributes
from factory.share.columns import DESCRIPTIONS

EXPORT_SCHEMA = "factory.hf-export/1"
MARK = f"<!-- {EXPORT_SCHEMA}: written by factory export-hf -->"

# Why curation removed a sample (reasons of reports/curate.json).
REASONS = {
    "low_clip_score": "CLIP score against its own caption below the threshold (the image does not show its prompt)",
    "low_clip_margin": "own class not clearly ahead of the best other class in CLIP (the image is ambiguous)",
    "leak": "near-duplicate of a held-out real image (test or val): would leak evaluation data",
    "near_duplicate": "near-duplicate of another synthetic image that was kept",
    "memorized": "near-copy of a real training image (the generator memorised it)",
    "over_quota": "surplus over the plan's quota for its class and attribute cell (rebalancing)",
}
PAPERS = {  # key -> (when it applies, BibTeX)
    "ddpm": ("diffusion generators", "@inproceedings{ho2020ddpm, title={Denoising Diffusion Probabilistic Models}, "
             "author={Ho, Jonathan and Jain, Ajay and Abbeel, Pieter}, booktitle={NeurIPS}, year={2020}}"),
    "cfg": ("classifier-free guidance", "@article{ho2022cfg, title={Classifier-Free Diffusion Guidance}, "
            "author={Ho, Jonathan and Salimans, Tim}, journal={arXiv:2207.12598}, year={2022}}"),
    "ldm": ("Stable Diffusion (diffusers backend)", "@inproceedings{rombach2022ldm, title={High-Resolution Image "
            "Synthesis with Latent Diffusion Models}, author={Rombach, Robin and Blattmann, Andreas and Lorenz, "
            "Dominik and Esser, Patrick and Ommer, Bj{\\\"o}rn}, booktitle={CVPR}, year={2022}}"),
    "clip": ("CLIP scores of curation", "@inproceedings{radford2021clip, title={Learning Transferable Visual "
             "Models From Natural Language Supervision}, author={Radford, Alec and others}, booktitle={ICML}, "
             "year={2021}}"),
    "mad": ("samples of generation 2 and later (self-consuming loops)", "@inproceedings{alemohammad2024mad, "
            "title={Self-Consuming Generative Models Go MAD}, author={Alemohammad, Sina and others}, "
            "booktitle={ICLR}, year={2024}}"),
    "sims": ("SIMS negative guidance", "@article{alemohammad2024sims, title={Self-Improving Diffusion Models "
             "with Synthetic Data}, author={Alemohammad, Sina and others}, journal={arXiv:2408.16333}, year={2024}}"),
    "croissant": ("the croissant.json metadata", "@inproceedings{akhtar2024croissant, title={Croissant: A "
                  "Metadata Format for ML-Ready Datasets}, author={Akhtar, Mubashara and others}, "
                  "booktitle={NeurIPS Datasets and Benchmarks Track}, year={2024}}"),
}
GENERATOR_SETTINGS = ("backend", "model", "weights_sha256", "scheduler", "steps", "guidance_scale",
                      "negative_guidance", "height", "width", "dtype")


@dataclass
class ExportStats:
    """What the card and the Croissant file say about the exported samples, gathered in one pass."""

    classes: list[str]
    names: list[str]
    samples: int = 0
    bytes: int = 0
    per_class: Counter = field(default_factory=Counter)  # (class id, source) -> n
    sources: Counter = field(default_factory=Counter)
    generations: Counter = field(default_factory=Counter)
    formats: Counter = field(default_factory=Counter)
    sizes: Counter = field(default_factory=Counter)  # "WxH" -> n
    generators: Counter = field(default_factory=Counter)  # canonical JSON of the settings -> n
    origins: Counter = field(default_factory=Counter)  # real samples: origin dataset -> n
    parents: dict[str, dict[str, Any]] = field(default_factory=dict)
    attributes: Counter = field(default_factory=Counter)  # (axis, value) over synthetic samples -> n
    decisions: Counter = field(default_factory=Counter)
    clip: list[float] = field(default_factory=list)  # min, sum, max of curated CLIP scores
    scored: int = 0
    example_key: str | None = None  # a synthetic sample to remake

    def add(self, sample: Sample) -> None:
        rec = sample.provenance
        self.samples += 1
        self.bytes += len(sample.image)
        self.per_class[(self.classes[sample.label], rec["source"])] += 1
        self.sources[rec["source"]] += 1
        self.generations[int(rec["generation"])] += 1
        self.formats[sample.ext] += 1
        with Image.open(io.BytesIO(sample.image)) as im:  # the header only: already decoded by the checked read
            self.sizes["%dx%d" % im.size] += 1
        for p in rec.get("parents") or []:
            if isinstance(p, dict):
                self.parents.setdefault(str(p.get("id", p.get("path", "?"))), p)
        if rec["source"] == "real":
            self.origins[str((rec.get("origin") or {}).get("dataset", "?"))] += 1
            return
        if self.example_key is None:
            self.example_key = rec["key"]
        gen = rec.get("generator") or {}
        self.generators[dumps_json({k: gen.get(k) for k in GENERATOR_SETTINGS}).decode()] += 1
        for axis, value in sample_attributes(rec).items():
            self.attributes[(axis, value)] += 1
        decision = rec.get("decision")
        if isinstance(decision, dict):
            self.decisions["kept" if decision.get("kept") else str(decision.get("reason"))] += 1
        clip = (rec.get("scores") or {}).get("clip")
        if isinstance(clip, (int, float)) and not isinstance(clip, bool):
            self.clip = [min(self.clip[0], clip), self.clip[1] + clip, max(self.clip[2], clip)] if self.clip \
                else [clip, clip, clip]
            self.scored += 1

    @property
    def synthetic(self) -> int:
        return self.sources.get("synthetic", 0)


def size_category(n: int) -> str:
    """The Hub's ``size_categories`` value for ``n`` samples."""
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                        (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M")):
        if n < limit:
            return name
    return "100M<n<1B"


def find_pipeline_root(paths: Sequence[Path]) -> Path | None:
    """The nearest folder above the first of ``paths`` that holds a ``dvc.yaml`` (the pipeline the data
    came from), or None."""
    for p in paths[:1]:
        for folder in Path(p).resolve().parents:
            if (folder / "dvc.yaml").is_file():
                return folder
    return None


def gather_results(root: Path, datasets: Sequence[Path]) -> dict[str, Any]:
    """What the pipeline at ``root`` measured about the exported ``datasets``: the curation report that
    wrote one of them, every classifier's top-1 on the real test split, and the evaluation rows of these
    datasets. Missing files are left out; a file that is there must parse."""
    mine = {Path(d).resolve() for d in datasets}
    out: dict[str, Any] = {"root": str(root)}
    report = root / "reports" / "curate.json"
    if report.is_file():
        rep = read_json(report, what="curation report")
        if isinstance(rep, dict) and rep.get("out") and (root / str(rep["out"])).resolve() in mine:
            out["curate"] = rep
    classifiers = []
    for f in sorted((root / "metrics" / "classifier").glob("*.json")):
        m = read_json(f, what="classifier metrics")
        if isinstance(m, dict) and "top1" in m:
            classifiers.append({"pool": m.get("pool", f.stem), "synthetic_fraction": m.get("synthetic_fraction"),
                                "n_train": m.get("n_train"), "top1": m["top1"], "top1_ci95": m.get("top1_ci95"),
                                "test": (m.get("test") or {}).get("path")})
    if classifiers:
        out["classifier"] = classifiers
    evaluate = root / "metrics" / "evaluate.json"
    if evaluate.is_file():
        ev = read_json(evaluate, what="evaluation metrics")
        rows = {n: d for n, d in ((ev or {}).get("datasets") or {}).items()
                if isinstance(d, dict) and d.get("path") and (root / str(d["path"])).resolve() in mine}
        if rows:
            out["evaluate"] = rows
    return out


def plan_header(path: Path) -> dict[str, Any] | None:
    """The header (first line) of a prompt plan file, or None when the file is not there."""
    if not path.is_file():
        return None
    with open(path, "rb") as f:
        header = parse_json(f.readline(), path)
    if not isinstance(header, dict) or header.get("schema") != "factory.plan/1":
        raise FactoryError(f"{path}: not a prompt plan (first line must be a factory.plan/1 header)")
    return header


def _md(text: Any) -> str:
    """``text`` safe in a Markdown table cell: one line, no column break, no HTML."""
    return " ".join(str(text).split()).replace("|", "\\|").replace("<", "&lt;")


def _table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
            *("| " + " | ".join(_md(c) for c in r) + " |" for r in rows), ""]


def _fmt(x: Any) -> str:
    return f"{x:.4f}" if isinstance(x, float) else "" if x is None else str(x)


def _ci(m: Mapping[str, Any], k: str) -> str:
    ci = m.get(f"{k}_ci95")
    return f"{_fmt(m.get(k))} [{_fmt(ci[0])}, {_fmt(ci[1])}]" if isinstance(ci, list) and len(ci) == 2 \
        else _fmt(m.get(k))


def _made(stats: ExportStats) -> list[str]:
    lines = ["## How it was made", ""]
    if stats.origins:
        lines += ["Real images come from: " + ", ".join(f"`{_md(o)}` ({n})" for o, n in stats.origins.items()), ""]
    if not stats.generators:
        return lines + ["No sample is synthetic: every image is real.", ""]
    lines += ["Synthetic images were made by these generators (settings as recorded in every sample's record):", ""]
    rows = [[*(_fmt(g.get(k)) if k != "weights_sha256" else _fmt(g.get(k))[:16] for k in GENERATOR_SETTINGS), n]
            for g, n in ((parse_json(s, "generator"), n) for s, n in stats.generators.most_common())]
    lines += _table([*GENERATOR_SETTINGS, "samples"], rows)
    if stats.parents:
        lines += ["Each generator was trained on (the records' `parents`): " + ", ".join(
            f"`{_md(i)}` (index sha256 {_md(str(p.get('index_sha256', '?'))[:12])})" for i, p in stats.parents.items()),
            ""]
    gens = ", ".join(f"generation {g}: {n}" for g, n in sorted(stats.generations.items()))
    return lines + [f"Samples by generation: {gens}.", ""]


def _plan(stats: ExportStats, metas: Sequence[Mapping[str, Any]], root: Path | None) -> list[str]:
    lines = ["## The plan and its balance", ""]
    plans = [m["plan"] for m in metas if isinstance(m.get("plan"), dict)]
    header = None
    for p in plans:
        lines.append(f"Prompt plan `{_md(p.get('path'))}`: {p.get('rows')} rows, sha256 "
                     f"`{_md(str(p.get('sha256'))[:16])}`.")
        where = Path(str(p.get("path")))
        for candidate in ([where] if where.is_absolute() else [where] + ([root / where] if root else [])):
            header = header or plan_header(candidate)
    lines.append("")
    target = (header or {}).get("target") or {}
    if target:
        lines += [f"Target: {target.get('images_per_class')} images per class, generated with oversampling "
                  f"x{target.get('oversample')} so that curation can cut to the quota.", ""]
    axes = sorted({a for a, _ in stats.attributes})
    if axes:
        lines += ["Requested attributes of the synthetic samples (share of the export vs the plan's target):", ""]
        rows = []
        for axis in axes:
            want = (target.get("attributes") or {}).get(axis) or {}
            total = sum(n for (a, _), n in stats.attributes.items() if a == axis)
            for (a, v), n in sorted(stats.attributes.items()):
                if a == axis:
                    rows.append([axis, v, n, f"{n / total:.3f}", _fmt(float(want[v]) / sum(want.values()))
                                 if v in want and sum(want.values()) else ""])
        lines += _table(["attribute", "value", "samples", "share", "target share"], rows)
    counts = [n for n in (sum(stats.per_class[(c, s)] for s in stats.sources) for c in stats.classes)]
    if counts and min(counts) > 0:
        lines += [f"Class balance: largest class / smallest class = {max(counts) / min(counts):.2f}.", ""]
    return lines


def _curation(stats: ExportStats, metas: Sequence[Mapping[str, Any]], results: Mapping[str, Any]) -> list[str]:
    rep = results.get("curate")
    curated = [m for m in metas if m.get("thresholds")]
    if not rep and not curated and not stats.scored:
        return []
    lines = ["## Curation: what each filter removed and why", ""]
    for m in curated:
        t, s = m["thresholds"], m.get("scorer") or {}
        lines += [f"Semantic-mismatch filter with the {_md(s.get('backend', '?'))} CLIP scorer "
                  f"`{_md(s.get('model', '?'))}`: kept images with CLIP score >= {_fmt(t.get('min_score'))} and "
                  f"class margin >= {_fmt(t.get('min_margin'))}.", ""]
    if rep:
        lines += [f"Of {rep.get('samples')} generated images, {rep.get('kept')} were kept and {rep.get('rejected')} "
                  f"removed (`reports/curate.json`):", ""]
        rows = [[r, n, REASONS.get(r, "")] for r, n in (rep.get("reasons") or {}).items() if r != "kept"]
        lines += _table(["reason", "removed", "why"], rows)
        cal = rep.get("calibration") or {}
        if cal.get("split"):
            lines += [f"Thresholds calibrated on the real split `{_md(cal['split'])}` ({cal.get('n')} images, "
                      f"percentile {cal.get('percentile')}).", ""]
    dropped = {r: n for r, n in stats.decisions.items() if r != "kept"}
    if dropped:  # an export of rejected samples: each record says why it was removed
        lines += ["Samples in this export that curation rejected, by the reason in their record:", ""]
        lines += _table(["reason", "samples", "why"], [[r, n, REASONS.get(r, "")] for r, n in sorted(dropped.items())])
    if stats.scored:
        lo, total, hi = stats.clip
        lines += [f"CLIP scores of the exported synthetic samples: min {lo:.4f}, mean {total / stats.scored:.4f}, "
                  f"max {hi:.4f} ({stats.scored} scored).", ""]
    return lines


def _proof(results: Mapping[str, Any]) -> list[str]:
    if not results.get("classifier") and not results.get("evaluate"):
        return []
    root = Path(results["root"]).resolve()
    shown = root.relative_to(Path.cwd().resolve()) if root.is_relative_to(Path.cwd().resolve()) else root.name
    lines = ["## What the data does for a model", "", f"Measured by the pipeline in `{_md(shown)}` (its `metrics/`).",
             ""]
    if results.get("classifier"):
        lines += ["Classifiers trained on each pool, top-1 on the REAL test split (95% interval):", ""]
        lines += _table(["pool", "synthetic fraction", "train images", "top-1"],
                        [[c["pool"], _fmt(c["synthetic_fraction"]), _fmt(c["n_train"]), _ci(c, "top1")]
                         for c in results["classifier"]])
    for name, d in (results.get("evaluate") or {}).items():
        lines += [f"Evaluation of `{_md(name)}` against real data: " + ", ".join(
            f"{k} {_ci(d, k)}" for k in ("precision", "recall", "density", "coverage", "fd", "kid") if k in d) + ".",
            ""]
    return lines


def build_card(stats: ExportStats, *, name: str, split: str, license: str, features: Any,
               metas: Sequence[Mapping[str, Any]], results: Mapping[str, Any], root: Path | None,
               source: str, repo_id: str | None = None, sizes: Mapping[str, int] | None = None):
    """The dataset card of an export: a ``huggingface_hub.DatasetCard`` (YAML header + Markdown body).

    ``sizes`` (``num_bytes``: the rows in Arrow, ``download_size``: the Parquet files) go into ``dataset_info``
    with the features and the row count. They matter beyond the Hub's display: ``datasets`` caches a local
    folder under its name and a hash of this YAML (not of the files its ``configs`` point at), so sizes that
    change with the data keep a re-export from loading the previous one's cached rows."""
    from huggingface_hub import DatasetCard, DatasetCardData

    sizes = sizes or {}
    synthetic = stats.synthetic > 0
    tags = ["synthetic", "diffusion", "provenance"] if synthetic else ["provenance"]
    sources = sorted({*stats.parents, *stats.origins})
    data = DatasetCardData(
        license=license, pretty_name=name, task_categories=["image-classification"],
        task_ids=["multi-class-image-classification"], size_categories=[size_category(stats.samples)],
        source_datasets=sources or None, tags=tags + ["factory"],
        annotations_creators=(["machine-generated"] if synthetic else []) + (["found"] if stats.origins else []),
        configs=[{"config_name": "default", "data_files": [{"split": split, "path": f"data/{split}-*"}]}],
        dataset_info={"features": features._to_yaml_list(),
                      "splits": [{"name": split, "num_bytes": int(sizes.get("num_bytes", 0)),
                                  "num_examples": stats.samples}],
                      "download_size": int(sizes.get("download_size", 0)),
                      "dataset_size": int(sizes.get("num_bytes", 0))},
    )
    share = f"{stats.synthetic / stats.samples:.1%}" if stats.samples else "0%"
    where = repo_id or "path/or/repo"
    body = [MARK, f"# {_md(name)}", "",
            f"{stats.samples} images of {len(stats.classes)} classes exported from `{_md(source)}` by the synthetic "
            f"image dataset factory: {stats.sources.get('real', 0)} real, {stats.synthetic} synthetic ({share}). "
            "Every row carries its full provenance record" + (", so every synthetic image says how it was made "
                                                              "and can be made again." if synthetic else "."), "",
            "```python", "import datasets", f"ds = datasets.load_dataset(\"{where}\", split=\"{split}\")",
            "ds.features[\"label\"].names   # class ids; ds[0][\"class_name\"] is the human name", "```", "",
            "## Columns", ""]
    body += _table(["column", "what it holds"], [[f"`{k}`", v] for k, v in DESCRIPTIONS.items()])
    body += ["## Classes", ""]
    body += _table(["label", "id", "name", "real", "synthetic"],
                   [[i, c, n, stats.per_class[(c, "real")], stats.per_class[(c, "synthetic")]]
                    for i, (c, n) in enumerate(zip(stats.classes, stats.names))])
    body += [f"Image formats: {', '.join(f'{k} {v}' for k, v in sorted(stats.formats.items()))}; sizes: "
             f"{', '.join(f'{k} ({v})' for k, v in stats.sizes.most_common(5))}.", ""]
    body += _made(stats) + _plan(stats, metas, root) + _curation(stats, metas, results) + _proof(results)
    body += ["## Provenance and remaking a sample", "",
             "The `record` column is each sample's provenance record (`factory.sample/1`): the prompt, the seed, "
             "the generator with its weights' sha256 and sampler settings, the curation scores and decision, the "
             "parents. `factory ingest hf:<repo or folder> <dataset>` turns the export back into a factory "
             "dataset with the same keys, records and image bytes.", ""]
    if stats.example_key is not None:
        body += ["```bash", f"factory ingest hf:{where} data/pulled", f"factory regenerate data/pulled "
                 f"{stats.example_key} remade.png --model models/generator   # exit 0: same bytes, same weights",
                 "```", "", "`regenerate` checks the model folder's weights against the record's `weights_sha256` "
                 "and the image against its `sha256`.", ""]
    body += ["## Limitations and biases", "", limitations(stats), "", "## Citation", "",
             "Cite the methods this data was made with:", "", "```bibtex"]
    body += [PAPERS[k][1] for k in papers(stats)] + ["```", ""]
    return DatasetCard("---\n" + data.to_yaml() + "\n---\n\n" + "\n".join(body))


def papers(stats: ExportStats) -> list[str]:
    """Which :data:`PAPERS` apply to the exported samples."""
    backends = {parse_json(g, "generator").get("backend") for g in stats.generators}
    negative = [parse_json(g, "generator").get("negative_guidance") for g in stats.generators]
    keys = []
    if stats.generators:
        keys += ["ddpm", "cfg"] + (["ldm"] if "diffusers" in backends else [])
    if stats.scored or stats.decisions:
        keys.append("clip")
    if any(g >= 2 for g in stats.generations):
        keys.append("mad")
    if any(isinstance(n, dict) and n.get("method") == "sims" for n in negative):
        keys.append("sims")
    return keys + ["croissant"]


def limitations(stats: ExportStats) -> str:
    """What a user of these samples must know: the same text goes to the card and to Croissant's RAI fields."""
    if not stats.synthetic:
        return ("Real images as ingested by the factory: their biases are those of the source dataset. Labels are "
                "the source's.")
    return ("Synthetic images are made by a model trained on the parent datasets listed above: they inherit the "
            "parents' biases and can amplify them, cover less variety than real data (lower recall/coverage), and "
            "may carry generator artefacts. Labels are the prompts' classes, not human annotations; curation "
            "removes images a CLIP scorer judges off-class, so the kept set also carries the scorer's biases. "
            "Samples of generation 2 and later were made by models trained on synthetic data and drift from the "
            "real distribution (model collapse). Do not use synthetic images as evidence about the real world; "
            "evaluate on real data.")
