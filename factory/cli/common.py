"""What every command group of the ``factory`` command line shares: the error handling of the group,
the progress bar, and the ``--scorer`` spec."""

from __future__ import annotations

import sys
from typing import Any, Iterable, TypeVar

import click

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
