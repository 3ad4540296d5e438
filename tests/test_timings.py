"""Wall-clock timings come out of a summary whole, and nothing else does."""

import json

from factory.core.timings import split_timings


def test_split_timings_takes_out_timings_at_any_depth_and_keeps_the_rest():
    summary = {"pool": "mix", "top1": 0.9, "seconds": 12.5, "images_per_second": 80.0, "history": [{"step": 1}],
               "methods": {"simclr": {"top1": 0.8, "seconds": 3.0}, "stablerep": {"skipped": "why"}},
               "config": {"max_seconds": None}}
    rest, timings = split_timings(summary)
    assert list(rest) == ["pool", "top1", "history", "methods", "config"]
    assert rest["methods"] == {"simclr": {"top1": 0.8}, "stablerep": {"skipped": "why"}}
    assert rest["config"] == {"max_seconds": None}  # a setting, not a timing
    assert timings == {"seconds": 12.5, "images_per_second": 80.0, "methods": {"simclr": {"seconds": 3.0}}}
    assert json.dumps(summary["methods"]["simclr"]) == '{"top1": 0.8, "seconds": 3.0}'  # the input is untouched


def test_split_timings_of_a_summary_without_timings():
    assert split_timings({"top1": 1.0, "nested": {"a": 1}}) == ({"top1": 1.0, "nested": {"a": 1}}, {})
