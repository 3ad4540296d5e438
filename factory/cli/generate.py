"""Commands on generation: the ``prompts`` group (``build``, ``show``) and ``regenerate``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click


@click.group()
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
    from factory.config import load_params
    from factory.core.shards import Dataset
    from factory.generate.plans import build_plan, count_table, write_plan

    params = load_params(params_file)
    plan = build_plan(params.plan, Dataset(dataset or params.plan.dataset).classes)
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


@click.command()
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
