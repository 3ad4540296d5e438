"""Commands that measure what the data is worth, one pipeline step each, without DVC: ``train-classifier``,
``train-contrastive`` and ``evaluate`` (settings as :mod:`factory.cli.pipeline` describes: ``--config``,
``--set``, options)."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Any

import click

from factory.cli.common import echo, echo_json, escape
from factory.cli.pipeline import (
    claim_files,
    config_options,
    counter,
    load_config,
    load_pool_or_dataset,
    parse_seeds,
    write_metrics,
)
from factory.core.errors import FactoryError


def _interval(ci: list[float] | None) -> str:
    return f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci is not None else ""


@click.command("train-classifier")
@click.argument("pool", metavar="POOL_OR_DATASET", type=click.Path(path_type=Path))
@click.option("--test", required=True, type=click.Path(path_type=Path),
              help="The REAL split to test on: the real test split (or real val, to choose settings on it).")
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="The metrics file (JSON) to write: no wall-clock time, so a re-run writes the same bytes.")
@click.option("--timings", type=click.Path(path_type=Path), default=None, help="Write the wall-clock timings here.")
@click.option("--live", type=click.Path(path_type=Path), default=None,
              help="A dvclive folder for the training curves (loss, test top-1: mean and per seed).")
@config_options("classifier", "width=64")
@click.option("--arch", default=None, help="cnn, resnet18, resnet34 or resnet50 [default: cnn].")
@click.option("--steps", type=int, default=None, help="Optimiser steps per classifier.")
@click.option("--batch-size", type=int, default=None)
@click.option("--lr", type=float, default=None, help="Peak learning rate (one-cycle schedule).")
@click.option("--seeds", default=None, metavar="0,1,2",
              help="Training seeds, offsets from the config's seed: one classifier each [default: 0,1,2].")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def train_classifier_cmd(pool: Path, test: Path, out: Path, timings: Path | None, live: Path | None,
                         config_file: Path | None, sets: tuple[str, ...], arch: str | None, steps: int | None,
                         batch_size: int | None, lr: float | None, seeds: str | None, as_json: bool) -> None:
    """Train a classifier per seed on POOL_OR_DATASET (a pool file, or a dataset folder taken whole) and test
    each on a REAL split: top-1 mean with its 95% interval, per class, the confusion matrix.

    The dvc.yaml stage train_classifier@<pool>, without DVC.

    \b
    Example:
      factory train-classifier data/pools/real_synthetic.json --test data/real/test \\
        --out metrics/classifier/real_synthetic.json --config params.yaml --seeds 0,1
    """
    cfg = load_config("classifier", config_file, sets, arch=arch, steps=steps, batch_size=batch_size, lr=lr,
                      seeds=parse_seeds(seeds))  # first: a bad setting fails before torch loads
    from factory.train.classifier import train_classifier_seeds

    claim_files([out, timings], inputs=[pool, test], folders=[live])
    record = load_pool_or_dataset(pool, cfg.seed)
    curves: Any = nullcontext()
    if live is not None:
        from dvclive import Live

        curves = Live(str(live), dvcyaml=False, save_dvc_exp=False)
    with counter("train-classifier", cfg.steps * len(cfg.seeds), "step") as bar, curves as lv:
        summary = train_classifier_seeds(record, test, cfg, live=lv, progress=lambda step, total, loss: bar.update(1))
    metrics, times = write_metrics(summary, out, timings)
    if as_json:
        echo_json({"pool": metrics["pool"], "out": str(out), **{k: metrics[k] for k in (
            "seeds", "top1_mean", "top1_ci95", "top1_per_seed", "n_train", "n_test", "synthetic_fraction", "arch",
            "steps")}, "seconds": times.get("seconds")})
        return
    echo(f"{escape(metrics['pool'])}: top-1 on {escape(test)} {metrics['top1_mean']:.4f}"
         f"{_interval(metrics['top1_ci95'])} over seeds {metrics['seeds']} ({metrics['n_train']} training images, "
         f"synthetic fraction {metrics['synthetic_fraction']:.2f}, {times.get('seconds', 0):.0f} s) -> {escape(out)}")


@click.command("train-contrastive")
@click.argument("pool", metavar="POOL_OR_DATASET", type=click.Path(path_type=Path))
@click.option("--train", "train_split", required=True, type=click.Path(path_type=Path),
              help="The REAL train split: the linear probes learn from it (all of it, and 10 images per class).")
@click.option("--test", required=True, type=click.Path(path_type=Path), help="The REAL test split.")
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="The metrics file (JSON) to write: no wall-clock time.")
@click.option("--timings", type=click.Path(path_type=Path), default=None, help="Write the wall-clock timings here.")
@config_options("contrastive", "train.temperature=0.2")
@click.option("--method", "methods", multiple=True,
              help="simclr, stablerep, stablerep_plus, supcon or random_groups. Repeatable [default: the config's "
                   "contrastive.methods for the pool].")
@click.option("--seeds", default=None, metavar="0,1,2", help="Training seeds: each method trained once per seed.")
@click.option("--steps", type=int, default=None, help="Training steps per method and seed (contrastive.train.steps).")
@click.option("--batch-size", type=int, default=None, help="contrastive.train.batch_size.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def train_contrastive_cmd(pool: Path, train_split: Path, test: Path, out: Path, timings: Path | None,
                          config_file: Path | None, sets: tuple[str, ...], methods: tuple[str, ...], seeds: str | None,
                          steps: int | None, batch_size: int | None, as_json: bool) -> None:
    """Train contrastive encoders on POOL_OR_DATASET (a pool file, or a dataset folder taken whole), each method
    once per seed, and score each by linear probes on REAL data: top-1 with its 95% interval, and 10-shot.

    The dvc.yaml stage train_contrastive@<pool>, without DVC.

    \b
    Example:
      factory train-contrastive data/pools/synthetic.json --train data/real/train --test data/real/test \\
        --method simclr --method stablerep --out metrics/contrastive/synthetic.json --config params.yaml
    """
    params = load_config("contrastive", config_file, sets, seeds=parse_seeds(seeds), methods=list(methods) or None)
    train_changes = {k: v for k, v in (("steps", steps), ("batch_size", batch_size)) if v is not None}
    if train_changes:  # validated again with the methods (a batch must hold two prompt groups)
        params = params.replace(train=params.train.replace(**train_changes))
    from factory.measure.probes import FEW_SHOT, contrastive_benchmark

    claim_files([out, timings], inputs=[pool, train_split, test])
    record = load_pool_or_dataset(pool, params.train.seed)
    chosen = params.methods_for(record["name"])
    if not chosen:
        raise FactoryError(f"contrastive.methods names no methods for pool {record['name']!r}; give --method")
    with counter("train-contrastive", params.train.steps * len(chosen) * len(params.seeds), "step") as bar:
        summary = contrastive_benchmark(record, train_split, test, params.train, chosen, params.seeds,
                                        progress=lambda step, total, loss: bar.update(1))
    metrics, times = write_metrics(summary, out, timings)
    shot = f"top1_{FEW_SHOT}shot"
    if as_json:
        echo_json({"pool": metrics["pool"], "out": str(out), "seeds": metrics["seeds"], "methods": {
            m: ({"skipped": r["skipped"]} if "skipped" in r else
                {k: r[k] for k in ("top1", "top1_ci95", "top1_per_seed", shot, "synthetic_share")})
            for m, r in metrics["methods"].items()}})
        return
    for method, m in metrics["methods"].items():
        result = f"skipped ({m['skipped']})" if "skipped" in m else (
            f"linear-probe top-1 {m['top1']:.4f}{_interval(m.get('top1_ci95'))}, {FEW_SHOT}-shot {m[shot]:.4f} "
            f"over seeds {m['seeds']} ({times['methods'][method]['seconds']:.0f} s)")
        echo(f"{escape(metrics['pool'])} {method}: {result}")
    echo(f"wrote {escape(out)}")


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)


def parse_dataset(spec: str) -> tuple[str, str]:
    """``NAME=DIR`` -> (name, dir)."""
    name, eq, path = spec.partition("=")
    if not eq or not name.strip() or not path:
        raise click.BadParameter(f"{spec!r}: use NAME=DIR (e.g. curated=data/synthetic/curated)",
                                 param_hint="--dataset")
    return name.strip(), path


@click.command("evaluate")
@click.option("--dataset", "datasets", multiple=True, metavar="NAME=DIR",
              help="A synthetic dataset to evaluate. Repeatable [default: the config's evaluate.datasets].")
@click.option("--reference", type=click.Path(path_type=Path), default=None,
              help="The REAL split every dataset is compared with [default: data/real/test].")
@click.option("--train", "train_split", type=click.Path(path_type=Path), default=None,
              help="The REAL train split: the reference CNN (recognition, features) learns from it "
                   "[default: data/real/train].")
@click.option("--floor", type=click.Path(path_type=Path), default=None,
              help="Held-out REAL data, disjoint from --reference: the real-vs-real floor [default: data/real/val].")
@click.option("--cas", multiple=True, metavar="NAME",
              help="Also train the classifier on this dataset alone and test it on --reference (CAS). Repeatable "
                   "[default: the config's evaluate.cas; none when --dataset is given].")
@click.option("--encoder-path", default=None,
              help="The CLIP scorer folder of the second feature view [default: models/clip].")
@click.option("--n", type=int, default=None, help="Samples per side of every comparison [default: the smallest set].")
@click.option("--draws", type=int, default=None, help="Seeded draws of n per set.")
@click.option("--bootstrap", type=int, default=None, help="Bootstrap resamples for the 95% intervals (0: none).")
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="The metrics file (JSON) to write: no wall-clock time.")
@click.option("--plot", type=click.Path(path_type=Path), default=None,
              help="Write the guidance trade-off rows (JSON: one per dataset made at a guidance scale) here.")
@click.option("--timings", type=click.Path(path_type=Path), default=None, help="Write the wall-clock timings here.")
@config_options("evaluate", "reference_epochs=5")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def evaluate_cmd(datasets: tuple[str, ...], reference: Path | None, train_split: Path | None, floor: Path | None,
                 cas: tuple[str, ...], encoder_path: str | None, n: int | None, draws: int | None,
                 bootstrap: int | None, out: Path, plot: Path | None, timings: Path | None, config_file: Path | None,
                 sets: tuple[str, ...], as_json: bool) -> None:
    """Compare synthetic datasets with REAL data at one sample count: FD, KID, precision/recall and
    density/coverage with 95% intervals (reference CNN features and CLIP's), recognition rate, class and
    attribute balance, and CAS; the real-vs-real floor beside them.

    The dvc.yaml stage evaluate, without DVC.

    \b
    Example:
      factory evaluate --dataset raw=data/synthetic/raw --dataset curated=data/synthetic/curated \\
        --cas curated --reference data/real/test --train data/real/train --floor data/real/val \\
        --encoder-path models/clip --out metrics/evaluate.json
    """
    named: dict[str, str] = {}
    for spec in datasets:
        name, path = parse_dataset(spec)
        if name in named:
            raise click.BadParameter(f"dataset name {name!r} given twice", param_hint="--dataset")
        named[name] = path
    given = {"datasets": named, "guidance": ()} if named else {}  # the sets named here replace the config's
    cfg = load_config("evaluate", config_file, sets, **given, cas=tuple(cas) if (cas or named) else None,
                      reference=_str(reference), train=_str(train_split), floor=_str(floor),
                      encoder_path=encoder_path, n=n, draws=draws, bootstrap=bootstrap)
    from factory.core.files import write_json
    from factory.measure.evaluation import evaluate_datasets, guidance_rows

    inputs = [cfg.reference, cfg.train, cfg.floor, *cfg.datasets.values()]
    claim_files([out, plot, timings], inputs=inputs)
    with counter("evaluate", len(cfg.datasets), "set") as bar:
        result = evaluate_datasets(cfg, progress=lambda name: bar.update(1))
    metrics, _ = write_metrics(result, out, timings)
    if plot is not None:
        write_json(plot, guidance_rows(metrics, list(cfg.guidance) or None))
    keys = ("fd", "kid", "precision", "recall", "density", "coverage", "recognition", "cas", "cas_ci95")
    if as_json:
        echo_json({"out": str(out), "n": metrics["n"], "draws": metrics["draws"],
                   "encoder": metrics["encoder"]["kind"],
                   "floor": {k: metrics["floor"].get(k) for k in ("fd", "kid", "precision", "recall")},
                   "datasets": {name: {k: d.get(k) for k in keys} for name, d in metrics["datasets"].items()}})
        return
    fl = metrics["floor"]
    echo(f"at n={metrics['n']} ({metrics['draws']} draws), {escape(metrics['encoder']['kind'])} features: "
         f"{escape(fl['label'])}: FD {fl['fd']:.4g}, KID {fl['kid']:.3g}")
    for name, d in metrics["datasets"].items():
        cas_text = f", CAS {d['cas']:.4f}" if "cas" in d else ""
        rec = f"{d['recognition']:.4f}" if d.get("recognition") is not None else "n/a"
        echo(f"{escape(name)} (guidance {d.get('guidance_scale')}): FD {d['fd']:.4g}, KID {d['kid']:.3g}, "
             f"precision {d['precision']:.3f}, recall {d['recall']:.3f}, recognition {rec}{cas_text}")
    echo(f"wrote {escape(out)}")
