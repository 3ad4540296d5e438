"""Commands on curation: ``filter``, ``prompts audit`` and ``dedup`` (near-duplicates within a dataset,
leaks into a test split, memorisation of a train split)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from factory.cli.common import echo, echo_json, escape, escape_all, parse_scorer, progress
from factory.core.errors import FactoryError
from factory.core.text import plural


@click.command(name="filter")
@click.argument("dataset", type=click.Path(path_type=Path))
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("--scorer", "scorer_spec", default="embedded:models/clip", show_default=True,
              help="embedded:<folder> or open_clip:<arch>:<checkpoint file>.")
@click.option("--min-score", type=float, default=None, help="Keep images whose CLIP score >= this.")
@click.option("--min-margin", type=float, default=None, help="Keep images whose class margin >= this.")
@click.option("--calibrate-on", type=click.Path(path_type=Path), default="data/real/val", show_default=True,
              help="Held-out real dataset whose score percentile sets the thresholds not given (real val: not "
                   "the images the scorer was trained on, and never test).")
@click.option("--percentile", type=float, default=5.0, show_default=True)
@click.option("--rejected", type=click.Path(path_type=Path), default=None,
              help="Also write the rejected samples (with their reason) to this dataset.")
@click.option("--report", type=click.Path(path_type=Path), default=None, help="Write the JSON report here.")
@click.option("--overwrite", is_flag=True)
def filter_cmd(dataset: Path, out_dir: Path, scorer_spec: str, min_score: float | None, min_margin: float | None,
               calibrate_on: Path, percentile: float, rejected: Path | None, report: Path | None,
               overwrite: bool) -> None:
    """Semantic-mismatch filter: keep images that CLIP says show their prompt.

    Example: factory filter data/synthetic/raw data/filtered --scorer embedded:models/clip --rejected data/rej
    """
    from factory.config import CurateConfig
    from factory.curate.filter import check_outputs, curate

    cfg = CurateConfig(min_score=min_score, min_margin=min_margin, percentile=percentile, deduplicate=False,
                       rebalance=False)
    calib = None if (min_score is not None and min_margin is not None) else calibrate_on
    check_outputs(out_dir, rejected, report, inputs=[dataset, calib], overwrite=overwrite)  # before the scorer loads
    scorer = parse_scorer(scorer_spec)
    r = curate(dataset, out_dir, scorer=scorer, cfg=cfg, calibrate_on=calib, rejected_dir=rejected,
               report_path=report, overwrite=overwrite, progress=progress)
    t = r.report["filter"]["thresholds"]
    echo(f"kept {r.kept} of {r.report['samples']} (clip >= {t['min_score']:.4f}, margin >= "
         f"{t['min_margin']:.4f}); rejected: " + ", ".join(
             f"{escape(k)} {v}" for k, v in r.report["reasons"].items() if k != "kept" and v))


@click.command("audit")
@click.argument("dataset", type=click.Path(path_type=Path))
@click.option("--plan", "plan_file", type=click.Path(path_type=Path), default=None,
              help="Compare with this plan's target (default: uniform over the values).")
@click.option("--scorer", "scorer_spec", default=None,
              help="embedded:<folder> or open_clip:<arch>:<ckpt>: measure by CLIP the attributes pixels cannot.")
@click.option("--mode", type=click.Choice(["auto", "provenance", "pixels", "clip"]), default="auto", show_default=True,
              help="auto: provenance for real data (ground truth); for synthetic data the pixels (colour, "
                   "thickness, slant) and CLIP zero-shot for other axes. clip falls back to pixels for a "
                   "measurable axis the scorer has no words for.")
@click.option("--reference", type=click.Path(path_type=Path), default=None,
              help="The real dataset (real train) whose per-class tertiles define thickness and slant levels.")
@click.option("--json", "as_json", is_flag=True)
def prompts_audit(dataset: Path, plan_file: Path | None, scorer_spec: str | None, mode: str, reference: Path | None,
                  as_json: bool) -> None:
    """Measure each attribute axis per class against the target; print the table and the TV distance.

    For synthetic data the realised values (what the images show) are counted, with the requested ones
    (the prompt's) beside them, the agreement and the requested -> realised confusion.

    Example: factory prompts audit data/bias/synthetic/raw --plan data/bias/prompts/plan.jsonl
    """
    from factory.curate.audit import audit, format_audit

    scorer = parse_scorer(scorer_spec) if scorer_spec else None
    result = audit(dataset, plan=plan_file, scorer=scorer, mode=mode, reference=reference)  # type: ignore[arg-type]
    if as_json:
        echo_json(result)
    else:
        echo(format_audit(escape_all(result)))


@click.command("dedup")
@click.argument("dataset", type=click.Path(path_type=Path))
@click.option("--against", multiple=True, type=click.Path(path_type=Path),
              help="Drop every sample that nearly matches a sample of this dataset (the real TEST split: "
                   "leaks are always dropped). Repeatable.")
@click.option("--report-against", multiple=True, type=click.Path(path_type=Path),
              help="Only report matches with this dataset (the real TRAIN split: memorisation rate); "
                   "drops nothing. Repeatable.")
@click.option("--hash", "hash_name", default="phash", show_default=True, help="phash, dhash or whash.")
@click.option("--hash-size", default=8, show_default=True, type=int,
              help="Hash side: the hash has hash-size x hash-size bits.")
@click.option("--max-distance", default=None, type=int,
              help="Largest Hamming distance that counts as a near-duplicate "
                   "[default: 8 for 8x8 hashes, 48 for 16x16].")
@click.option("--report", "report_file", default=None, type=click.Path(path_type=Path),
              help="Write the full report (pairs, clusters, removed keys, summary) to this JSON file.")
@click.option("--out", "out_dir", default=None, type=click.Path(path_type=Path),
              help="Write a new dataset here without the removed samples.")
@click.option("--overwrite", is_flag=True, help="Replace --out if it already holds a dataset.")
@click.option("--fail-on-duplicates", is_flag=True, help="Exit 1 if any pair is found.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def dedup_command(dataset: Path, against: tuple[Path, ...], report_against: tuple[Path, ...], hash_name: str,
                  hash_size: int, max_distance: int | None, report_file: Path | None, out_dir: Path | None,
                  overwrite: bool, fail_on_duplicates: bool, as_json: bool) -> None:
    """Find near-duplicates in DATASET, and its near-copies of other datasets.

    Within DATASET, each cluster of near-duplicates keeps its first sample by sorted key. Every
    sample that nearly matches an --against dataset is removed (a synthetic image close to a test
    image must never reach a training pool). --report-against only counts matches (memorisation).
    --out writes the dataset without the removed samples; --report writes every pair.

    \b
    Example: factory dedup data/synthetic/raw --against data/real/test \\
               --report-against data/real/train --out data/synthetic/dedup --report reports/dedup.json
    """
    from factory.core.outputs import claim_output_file
    from factory.core.shards import check_output_dir
    from factory.curate.dedup import DedupConfig, find_duplicates, write_clean

    config = DedupConfig(hash=hash_name, hash_size=hash_size, max_distance=max_distance)
    inputs = [dataset, *against, *report_against]
    if out_dir is not None:  # fail before hashing, not after
        if out_dir.resolve() == dataset.resolve():
            raise FactoryError(f"--out {out_dir}: must differ from DATASET")
        check_output_dir(out_dir, overwrite, inputs=inputs, others=[report_file])
    if report_file is not None:
        claim_output_file(report_file, inputs=inputs, others=[out_dir])
    report = find_duplicates(dataset, against=against, report_against=report_against, config=config,
                             progress=progress)
    if out_dir is not None:  # first: a hostile input that fails the copy leaves no report behind
        meta = {"dedup": {"from": str(dataset), "hash": config.hash, "hash_size": config.hash_size,
                          "max_distance": config.distance, "against": [str(p) for p in against],
                          "removed": len(report.removed)}}
        write_clean(dataset, report.removed, out_dir, overwrite=overwrite, meta=meta, progress=progress)
    if report_file is not None:
        report.write(report_file, others=[out_dir])

    s = report.summary
    if as_json:
        echo_json(s)
    else:
        w = s["within"]
        echo(f"{escape(dataset)}: {plural(s['samples'], 'sample')}, {config.hash} "
             f"{config.hash_size}x{config.hash_size} "
             f"(max distance {config.distance})")
        echo(f"  within: {plural(w['pairs'], 'pair')} in {plural(w['clusters'], 'cluster')} -> {w['removed']} removed")
        for c in s["cross"]:
            what = "removed (leaks)" if c["role"] == "against" else "reported (memorisation)"
            echo(f"  {'against' if c['role'] == 'against' else 'report-against'} {escape(c['dataset'])}: "
                 f"{plural(c['pairs'], 'pair')}, {plural(c['matched'], 'sample matches', 'samples match')} "
                 f"({c['rate']:.2%}) -> {what}")
        if s["memorization_rate"] is not None:
            echo(f"  memorisation rate: {s['memorization_rate']:.2%}")
        echo(f"  removed {s['removed']}, kept {s['kept']}"
             + (f" -> {escape(out_dir)}" if out_dir is not None else ""))
        if report_file is not None:
            echo(f"  report: {escape(report_file)}")
    if fail_on_duplicates and report.pairs:
        echo(f"dedup: {_found(report.summary)} found (--fail-on-duplicates)", err=True)
        sys.exit(1)


def _found(summary: dict) -> str:
    """``4 near-duplicate pairs, 1 leak and 2 memorised samples``: what ``--fail-on-duplicates`` fails on."""
    matched = {role: sum(c["matched"] for c in summary["cross"] if c["role"] == role) for role in ("against", "report")}
    parts = [plural(summary["within"]["pairs"], "near-duplicate pair") if summary["within"]["pairs"] else "",
             plural(matched["against"], "leak") if matched["against"] else "",
             plural(matched["report"], "memorised sample") if matched["report"] else ""]
    parts = [p for p in parts if p]
    return ", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0]
