"""The ``factory`` command line: the group, and the commands of every phase registered on it.

Exit codes: 0 success; 1 a check ran and found problems; 2 bad usage or bad input. Errors are one
line on stderr naming the file, key or parameter at fault. The commands live in one module per
group: :mod:`factory.cli.data`, :mod:`factory.cli.generate`, :mod:`factory.cli.curate`,
:mod:`factory.cli.loop`, :mod:`factory.cli.share`, and the commands that run one pipeline step each:
:mod:`factory.cli.pipeline` (generate, curate, pool), :mod:`factory.cli.measure` (train-classifier,
train-contrastive, evaluate).
"""

from __future__ import annotations

import logging

import click

from factory import __version__
from factory.cli import curate, data, generate, loop, measure, pipeline, report, share
from factory.cli.common import EscapingFormatter, FactoryGroup
from factory.cli.push import push_hf

__all__ = ["FactoryGroup", "cli", "main"]


@click.group(cls=FactoryGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="factory")
@click.option("-v", "--verbose", is_flag=True, help="Log progress details to stderr.")
def cli(verbose: bool) -> None:
    """Synthetic image dataset factory: make, curate, version and prove synthetic training data."""
    handler = logging.StreamHandler()
    handler.setFormatter(EscapingFormatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, handlers=[handler])
    from factory.core.sample import build_epoch

    build_epoch()  # a bad SOURCE_DATE_EPOCH fails here, before numpy's f2py reads it at import (a traceback)
    from factory.core.limits import max_image_pixels, max_member_bytes

    max_member_bytes(), max_image_pixels()  # a bad limit is one line (exit 2), not a problem per sample


for command in (data.ingest, data.split, data.verify, data.inspect_cmd, data.show, data.grid,
                generate.prompts, generate.regenerate, curate.filter_cmd, curate.dedup_command, loop.loop,
                share.export_hf, pipeline.generate_cmd, pipeline.curate_cmd, pipeline.pool_cmd,
                measure.train_classifier_cmd, measure.train_contrastive_cmd, measure.evaluate_cmd, report.report_cmd):
    cli.add_command(command)
generate.prompts.add_command(curate.prompts_audit)
cli.add_command(push_hf)


def main() -> None:
    cli(prog_name="factory")


if __name__ == "__main__":
    main()
