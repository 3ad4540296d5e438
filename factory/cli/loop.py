"""The ``loop`` group: the self-consuming loops' pipeline file (``factory loop stages``)."""

from __future__ import annotations

from pathlib import Path

import click

from factory.cli.common import echo


@click.group("loop")
def loop() -> None:
    """Self-consuming loops (the stages are in loop/dvc.yaml; make loop runs them)."""


@loop.command("stages")
@click.option("--params", "params_path", type=click.Path(path_type=Path), default=Path("params.yaml"),
              show_default=True, help="The params file whose loop.runs the stages follow.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("loop/dvc.yaml"), show_default=True,
              help="The pipeline file to write.")
@click.option("--check", is_flag=True, help="Write nothing; exit 1 if the file is not what params.yaml gives.")
def stages(params_path: Path, out: Path, check: bool) -> None:
    """Write loop/dvc.yaml: one stage per run of params.yaml's loop.runs and generation.

    Run it after adding, removing or renaming a run; changing loop.generations needs no new stages.

    Example: factory loop stages && dvc repro loop/dvc.yaml
    """
    from factory.config import load_params
    from factory.loops.pipeline import render, write

    params = load_params(params_path)
    root = Path(".")
    if check:
        current = out.read_text() if out.is_file() else None
        if current != render(params, root):
            echo(f"{out}: not what {params_path} gives; run `factory loop stages`", err=True)
            raise SystemExit(1)
        echo(f"{out}: up to date ({len(params.loop.runs)} runs)")
        return
    changed = write(params, out, root)
    echo(f"{out}: {'written' if changed else 'unchanged'} ({len(params.loop.runs)} runs: "
         f"{', '.join(params.loop.runs)})")
