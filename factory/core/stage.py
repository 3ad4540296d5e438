"""Helpers shared by the thin scripts in ``stages/``: logging set-up and one-line errors."""

from __future__ import annotations

import logging
import sys
from typing import Callable

from factory.core.errors import FactoryError


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's ``main``; a FactoryError becomes one line on stderr and exit code 2."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        main()
    except FactoryError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        sys.exit(2)
