"""Helpers shared by the thin scripts in ``stages/``: arguments, logging set-up and one-line errors."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, Callable

from factory.core.errors import FactoryError
from factory.core.files import write_json
from factory.core.secrets import redact
from factory.core.timings import split_timings


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's ``main``: a FactoryError (bad input or params) or an OSError (disk full, read-only
    file system, I/O or permission error) becomes one line on stderr naming the file, and exit code 2.
    Anything else is a bug and keeps its traceback (DVC shows the stage's stderr)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        main()
    except FactoryError as exc:
        print(f"Error: {redact(str(exc))}", file=sys.stderr)
        sys.exit(2)
    except OSError as exc:
        files = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f)
        print(f"Error: {files + ': ' if files else ''}{exc.strerror or exc}", file=sys.stderr)
        sys.exit(2)


def stage_args(doc: str | None, *specs: tuple[Any, ...], study: bool = False, results: bool = False
               ) -> argparse.Namespace:
    """Parse a stage's command line. Its paths come from ``dvc.yaml``, the one place they are written.

    Each spec is ``(name, help)`` or ``(name, help, argparse keywords)``: a bare name is a positional
    argument; ``--name`` is an option, required unless the keywords give it a ``default``. ``study`` adds
    ``--study NAME`` (e.g. ``bias``: read that study's params sections instead of the main ones);
    ``results`` adds ``--metrics FILE`` and ``--timings FILE`` (see :func:`write_results`).
    """
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    if study:
        ap.add_argument("--study", default=None, help="a study (e.g. bias) whose params sections to read")
    for name, help_text, *extra in specs:
        kwargs = dict(extra[0]) if extra else {}
        if name.startswith("--") and "default" not in kwargs:
            kwargs["required"] = True
        ap.add_argument(name, help=help_text, **kwargs)
    if results:
        ap.add_argument("--metrics", required=True, help="the results (JSON) to write: no wall-clock time")
        ap.add_argument("--timings", required=True, help="the wall-clock timings (JSON) to write")
    return ap.parse_args()


def write_results(args: argparse.Namespace, summary: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Write a summary's results to ``args.metrics`` and its wall-clock timings to ``args.timings``, so a
    deterministic re-run writes the same metrics bytes and leaves the stages downstream clean."""
    metrics, timings = split_timings(summary)
    write_json(args.metrics, metrics)
    write_json(args.timings, timings)
    return metrics, timings
