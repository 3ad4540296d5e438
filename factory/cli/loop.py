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


# what each chain costs, roughly (SIMS fine-tunes an auxiliary model per generation): the longest start first
_HEAVY_FIRST = ("sims", "loop_sims_study")


@loop.command("run")
@click.option("--jobs", "-j", type=click.IntRange(1, 16), default=2, show_default=True,
              help="How many runs' chains of stages reproduce at once (dvc repro in parallel).")
@click.option("--params", "params_path", type=click.Path(path_type=Path), default=Path("params.yaml"),
              show_default=True, help="The params file whose loop.runs to run.")
@click.option("--pipeline", type=click.Path(path_type=Path), default=Path("loop/dvc.yaml"), show_default=True,
              help="The loops' pipeline file.")
def run(jobs: int, params_path: Path, pipeline: Path) -> None:
    """Reproduce the loops with JOBS runs at once: what `make loop` does.

    A stage keeps little more than one core busy (small models, much Python), so independent runs share the
    machine: first the stages every run needs (generation 1, the reference model, the schedule), then each
    run's chain (its generations, then `loop_metrics@RUN`) and the SIMS study, JOBS chains at a time, each
    stage one `dvc repro --single-item` (DVC locks each stage's outputs; the chains share none), then the
    rest (the report). Outputs are the same as one `dvc repro loop/dvc.yaml`: each stage is the same command.

    Example: factory loop run --jobs 2
    """
    import subprocess
    import sys
    import threading
    from collections import deque

    from factory.config import load_params

    params = load_params(params_path)
    dvc = str(Path(sys.executable).with_name("dvc"))
    if not Path(dvc).exists():
        dvc = "dvc"

    def repro(*targets: str, single: bool = False) -> list[str]:
        # --wait-for-lock: two DVC processes that update dvc.lock at the same moment wait for each other (DVC's
        # default is to fail after 3 s); --single-item: a chain's stage alone, never its upstream stages, whose
        # check would take write locks that another chain holds at the same moment ("is busy")
        head = [dvc, "--wait-for-lock", "repro", *(["--single-item"] if single else [])]
        return [*head, *(f"{pipeline}:{t}" for t in targets)] if targets else [*head, str(pipeline)]

    def step(cmd: list[str], what: str) -> None:
        echo(f"loop run: {what}: {' '.join(cmd[2:])}")
        if subprocess.run(cmd).returncode != 0:
            echo(f"Error: loop run: {what} failed (`dvc {' '.join(cmd[2:])}`); `make loop` resumes where it stopped",
                 err=True)
            raise SystemExit(1)

    step(repro("loop_schedule", "loop_reference", "loop_first"), "shared stages")
    # each chain: its stages in order, one `dvc repro --single-item` each (the shared stages are made above)
    chains = {f"loop_metrics@{r}": [*(f"loop_generation@{r}-g{k}" for k in range(2, params.loop.max_generations + 1)),
                                    f"loop_metrics@{r}"] for r in params.loop.runs}
    chains["loop_sims_study"] = ["loop_sims_study"]
    order = sorted(chains, key=lambda t: (not any(h in t for h in _HEAVY_FIRST), t))
    queue, failed, lock = deque(order), [], threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                if not queue or failed:
                    return
                target = queue.popleft()
            for stage in chains[target]:
                proc = subprocess.Popen(repro(stage, single=True), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True, errors="replace")
                for line in proc.stdout or ():
                    echo(f"[{target}] {line.rstrip()}")
                if proc.wait() != 0:
                    with lock:
                        failed.append(f"{target} (stage {stage})")
                    return

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(min(jobs, len(order)))]
    echo(f"loop run: {len(order)} chains, {len(threads)} at a time: {', '.join(order)}")
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failed:
        echo(f"Error: loop run: {', '.join(failed)} failed (its lines above say why); `make loop` resumes where it "
             f"stopped", err=True)
        raise SystemExit(1)
    step(repro(), "the rest")
