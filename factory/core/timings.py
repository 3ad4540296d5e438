"""Wall-clock timings, kept apart from results.

A metrics file holds results only, so that a deterministic re-run writes the same bytes and leaves the
stages downstream of it clean. The training and evaluation summaries carry their timings inline;
:func:`split_timings` takes them out, and the stage writes them to a file of their own
(``reports/timings/<stage>.json`` in ``dvc.yaml``, an output DVC does not cache).
"""

from __future__ import annotations

from typing import Any, Mapping

# the wall-clock fields of the library's summaries (at any depth)
TIMING_KEYS = frozenset({"seconds", "seconds_per_step", "cpu_seconds", "images_per_second"})


def split_timings(result: Mapping[str, Any], keys: frozenset[str] = TIMING_KEYS
                  ) -> tuple[dict[str, Any], dict[str, Any]]:
    """``result`` without its timing fields, and those fields alone, nested as they were.

    Mappings are searched at any depth (lists are left as they are); the order of the remaining keys is
    kept, and a nested mapping that held no timing does not appear in the timings.
    """
    rest: dict[str, Any] = {}
    timings: dict[str, Any] = {}
    for key, value in result.items():
        if key in keys:
            timings[key] = value
        elif isinstance(value, Mapping):
            rest[key], inner = split_timings(value, keys)
            if inner:
                timings[key] = inner
        else:
            rest[key] = value
    return rest, timings
