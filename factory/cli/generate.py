"""Commands on generation: the ``prompts`` group (``build``, ``show``) and ``regenerate``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from factory.cli.common import echo, echo_json, escape, escape_all

if TYPE_CHECKING:
    from factory.generate.plans import Plan


def escaped_plan(plan: "Plan") -> "Plan":
    """``plan`` with its class names and attribute values escaped, for the count table on a terminal."""
    from dataclasses import replace

    from factory.generate.plans import Plan

    return Plan(escape_all(plan.header), [replace(r, class_name=escape(r.class_name),
                                                  attributes=escape_all(r.attributes)) for r in plan.rows])


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
    from factory.core.outputs import claim_output_file
    from factory.generate.plans import count_table, plan_for, write_plan

    params = load_params(params_file)
    source = dataset or params.plan.dataset
    claim_output_file(out, inputs=[params_file, source])
    plan = plan_for(params.plan, source)
    write_plan(plan, out)
    echo(count_table(escaped_plan(plan)))
    echo(f"wrote {escape(out)}")


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
        echo_json(plan.header)
    else:
        echo(count_table(escaped_plan(plan)))


@click.command()
@click.argument("dataset", type=click.Path(path_type=Path))
@click.argument("key")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--model", default=None, help="Load the generator from here instead of the recorded path.")
@click.option("--negative-model", default=None,
              help="SIMS samples: load the auxiliary (negative) model from here instead of the recorded path.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or auto.")
def regenerate(dataset: Path, key: str, out: Path, model: str | None, negative_model: str | None,
               device: str) -> None:
    """Rebuild sample KEY of DATASET from its provenance alone, write it to OUT and compare bytes.

    Exit 0 when the bytes match the stored sample and the generator's weights match the recorded
    weights_sha256 (for a SIMS sample, the auxiliary model's too); 1 when either differs (both verdicts
    are printed).

    Example: factory regenerate data/synthetic/raw 3-g00002-01 again.png
    """
    from factory.generate.tasks import regenerate as run_regenerate

    r = run_regenerate(dataset, key, out, model=model, device=device, negative_model=negative_model)
    if r.match:
        echo(f"match: {escape(key)} rebuilt byte for byte (sha256 {r.actual_sha256[:16]}...) -> {escape(r.out)}")
    else:
        echo(f"DIFFERENT: {escape(key)}: stored sha256 {r.expected_sha256[:16]}..., rebuilt "
             f"{r.actual_sha256[:16]}... -> {escape(r.out)}")
    loaded = f"loaded {(r.actual_weights_sha256 or '?')[:16]}..."
    sims = r.expected_negative_weights_sha256 is not None or r.actual_negative_weights_sha256 is not None
    base_ok = bool(r.expected_weights_sha256) and r.expected_weights_sha256 == r.actual_weights_sha256
    if r.weights_match:
        also = ", the negative model's the recorded negative_guidance.weights_sha256" if sims else ""
        echo(f"weights match: the generator's sha256 is the recorded weights_sha256{also} ({loaded})")
    elif sims and base_ok:
        echo(f"weights DIFFERENT: the negative model's weights differ from the recorded "
             f"negative_guidance.weights_sha256 (recorded {(r.expected_negative_weights_sha256 or '?')[:16]}..., "
             f"loaded {(r.actual_negative_weights_sha256 or '?')[:16]}...)")
    elif r.expected_weights_sha256 is None:
        echo(f"weights UNVERIFIED: the record has no weights_sha256 to compare with ({loaded})")
    else:
        echo(f"weights DIFFERENT: the generator weights differ from the recorded weights_sha256 "
             f"(recorded {r.expected_weights_sha256[:16]}..., {loaded})")
    if not r.ok:
        sys.exit(1)
