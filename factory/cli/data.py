"""Commands on datasets: ``ingest``, ``split``, ``verify``, ``inspect``, ``show``, ``grid``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from factory.cli.common import echo, echo_json, escape, escape_all, progress
from factory.core.text import plural


class DatasetLocation(click.ParamType):
    """A dataset argument: a local folder (a ``Path``) or an fsspec URL such as ``s3://bucket/prefix/dataset``
    (a :class:`~factory.core.remote.RemotePath`; endpoint and credentials from the environment, README
    "Datasets on S3")."""

    name = "dataset"

    def convert(self, value, param, ctx):
        if not isinstance(value, str):
            return value
        from factory.core.remote import dataset_location

        return dataset_location(value)

    def shell_complete(self, ctx, param, incomplete):  # local folders complete as click.Path's do
        from click.shell_completion import CompletionItem

        return [CompletionItem(incomplete, type="dir")]


DATASET = DatasetLocation()


@click.command()
@click.argument("source")
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("--shard-size", default=1000, show_default=True, type=click.IntRange(min=1),
              help="Samples per shard.")
@click.option("--name", default=None, help="Dataset name (default: from the source).")
@click.option("--skip-bad", is_flag=True, help="Skip unreadable images and count them, instead of failing.")
@click.option("--overwrite", is_flag=True, help="Replace OUT_DIR if it already holds a dataset.")
@click.option("--class-names", default=None, metavar="FILE|imagenet|none",
              help="What the class ids are called: a TSV or JSON file (id, name, synonyms, definition, hypernym), "
                   "'imagenet' (bundled WordNet names), or 'none'. Default: ImageNet names for WordNet-id folders.")
@click.option("--image-column", default=None, metavar="COLUMN",
              help="hf: sources: the column holding the images (default: the first Image column).")
@click.option("--label-column", default=None, metavar="COLUMN",
              help="hf: sources: the column holding the labels (default: the first ClassLabel column; an integer "
                   "or string column gets its sorted distinct values as classes).")
def ingest(source: str, out_dir: Path, shard_size: int, name: str | None, skip_bad: bool, overwrite: bool,
           class_names: str | None, image_column: str | None, label_column: str | None) -> None:
    """Pack real images from SOURCE into a dataset at OUT_DIR.

    SOURCE is sklearn:digits, sklearn:digits-colored[?bias=0.9&seed=0], hf:<name-or-path>[:<split>],
    an ImageFolder folder (<class>/<file>), or an existing dataset folder (re-shard). Class folders named by
    WordNet id (n01440764, ...) get their ImageNet names (tench, ...): prompts use the names. hf: reads
    offline (a folder or the Hugging Face cache); a factory export (factory export-hf) comes back with every
    sample's key, provenance record and image bytes as they were.

    Example: factory ingest ../shared/data/imagenette-mini/train data/inet-train --shard-size 500
    """
    from factory.data.ingest import ingest as run_ingest

    summary = run_ingest(source, out_dir, shard_size=shard_size, name=name, skip_bad=skip_bad, overwrite=overwrite,
                         class_names=class_names, progress=lambda it, total: progress(it, "ingest", total),
                         image_column=image_column, label_column=label_column)
    echo(f"wrote {plural(summary.samples, 'sample')} in {plural(summary.shards, 'shard')} "
         f"({plural(len(summary.classes), 'class', 'classes')}) to {escape(summary.out_dir)}")
    if summary.names:
        shown = ", ".join(f"{c} {n}" for c, n in list(summary.names.items())[:10])
        more = f", ... ({len(summary.names)} in all)" if len(summary.names) > 10 else ""
        echo(escape(f"class names: {shown}{more}"))
    if skip_bad:
        echo(f"skipped {plural(len(summary.skipped), 'unreadable image')}")
        for what in summary.skipped:
            echo(f"  skipped: {escape(what)}")


@click.command()
@click.argument("dataset", type=click.Path(path_type=Path))
@click.argument("train_out", type=click.Path(path_type=Path))
@click.argument("test_out", type=click.Path(path_type=Path))
@click.option("--test-fraction", required=True, type=float, help="Share of each class that goes to TEST_OUT.")
@click.option("--val", "val_out", default=None, type=click.Path(path_type=Path),
              help="Also write a val split here, carved from the train part.")
@click.option("--val-fraction", default=0.2, show_default=True, type=float,
              help="With --val: share of each class of the train part that goes to val.")
@click.option("--style", multiple=True, type=click.Choice(["thickness", "slant"]),
              help="Write this style level (fit per class on train) into every record; repeatable.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**32 - 1))
@click.option("--shard-size", default=None, type=click.IntRange(min=1), help="Default: the input's.")
@click.option("--overwrite", is_flag=True, help="Replace outputs that already hold datasets.")
def split(dataset: Path, train_out: Path, test_out: Path, test_fraction: float, val_out: Path | None,
          val_fraction: float, style: tuple[str, ...], seed: int, shard_size: int | None, overwrite: bool) -> None:
    """Split DATASET into TRAIN_OUT and TEST_OUT (and --val), stratified by class, deterministically.

    Example: factory split data/digits data/train data/test --val data/val --test-fraction 0.2
    --style thickness --style slant
    """
    from factory.data.ingest import split as run_split

    counts = run_split(dataset, train_out, test_out, val_out=val_out, test_fraction=test_fraction,
                       val_fraction=val_fraction, style=style, seed=seed, shard_size=shard_size, overwrite=overwrite)
    val = f"val: {plural(counts['val'], 'sample')} -> {escape(val_out)}; " if val_out is not None else ""
    echo(f"train: {plural(counts['train'], 'sample')} -> {escape(train_out)}; {val}"
         f"test: {plural(counts['test'], 'sample')} -> {escape(test_out)}")


@click.command()
@click.argument("datasets", nargs=-1, required=True, type=DATASET)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON report.")
def verify(datasets: tuple[Path, ...], as_json: bool) -> None:
    """Re-hash every shard, check counts and decode every image. Exit 1 if anything is wrong.

    A DATASET is a folder or an fsspec URL (s3://bucket/prefix/dataset).

    Example: factory verify data/real/train data/real/test
    """
    from factory.core.shards import INDEX_NAME, Dataset
    from factory.data.inspection import verify as run_verify

    for p in datasets:  # a path that is no dataset at all is bad input (exit 2), not a failed check
        if not (p / INDEX_NAME).is_file():
            Dataset(p)
    results = [run_verify(p) for p in datasets]
    if as_json:
        echo_json([{"dataset": str(r.dataset), "ok": r.ok, "samples": r.samples,
                    "shards": r.shards, "problems": r.problems} for r in results])
    else:
        for r in results:
            if r.ok:
                echo(f"OK   {escape(r.dataset)}: {plural(r.samples, 'sample')} in {plural(r.shards, 'shard')}")
            else:
                echo(f"BAD  {escape(r.dataset)}: {len(r.problems)} problem(s)")
                for problem in r.problems:
                    echo(f"  {escape(problem)}")
    if not all(r.ok for r in results):
        sys.exit(1)


@click.command(name="inspect")
@click.argument("dataset", type=DATASET)
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def inspect_cmd(dataset: Path, as_json: bool) -> None:
    """Summarise DATASET (a folder or an s3://... URL): samples, classes with counts, sources, generations,
    image sizes, bytes.

    Example: factory inspect data/real/train --json
    """
    from factory.data.inspection import format_summary, summarize

    info = summarize(dataset)
    if as_json:
        echo_json(info)
    else:
        echo(format_summary(escape_all(info)))


@click.command()
@click.argument("dataset", type=DATASET)
@click.argument("key")
def show(dataset: Path, key: str) -> None:
    """Print the provenance record of sample KEY in DATASET as JSON.

    Example: factory show data/real/train digits-00000
    """
    from factory.data.inspection import show as run_show

    echo_json(json.loads(run_show(dataset, key)), sort_keys=True)


@click.command()
@click.argument("dataset", type=DATASET)
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--per-class", default=8, show_default=True, type=click.IntRange(min=1))
@click.option("--cell", default=64, show_default=True, type=click.IntRange(8, 1024), help="Cell size in pixels.")
@click.option("--caption", type=click.Choice(["none", "reason", "clip"]), default="none", show_default=True,
              help="Under each image: reason: a rejected sample's reason and its number (low_clip_score 0.41<0.63, "
                   "leak d=2), a kept one's CLIP score; clip: the CLIP score. Captioned cells are at least 96 px.")
def grid(dataset: Path, out: Path, per_class: int, cell: int, caption: str) -> None:
    """Draw a contact sheet of DATASET to OUT.png: one row per class, labelled with its name.

    Example: factory grid data/synthetic/rejected rejected.png --per-class 10 --caption reason
    """
    from factory.data.inspection import grid as run_grid

    echo(f"wrote {escape(run_grid(dataset, out, per_class=per_class, cell=cell, caption=caption))}")
