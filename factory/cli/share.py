"""Commands that share datasets: ``export-hf`` (a Hugging Face dataset folder with its card and Croissant
metadata). Pulling one back is ``factory ingest hf:...``."""

from __future__ import annotations

from pathlib import Path

import click

from factory.cli.common import echo, echo_json, escape, progress


@click.command(name="export-hf")
@click.argument("src", metavar="DATASET_OR_POOL", type=click.Path(path_type=Path))
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("--split", default="train", show_default=True, help="Split name of the exported rows.")
@click.option("--license", "license_", default="unknown", show_default=True,
              help="License id for the card and Croissant (apache-2.0, cc-by-4.0, other, ...).")
@click.option("--name", default=None, help="Dataset name in the card (default: the dataset's or pool's).")
@click.option("--repo-id", default=None, metavar="OWNER/NAME",
              help="Where it will live on the Hub: used in the card's examples and Croissant's url.")
@click.option("--results", default="auto", show_default=True, metavar="auto|none|DIR",
              help="Pipeline folder whose reports/curate.json and metrics/ the card reports; auto: the nearest "
                   "folder above DATASET_OR_POOL holding dvc.yaml.")
@click.option("--max-shard-mb", default=500, show_default=True, type=click.IntRange(min=1),
              help="Close a Parquet file once its rows hold this many MB.")
@click.option("--shard-rows", default=None, type=click.IntRange(min=1), help="At most this many rows per file.")
@click.option("--overwrite", is_flag=True, help="Replace OUT_DIR if it holds an earlier export.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
def export_hf(src: Path, out_dir: Path, split: str, license_: str, name: str | None, repo_id: str | None,
              results: str, max_shard_mb: int, shard_rows: int | None, overwrite: bool, as_json: bool) -> None:
    """Export a dataset or a pool (data/pools/NAME.json) to OUT_DIR as a Hugging Face dataset: Parquet shards
    (image, label as ClassLabel, flat provenance columns, the whole record as JSON), a dataset card README.md
    and croissant.json. datasets.load_dataset(OUT_DIR) reads it offline; 'factory ingest hf:OUT_DIR' gives
    back every sample as it was.

    Example: factory export-hf data/synthetic/curated hf/digits-synth --license cc-by-4.0
    --repo-id me/digits-synth (then: factory push-hf hf/digits-synth me/digits-synth)
    """
    from factory.share.hf_export import export_hf as run_export

    where: str | Path | None = None if results == "none" else results if results == "auto" else Path(results)
    s = run_export(src, out_dir, split=split, license=license_, name=name, repo_id=repo_id, results=where,
                   max_shard_bytes=max_shard_mb * 1000 * 1000, shard_rows=shard_rows, overwrite=overwrite,
                   progress=progress)
    if as_json:
        echo_json({"out_dir": str(s.out_dir), "samples": s.samples, "files": s.files, "classes": s.classes,
                   "sources": s.sources, "bytes": s.bytes, "results": s.results})
        return
    sources = ", ".join(f"{n} {k}" for k, n in sorted(s.sources.items()))
    echo(f"exported {s.samples} samples ({sources}) in {len(s.files)} Parquet files to {escape(s.out_dir)}, "
         f"with README.md and croissant.json")
    if s.results:
        echo(f"card reports: {', '.join(s.results)}")
