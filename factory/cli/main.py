"""The ``factory`` command line.

Exit codes: 0 success; 1 a check ran and found problems; 2 bad usage or bad input. Errors are one
line on stderr naming the file, key or parameter at fault.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any, Iterable, TypeVar

import click

from factory import __version__
from factory.core.errors import FactoryError

T = TypeVar("T")


def progress(items: Iterable[T], desc: str, total: int | None = None) -> Iterable[T]:
    """A tqdm bar on a terminal; the bare iterable otherwise (quiet in pipes, logs and CI)."""
    if not sys.stderr.isatty():
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, total=total, unit="img", dynamic_ncols=True)


class FactoryGroup(click.Group):
    """Turns library errors into one line on stderr and exit code 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FactoryError as exc:
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(2)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as exc:
            where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
            click.echo(f"Error: {where}{exc.strerror or exc}", err=True)
            ctx.exit(2)


@click.group(cls=FactoryGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="factory")
@click.option("-v", "--verbose", is_flag=True, help="Log progress details to stderr.")
def cli(verbose: bool) -> None:
    """Synthetic image dataset factory: make, curate, version and prove synthetic training data."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")


@cli.command()
@click.argument("source")
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("--shard-size", default=1000, show_default=True, type=click.IntRange(min=1),
              help="Samples per shard.")
@click.option("--name", default=None, help="Dataset name (default: from the source).")
@click.option("--skip-bad", is_flag=True, help="Skip unreadable images and count them, instead of failing.")
@click.option("--overwrite", is_flag=True, help="Replace OUT_DIR if it already holds a dataset.")
def ingest(source: str, out_dir: Path, shard_size: int, name: str | None, skip_bad: bool, overwrite: bool) -> None:
    """Pack real images from SOURCE into a dataset at OUT_DIR.

    SOURCE is sklearn:digits, sklearn:digits-colored[?bias=0.9&seed=0], hf:<name-or-path>[:<split>],
    an ImageFolder folder (<class>/<file>), or an existing dataset folder (re-shard).

    Example: factory ingest ../shared/data/imagenette-mini/train data/inet-train --shard-size 500
    """
    from factory.data.ingest import ingest as run_ingest

    summary = run_ingest(source, out_dir, shard_size=shard_size, name=name, skip_bad=skip_bad,
                         overwrite=overwrite, progress=lambda it: progress(it, "ingest"))
    click.echo(f"wrote {summary.samples} samples in {summary.shards} shards "
               f"({len(summary.classes)} classes) to {summary.out_dir}")
    if skip_bad:
        click.echo(f"skipped {len(summary.skipped)} unreadable images")
        for what in summary.skipped:
            click.echo(f"  skipped: {what}")


@cli.command()
@click.argument("dataset", type=click.Path(path_type=Path))
@click.argument("train_out", type=click.Path(path_type=Path))
@click.argument("test_out", type=click.Path(path_type=Path))
@click.option("--test-fraction", required=True, type=float, help="Share of each class that goes to TEST_OUT.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--shard-size", default=None, type=click.IntRange(min=1), help="Default: the input's.")
@click.option("--overwrite", is_flag=True, help="Replace outputs that already hold datasets.")
def split(dataset: Path, train_out: Path, test_out: Path, test_fraction: float, seed: int,
          shard_size: int | None, overwrite: bool) -> None:
    """Split DATASET into TRAIN_OUT and TEST_OUT, stratified by class, deterministically.

    Example: factory split data/digits data/train data/test --test-fraction 0.2 --seed 0
    """
    from factory.data.ingest import split as run_split

    counts = run_split(dataset, train_out, test_out, test_fraction=test_fraction, seed=seed,
                       shard_size=shard_size, overwrite=overwrite)
    click.echo(f"train: {counts['train']} samples -> {train_out}; test: {counts['test']} samples -> {test_out}")


@cli.command()
@click.argument("datasets", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print a JSON report.")
def verify(datasets: tuple[Path, ...], as_json: bool) -> None:
    """Re-hash every shard, check counts and decode every image. Exit 1 if anything is wrong.

    Example: factory verify data/real/train data/real/test
    """
    from factory.core.shards import INDEX_NAME, Dataset
    from factory.data.inspection import verify as run_verify

    for p in datasets:  # a path that is no dataset at all is bad input (exit 2), not a failed check
        if not (p / INDEX_NAME).is_file():
            Dataset(p)
    results = [run_verify(p) for p in datasets]
    if as_json:
        click.echo(json.dumps([{"dataset": str(r.dataset), "ok": r.ok, "samples": r.samples,
                                "shards": r.shards, "problems": r.problems} for r in results], indent=2))
    else:
        for r in results:
            if r.ok:
                click.echo(f"OK   {r.dataset}: {r.samples} samples in {r.shards} shards")
            else:
                click.echo(f"BAD  {r.dataset}: {len(r.problems)} problem(s)")
                for problem in r.problems:
                    click.echo(f"  {problem}")
    if not all(r.ok for r in results):
        sys.exit(1)


@cli.command(name="inspect")
@click.argument("dataset", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def inspect_cmd(dataset: Path, as_json: bool) -> None:
    """Summarise DATASET: samples, classes with counts, sources, generations, image sizes, bytes.

    Example: factory inspect data/real/train --json
    """
    from factory.data.inspection import format_summary, summarize

    info = summarize(dataset)
    click.echo(json.dumps(info, indent=2) if as_json else format_summary(info))


@cli.command()
@click.argument("dataset", type=click.Path(path_type=Path))
@click.argument("key")
def show(dataset: Path, key: str) -> None:
    """Print the provenance record of sample KEY in DATASET as JSON.

    Example: factory show data/real/train digits-00000
    """
    from factory.data.inspection import show as run_show

    click.echo(run_show(dataset, key))


@cli.command()
@click.argument("dataset", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--per-class", default=8, show_default=True, type=click.IntRange(min=1))
@click.option("--cell", default=64, show_default=True, type=click.IntRange(min=8), help="Cell size in pixels.")
def grid(dataset: Path, out: Path, per_class: int, cell: int) -> None:
    """Draw a contact sheet of DATASET to OUT.png: one labelled row per class.

    Example: factory grid data/real/train grid.png --per-class 10
    """
    from factory.data.inspection import grid as run_grid

    click.echo(f"wrote {run_grid(dataset, out, per_class=per_class, cell=cell)}")


@cli.group()
def prompts() -> None:
    """Prompt plans: build one from params, show its quotas."""


@prompts.command("build")
@click.argument("params_file", metavar="PARAMS", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--dataset", default=None, type=click.Path(path_type=Path),
              help="Real dataset whose classes to use (default: plan.dataset in PARAMS).")
def prompts_build(params_file: Path, out: Path, dataset: Path | None) -> None:
    """Build the prompt plan described by PARAMS (a params.yaml) and write it to OUT.jsonl.

    Example: factory prompts build params.yaml data/prompts/plan.jsonl
    """
    from factory.config import load_params, plan_config
    from factory.core.shards import Dataset
    from factory.generate.plans import build_plan, count_table, write_plan

    params = load_params(params_file)
    plan = build_plan(plan_config(params), Dataset(dataset or params.plan.dataset).classes)
    write_plan(plan, out)
    click.echo(count_table(plan))
    click.echo(f"wrote {out}")


@prompts.command("show")
@click.argument("plan_file", metavar="PLAN", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the header and counts as JSON.")
def prompts_show(plan_file: Path, as_json: bool) -> None:
    """Print the count table (class x attribute cell) of PLAN and its target.

    Example: factory prompts show data/prompts/plan.jsonl
    """
    from factory.generate.plans import count_table, read_plan

    plan = read_plan(plan_file)
    if as_json:
        click.echo(json.dumps(plan.header, indent=2))
    else:
        click.echo(count_table(plan))


@cli.command()
@click.argument("dataset", type=click.Path(path_type=Path))
@click.argument("key")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--model", default=None, help="Load the generator from here instead of the recorded path.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or auto.")
def regenerate(dataset: Path, key: str, out: Path, model: str | None, device: str) -> None:
    """Rebuild sample KEY of DATASET from its provenance alone, write it to OUT and compare bytes.

    Exit 0 when the bytes match the stored sample, 1 when they differ.

    Example: factory regenerate data/synthetic/raw 3-g00002-01 again.png
    """
    from factory.generate.tasks import regenerate as run_regenerate

    r = run_regenerate(dataset, key, out, model=model, device=device)
    if r.match:
        click.echo(f"match: {key} rebuilt byte for byte (sha256 {r.actual_sha256[:16]}...) -> {r.out}")
        return
    why = "" if r.weights_match else " (the generator weights differ from the recorded weights_sha256)"
    click.echo(f"DIFFERENT: {key}: stored sha256 {r.expected_sha256[:16]}..., rebuilt {r.actual_sha256[:16]}..."
               f"{why} -> {r.out}")
    sys.exit(1)


def parse_scorer(spec: str, device: str = "cpu"):
    """``embedded:<folder>`` or ``open_clip:<arch>:<checkpoint file>``."""
    from factory.curate.scorers import load_scorer

    backend, _, rest = spec.partition(":")
    if backend == "embedded" and rest:
        return load_scorer("embedded", rest, device=device)
    if backend == "open_clip" and ":" in rest:
        arch, _, checkpoint = rest.partition(":")
        return load_scorer("open_clip", arch, checkpoint, device=device)
    raise FactoryError(f"--scorer {spec!r}: use embedded:<folder> or open_clip:<arch>:<checkpoint file>")


@cli.command(name="filter")
@click.argument("dataset", type=click.Path(path_type=Path))
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("--scorer", "scorer_spec", default="embedded:models/clip", show_default=True,
              help="embedded:<folder> or open_clip:<arch>:<checkpoint file>.")
@click.option("--min-score", type=float, default=None, help="Keep images whose CLIP score >= this.")
@click.option("--min-margin", type=float, default=None, help="Keep images whose class margin >= this.")
@click.option("--calibrate-on", type=click.Path(path_type=Path), default="data/real/train", show_default=True,
              help="Real dataset whose score percentile sets the thresholds not given.")
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
    from factory.curate.filter import CurateConfig, FilterConfig, curate

    cfg = CurateConfig(filter=FilterConfig(min_score, min_margin, percentile), deduplicate=False, rebalance=False)
    scorer = parse_scorer(scorer_spec)
    calib = None if (min_score is not None and min_margin is not None) else calibrate_on
    r = curate(dataset, out_dir, scorer=scorer, cfg=cfg, calibrate_on=calib, rejected_dir=rejected,
               report_path=report, overwrite=overwrite)
    t = r.report["filter"]["thresholds"]
    click.echo(f"kept {r.kept} of {r.report['samples']} (clip >= {t['min_score']:.4f}, margin >= "
               f"{t['min_margin']:.4f}); rejected: " + ", ".join(
                   f"{k} {v}" for k, v in r.report["reasons"].items() if k != "kept" and v))


@prompts.command("audit")
@click.argument("dataset", type=click.Path(path_type=Path))
@click.option("--plan", "plan_file", type=click.Path(path_type=Path), default=None,
              help="Compare with this plan's target (default: uniform over the values).")
@click.option("--scorer", "scorer_spec", default=None,
              help="embedded:<folder> or open_clip:<arch>:<ckpt>: measure attributes in synthetic images.")
@click.option("--mode", type=click.Choice(["auto", "provenance", "clip"]), default="auto", show_default=True,
              help="auto: provenance for real data (ground truth), CLIP zero-shot for synthetic data.")
@click.option("--json", "as_json", is_flag=True)
def prompts_audit(dataset: Path, plan_file: Path | None, scorer_spec: str | None, mode: str, as_json: bool) -> None:
    """Measure each attribute axis per class against the target; print the table and the TV distance.

    Example: factory prompts audit data/synthetic/raw --plan data/prompts/plan.jsonl --scorer embedded:models/clip
    """
    from factory.curate.audit import audit, format_audit

    scorer = parse_scorer(scorer_spec) if scorer_spec else None
    result = audit(dataset, plan=plan_file, scorer=scorer, mode=mode)  # type: ignore[arg-type]
    click.echo(json.dumps(result, indent=2) if as_json else format_audit(result))


def _register() -> None:
    from factory.cli.dedup import dedup_command

    cli.add_command(dedup_command, "dedup")


_register()


def main() -> None:
    cli(prog_name="factory")


if __name__ == "__main__":
    main()
