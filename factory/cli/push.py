"""``factory push-hf``: upload an export (or a dataset or pool, exported first) to the Hugging Face Hub."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from factory.cli.common import echo, echo_json, escape


def _size(n: int) -> str:
    for unit in ("bytes", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return f"{n} bytes"  # pragma: no cover


def _commit_bar(steps, total: int):
    """A bar over the commits on a terminal; the bare iterable otherwise."""
    if not sys.stderr.isatty():
        return steps
    from tqdm import tqdm

    return tqdm(steps, desc="push", total=total, unit="commit", dynamic_ncols=True)


@click.command(name="push-hf")
@click.argument("source", type=click.Path(path_type=Path))
@click.argument("repo_id")
@click.option("--private", is_flag=True, help="Create the repo private (an existing public repo is refused).")
@click.option("--revision", default=None, metavar="BRANCH",
              help="Push to this branch, created from main if missing. Default: main.")
@click.option("--dry-run", is_flag=True, help="List the files and sizes and print the card; no network, no token.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
def push_hf(source: Path, repo_id: str, private: bool, revision: str | None, dry_run: bool, as_json: bool) -> None:
    """Upload SOURCE to the dataset repo REPO_ID (owner/name) on the Hugging Face Hub.

    SOURCE is an export folder (README.md + data/*.parquet, from `factory export-hf`), or a dataset folder or
    pool JSON (exported to a temporary folder first). The token comes from HF_TOKEN or the saved login
    (`hf auth login`) and is never printed. Files already on the branch with the same content are skipped,
    so an interrupted push resumes; HF_ENDPOINT points it at another Hub.

    Example: factory push-hf data/export me/digits-synth --private --dry-run
    """
    from factory.share.push import push_hf as run_push

    result = run_push(source, repo_id, private=private, revision=revision, dry_run=dry_run, progress=_commit_bar)
    if as_json:
        data = result.to_json()
        if dry_run:
            data["card"] = result.card
        echo_json(data)
        return
    visibility = "private" if result.private else "public" if result.private is False else "the Hub's default"
    if dry_run:
        echo(f"dry run: nothing was sent; would push {len(result.files)} files ({_size(result.bytes)}) to dataset "
             f"{escape(result.repo_id)}, branch {escape(result.revision)} ({visibility} if created), "
             f"in {result.planned_commits} commit(s)")
        echo(f"token: {'from ' + result.token_source if result.token_source else 'none found (the push needs one)'}")
        width = max(len(f.path) for f in result.files)
        for f in result.files:
            echo(f"  {escape(f.path):<{width}}  {f.size:>12,} bytes")
        echo("files already on the branch with the same content are skipped; stale files under data/ are removed")
        echo(f"--- {escape('README.md')} (the dataset card) ---")
        echo(result.card.rstrip("\n"))
        return
    echo(f"pushed {escape(result.repo_id)}@{escape(result.revision)} ({visibility}): {len(result.uploaded)} files "
         f"uploaded in {len(result.commits)} commit(s), {len(result.skipped)} already there, "
         f"{len(result.deleted)} stale removed")
    echo(escape(result.url))
