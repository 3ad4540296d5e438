"""Commands that run one pipeline step each, without DVC: ``generate``, ``curate`` and ``pool`` here;
``train-classifier``, ``train-contrastive`` and ``evaluate`` in :mod:`factory.cli.measure`.

Each makes the library call its stage makes (``stages/<step>.py``), with the paths given on the command line.
The settings come from ``--config FILE`` (a params.yaml as it is, whose section of the step is taken, or a
file of that section's keys alone: :func:`factory.config.load_section`), then ``--set KEY=VALUE`` (any key
of the section, dotted), then the command's own options: the later wins. Without ``--config`` the library's
defaults apply, not ``./params.yaml``'s.
"""

from __future__ import annotations

import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable, Sequence

import click

from factory.cli.common import echo, echo_json, escape, parse_scorer, progress
from factory.core.text import plural

F = Callable[..., Any]


def config_options(section: str, example: str) -> Callable[[F], F]:
    """``--config FILE`` and ``--set KEY=VALUE`` (repeatable) for a command whose settings are ``section``."""
    def add(f: F) -> F:
        f = click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
                         help=f"Set a parameter of the {section} section (YAML value, dotted key, e.g. {example}); "
                              "over --config, under the options. Repeatable.")(f)
        return click.option("--config", "config_file", type=click.Path(path_type=Path), default=None,
                            help=f"A params.yaml (its {section} section is used) or a YAML file of that "
                                 "section's keys [default: the library's defaults].")(f)
    return add


def load_config(section: str, config_file: Path | None, sets: tuple[str, ...], **options: Any) -> Any:
    """The ``section`` config: ``config_file``, then ``--set`` items, then the ``options`` not None, validated
    (one line per error naming the key)."""
    from factory.config import load_section, load_yaml

    parsed: dict[str, Any] = {}
    for item in sets:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise click.BadParameter(f"{item!r}: use KEY=VALUE (e.g. steps=10)", param_hint="--set")
        parsed[key.strip()] = load_yaml(value, f"--set {key.strip()}")
    cfg = load_section(section, config_file, parsed)
    changes = {k: v for k, v in options.items() if v is not None}
    return cfg.replace(**changes) if changes else cfg


def parse_seeds(text: str | None) -> tuple[int, ...] | None:
    """``"0,1,2"`` -> ``(0, 1, 2)``; None stays None."""
    if text is None:
        return None
    try:
        return tuple(int(s) for s in text.split(","))
    except ValueError:
        raise click.BadParameter(f"{text!r}: use comma-separated integers (e.g. 0,1,2)", param_hint="--seeds") from None


class _Quiet:
    """What :func:`counter` gives when stderr is not a terminal: a bar that shows nothing."""

    def update(self, n: int = 1) -> None:
        pass

    def __enter__(self) -> "_Quiet":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


def on_terminal() -> bool:
    return sys.stderr.isatty()


def counter(desc: str, total: int, unit: str, initial: int = 0) -> Any:
    """A tqdm bar counting to ``total`` (so it shows an ETA) on a terminal; a silent one otherwise. Use it as a
    context manager; call ``update(n)``."""
    if not on_terminal():
        return _Quiet()
    from tqdm import tqdm

    return tqdm(desc=desc, total=total, initial=initial, unit=unit, dynamic_ncols=True)


def load_pool_or_dataset(path: Path, seed: int) -> dict[str, Any]:
    """A pool file, or a dataset folder taken whole as a pool named after the folder."""
    from factory.data.pools import dataset_pool, read_pool

    if path.is_dir():
        return dataset_pool(path, seed=seed, progress=progress)
    return read_pool(path)


def claim_files(outputs: Sequence[Path | None], inputs: Sequence[Path | str | None],
                folders: Sequence[Path | None] = ()) -> None:
    """Before any work: every output file given may be written, apart from the inputs, each other and ``folders``
    (output folders)."""
    from factory.core.outputs import claim_output_file

    given = [f for f in outputs if f is not None]
    for f in given:
        claim_output_file(f, inputs=inputs, others=[o for o in (*given, *folders) if o is not f])


def write_metrics(summary: dict[str, Any], out: Path, timings: Path | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The summary's results to ``out`` (no wall-clock field: a re-run writes the same bytes) and its timings to
    ``timings`` when given, as the stages write them (:func:`factory.core.stage.write_results`)."""
    from factory.core.files import write_json
    from factory.core.timings import split_timings

    metrics, times = split_timings(summary)
    write_json(out, metrics)
    if timings is not None:
        write_json(timings, times)
    return metrics, times


@click.command("generate")
@click.argument("plan", type=click.Path(path_type=Path))
@click.argument("model")
@click.argument("out_dir", type=click.Path(path_type=Path))
@config_options("generate", "ray.num_cpus=2")
@click.option("--backend", default=None, help="embedded or diffusers [default: embedded].")
@click.option("--guidance-scale", type=float, default=None, help="Classifier-free guidance scale.")
@click.option("--steps", type=int, default=None, help="Sampling steps.")
@click.option("--scheduler", default=None, help="ddim, dpm (embedded); also euler, ddpm, pndm (diffusers).")
@click.option("--batch-size", type=int, default=None, help="Images per sampling batch.")
@click.option("--shard-size", type=int, default=None, help="Plan rows per shard task (the unit of resuming).")
@click.option("--executor", default=None, help="local or ray.")
@click.option("--device", default=None, help="auto, cpu, cuda or cuda:N [default: auto].")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def generate_cmd(plan: Path, model: str, out_dir: Path, config_file: Path | None, sets: tuple[str, ...],
                 backend: str | None, guidance_scale: float | None, steps: int | None, scheduler: str | None,
                 batch_size: int | None, shard_size: int | None, executor: str | None, device: str | None,
                 as_json: bool) -> None:
    """Generate the images of the prompt plan PLAN with the generator MODEL into the dataset OUT_DIR.

    MODEL is a generator folder (embedded backend) or a diffusers model folder or cached id. The work runs in
    shard tasks with fixed seeds: run the same command again after a crash and it resumes where it stopped
    (OUT_DIR may only be a factory dataset or its unfinished run). The dvc.yaml stage generate, without DVC.

    \b
    Example:
      factory generate data/prompts/plan.jsonl models/generator data/synthetic/raw \\
        --config params.yaml --guidance-scale 4
    """
    cfg = load_config("generate", config_file, sets, model=model, backend=backend, guidance_scale=guidance_scale,
                      steps=steps, scheduler=scheduler, batch_size=batch_size, shard_size=shard_size,
                      executor=executor, device=device)  # first: a bad setting fails before torch loads
    from factory.generate.tasks import generate

    with ExitStack() as bars:  # one bar per run of shard tasks, all closed at the end
        summary = generate(plan, out_dir, cfg, progress=lambda total, done: bars.enter_context(
            counter("generate", total, "img", done)).update)
    if as_json:
        echo_json({"out": str(out_dir), "samples": summary.samples, "shards": summary.shards,
                   "generated_shards": summary.generated_shards, "resumed_shards": summary.resumed_shards,
                   "seconds": round(summary.seconds, 2), "images_per_second": round(summary.images_per_second, 2),
                   "guidance_scale": cfg.guidance_scale, "steps": cfg.steps, "scheduler": cfg.scheduler})
        return
    echo(f"generated {plural(summary.samples, 'sample')} in {plural(summary.shards, 'shard')} -> "
         f"{escape(out_dir)} ({summary.generated_shards} made at {summary.images_per_second:.1f} images/s, "
         f"{summary.resumed_shards} resumed)")


@click.command("curate")
@click.argument("raw", type=click.Path(path_type=Path))
@click.argument("out_dir", type=click.Path(path_type=Path))
@config_options("curate", "max_distance=4")
@click.option("--scorer", "scorer_spec", default=None,
              help="embedded:<folder> or open_clip:<arch>:<checkpoint file> [default: the config's scorer_backend, "
                   "scorer_model and scorer_checkpoint: embedded:models/clip].")
@click.option("--calibrate-on", type=click.Path(path_type=Path), default=None,
              help="The REAL val split: the thresholds not given are its score percentiles (its images scored "
                   "against captions of the samples' form). Needed unless both thresholds are set.")
@click.option("--against", multiple=True, type=click.Path(path_type=Path),
              help="A REAL test split: samples that nearly match one of its images are leaks, always dropped. "
                   "Repeatable.")
@click.option("--report-against", multiple=True, type=click.Path(path_type=Path),
              help="The REAL train split: near-copies of its images are memorisation, reported (dropped with "
                   "drop_memorized). Repeatable.")
@click.option("--plan", "plan_file", type=click.Path(path_type=Path), default=None,
              help="RAW's prompt plan: survivors are subsampled to its exact quotas (rebalance).")
@click.option("--rejected", type=click.Path(path_type=Path), default=None,
              help="Also write the rejected samples, with their reason and evidence, to this dataset.")
@click.option("--report", type=click.Path(path_type=Path), default=None, help="Write the curation report (JSON) here.")
@click.option("--min-score", type=float, default=None, help="Keep images whose CLIP score >= this.")
@click.option("--min-margin", type=float, default=None, help="Keep images whose class margin >= this.")
@click.option("--percentile", type=float, default=None, help="Calibration percentile of real val [default: 5].")
@click.option("--overwrite", is_flag=True, help="Replace OUT_DIR / --rejected if they hold a factory dataset.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def curate_cmd(raw: Path, out_dir: Path, config_file: Path | None, sets: tuple[str, ...], scorer_spec: str | None,
               calibrate_on: Path | None, against: tuple[Path, ...], report_against: tuple[Path, ...],
               plan_file: Path | None, rejected: Path | None, report: Path | None, min_score: float | None,
               min_margin: float | None, percentile: float | None, overwrite: bool, as_json: bool) -> None:
    """Curate the synthetic dataset RAW into OUT_DIR: the semantic-mismatch filter (CLIP score and margin),
    near-duplicates, leaks into the real test split, memorised copies of real train, and the plan's quotas.

    The dvc.yaml stage curate, without DVC.

    \b
    Example:
      factory curate data/synthetic/raw data/synthetic/curated --scorer embedded:models/clip \\
        --calibrate-on data/real/val --against data/real/test --report-against data/real/train \\
        --plan data/prompts/plan.jsonl --rejected data/synthetic/rejected --report reports/curate.json
    """
    cfg = load_config("curate", config_file, sets, min_score=min_score, min_margin=min_margin, percentile=percentile)
    if calibrate_on is None and (cfg.min_score is None or cfg.min_margin is None):
        raise click.UsageError("give --calibrate-on (the real val split) or both --min-score and --min-margin")
    from factory.curate.filter import check_outputs, curate
    from factory.curate.scorers import load_scorer

    inputs = [raw, calibrate_on, *against, *report_against, plan_file]
    check_outputs(out_dir, rejected, report, inputs=inputs, overwrite=overwrite)  # before the scorer loads
    scorer = (parse_scorer(scorer_spec, cfg.scorer_device) if scorer_spec else
              load_scorer(cfg.scorer_backend, cfg.scorer_model, cfg.scorer_checkpoint, device=cfg.scorer_device))
    r = curate(raw, out_dir, scorer=scorer, cfg=cfg, calibrate_on=calibrate_on, test=against, train=report_against,
               plan=plan_file, rejected_dir=rejected, report_path=report, overwrite=overwrite, progress=progress)
    rep = r.report
    t = rep["filter"]["thresholds"]
    cal = rep["calibration"]
    if as_json:
        echo_json({k: rep[k] for k in ("dataset", "out", "rejected_out", "samples", "kept", "rejected", "reasons",
                                       "memorization_rate")}
                  | {"report": str(report) if report is not None else None,
                     "thresholds": {"min_score": t["min_score"], "min_margin": t["min_margin"]},
                     "calibration_reject_share": cal["reject_share"] if cal else None})
        return
    echo(f"kept {rep['kept']} of {rep['samples']} -> {escape(out_dir)} (clip >= {t['min_score']:.4f}, margin >= "
         f"{t['min_margin']:.4f}); rejected: " + (", ".join(
             f"{escape(k)} {v}" for k, v in rep["reasons"].items() if k != "kept" and v) or "none"))
    if cal:
        echo(f"thresholds from {cal['n']} real val images (percentile {cal['percentile']}) would reject " +
             ", ".join(f"{100 * v:.1f}% of real {escape(k)}" for k, v in cal["reject_share"].items()))


_AMOUNTS = ("count", "fraction", "per_class")


def parse_component(spec: str) -> Any:
    """``DIR``, ``DIR,count=N``, ``DIR,fraction=F`` or ``DIR,per_class=N`` -> a pool component (as a
    ``pools:`` entry of params.yaml, ``{dataset: DIR, per_class: N}``)."""
    from factory.config import Component, load_yaml

    head, comma, tail = spec.rpartition(",")
    key, eq, value = tail.partition("=")
    if comma and eq and key.strip() in _AMOUNTS:
        return Component(dataset=head, **{key.strip(): load_yaml(value, f"--dataset {spec}")})
    if comma and eq:
        raise click.BadParameter(f"{spec!r}: the amount must be one of {', '.join(_AMOUNTS)} (got {key!r})",
                                 param_hint="--dataset")
    return Component(dataset=spec)


@click.command("pool")
@click.argument("name")
@click.argument("out", type=click.Path(path_type=Path))
@config_options("pools", "seed=1")
@click.option("--dataset", "components", multiple=True, metavar="DIR[,count=N|,fraction=F|,per_class=N]",
              help="A dataset of the pool and how much of it to draw (all of it by default); count and fraction "
                   "keep its class proportions. Repeatable [default: the config's pools.NAME].")
@click.option("--seed", type=int, default=None, help="Seed of the draws [default: the config's, else 0].")
@click.option("--json", "as_json", is_flag=True, help="Print the pool's counts as JSON.")
def pool_cmd(name: str, out: Path, config_file: Path | None, sets: tuple[str, ...], components: tuple[str, ...],
             seed: int | None, as_json: bool) -> None:
    """Draw the training pool NAME (datasets by reference, no image copied) and write it to OUT (JSON).

    The datasets come from --dataset, else from the pools section of --config (a params.yaml names its
    pools). The dvc.yaml stage pools, for one pool, without DVC.

    \b
    Examples:
      factory pool real10_synthetic data/pools/real10_synthetic.json \\
        --dataset data/real/train,per_class=10 --dataset data/synthetic/curated
      factory pool frac50 data/pools/frac50.json --config params.yaml
    """
    from factory.config import PoolSpec
    from factory.data.pools import build_pool, write_pool

    cfg = load_config("pools", config_file, sets, seed=seed)
    if components:
        comps = tuple(parse_component(c) for c in components)
    elif name in cfg:
        comps = cfg[name]
    else:
        named = f" (its pools: {', '.join(cfg)})" if len(cfg) else ""
        raise click.UsageError(f"pool {name!r}: give --dataset, or a --config whose pools section names it{named}")
    spec = PoolSpec(name=name, components=comps, seed=cfg.seed)
    claim_files([out], inputs=[c.dataset for c in comps])
    pool = build_pool(spec, progress=progress)
    write_pool(pool, out)
    if as_json:
        echo_json({"name": pool["name"], "out": str(out), "samples": pool["samples"], "sources": pool["sources"],
                   "synthetic_fraction": pool["synthetic_fraction"], "per_class": pool["per_class"],
                   "seed": pool["seed"]})
        return
    echo(f"pool {escape(name)}: {pool['samples']} samples ({pool['sources']['real']} real, "
         f"{pool['sources']['synthetic']} synthetic; synthetic fraction {pool['synthetic_fraction']:.2f}) "
         f"-> {escape(out)}")
