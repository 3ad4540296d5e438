"""What every command group of the ``factory`` command line shares: the one error path, terminal escaping,
the progress bar, and the ``--scorer`` spec.

Every line the CLI prints goes through :func:`echo` (or :func:`echo_json`), so names taken from a dataset
(class names, keys, paths) cannot drive the terminal: control characters, C1 codes, DEL, line and paragraph
separators and bidirectional overrides are shown as ``\\x1b``-style escapes. Every failure ends in
:meth:`FactoryGroup.main` as one line on stderr (see :func:`report_error`).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import sys
from typing import Any, Iterable, TypeVar

import click

from factory.core.errors import FactoryError

T = TypeVar("T")

# C0 controls (tab and newline too), DEL, C1 controls, the Unicode line/paragraph separators and the
# bidirectional marks, embeddings, overrides and isolates (a U+202E can make "gnp.exe" read "exe.png").
_UNSAFE = [*range(0x20), 0x7F, *range(0x80, 0xA0), 0x061C, 0x200E, 0x200F, 0x2028, 0x2029,
           *range(0x202A, 0x202F), *range(0x2066, 0x206A)]
_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}
_ESCAPES = {c: _NAMED.get(chr(c), f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}") for c in _UNSAFE}


def escape(text: Any) -> str:
    """``text`` (made a string) with every character that can steer a terminal shown as an escape
    (``"\\x1b[2J"`` -> ``"\\\\x1b[2J"``, a newline -> ``"\\\\n"``): safe to print as one line."""
    return str(text).translate(_ESCAPES)


def escape_all(obj: Any) -> Any:
    """``obj`` with every string in it (mapping keys too, nested) escaped, for library formatters that
    build multi-line text from names (a class name holding a newline cannot forge a line)."""
    if isinstance(obj, str):
        return escape(obj)
    if isinstance(obj, dict):
        return {escape_all(k): escape_all(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(escape_all(v) for v in obj)
    return obj


def echo(text: Any = "", *, err: bool = False) -> None:
    """Print ``text``, every line of it escaped (only ``\\n`` separates lines), credentials redacted."""
    from factory.core.secrets import redact

    click.echo("\n".join(escape(redact(line)) for line in str(text).split("\n")), err=err)


def echo_json(obj: Any, *, sort_keys: bool = False) -> None:
    """Print ``obj`` as indented JSON: ``ensure_ascii`` escapes controls and non-ASCII; DEL as well."""
    text = json.dumps(obj, indent=2, sort_keys=sort_keys, ensure_ascii=True)
    click.echo(text.replace("\x7f", "\\u007f"))


class EscapingFormatter(logging.Formatter):
    """Log records as escaped lines (a warning quoting a file name cannot drive the terminal)."""

    def format(self, record: logging.LogRecord) -> str:
        record = logging.makeLogRecord({**record.__dict__, "msg": escape(record.getMessage()), "args": None})
        return "\n".join(escape(line) for line in super().format(record).split("\n"))  # a traceback: lines


def progress(items: Iterable[T], desc: str, total: int | None = None) -> Iterable[T]:
    """A tqdm bar on a terminal; the bare iterable otherwise (quiet in pipes, logs and CI)."""
    if not sys.stderr.isatty():
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, total=total, unit="img", dynamic_ncols=True)


def _os_error_line(exc: OSError) -> str:
    """``<file>: <reason> (<ERRNO>)``, with both files of a rename or copy."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    if exc.errno in errno.errorcode:
        reason += f" ({errno.errorcode[exc.errno]})"
    names = [str(f) for f in (exc.filename, exc.filename2) if f is not None]
    return f"{' -> '.join(names)}: {reason}" if names else reason


def one_line(message: str) -> str:
    """A message listing several problems (one a line) as one line: ``params.yaml: 2 problems: a; b``
    (a prefix every line shares, such as the file, comes first, once)."""
    lines = [line for line in message.split("\n") if line.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else message
    head = lines[0].split(": ", 1)[0] + ": "
    if all(line.startswith(head) and len(line) > len(head) for line in lines):
        return f"{head}{len(lines)} problems: " + "; ".join(line[len(head):] for line in lines)
    return f"{len(lines)} problems: " + "; ".join(lines)


def report_error(exc: BaseException) -> int:
    """Print ``exc`` as one line on stderr (a FactoryError listing several errors: joined, see one_line) and
    return the exit code: 2 bad usage, input, parameters or file system; 130 interrupted; 1 a pipe closed
    early. ``SystemExit`` passes through; an unexpected exception is an internal error (``FACTORY_DEBUG=1``
    re-raises it for the traceback)."""
    if isinstance(exc, SystemExit):
        raise exc
    no_args_help = getattr(click.exceptions, "NoArgsIsHelpError", ())
    if isinstance(exc, no_args_help):  # ``factory prompts`` alone prints its help, as click does
        exc.show()
        return exc.exit_code
    if isinstance(exc, click.UsageError):
        msg = " ".join(exc.format_message().split("\n"))
        where = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        echo(f"Error: {escape(msg)}{where}", err=True)
        return 2
    if isinstance(exc, click.ClickException):
        echo(f"Error: {escape(' '.join(exc.format_message().split(chr(10))))}", err=True)
        return exc.exit_code
    if isinstance(exc, (KeyboardInterrupt, Interrupted)) or (
            isinstance(exc, click.Abort) and isinstance(exc.__context__, KeyboardInterrupt)):
        echo("Error: interrupted", err=True)
        return 130
    if isinstance(exc, click.Abort):
        echo("Error: aborted", err=True)
        return 1
    if isinstance(exc, FactoryError):
        echo(f"Error: {escape(one_line(str(exc)))}", err=True)
        return 2
    if isinstance(exc, OSError):
        if exc.errno == errno.EPIPE:  # ``factory inspect DS | head``: stop quietly, as click does
            sys.stdout = click.utils.PacifyFlushWrapper(sys.stdout)  # type: ignore[assignment]
            sys.stderr = click.utils.PacifyFlushWrapper(sys.stderr)  # type: ignore[assignment]
            return 1
        echo(f"Error: {escape(_os_error_line(exc))}", err=True)
        return 2
    if os.environ.get("FACTORY_DEBUG", "") not in ("", "0"):
        raise exc
    detail = " ".join(str(exc).split("\n"))
    if len(detail) > 300:
        detail = detail[:300] + "..."
    echo(f"Error: internal error ({type(exc).__name__}: {escape(detail)}); "
         "run with FACTORY_DEBUG=1 for the traceback", err=True)
    return 2


class Interrupted(Exception):
    """Ctrl-C inside a command (click would turn it into ``Abort`` after a blank line on stderr)."""


class FactoryGroup(click.Group):
    """The ``factory`` group: every failure, of any command or subgroup, ends here as one line on stderr
    (:func:`report_error`); ``--help`` and ``--version`` print as click prints them."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            raise Interrupted() from None

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except BaseException as exc:  # noqa: BLE001 - every failure becomes one line (report_error)
            code = report_error(exc)
        sys.exit(code if isinstance(code, int) else 0)


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
