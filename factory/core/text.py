"""Small text helpers for messages a user reads."""

from __future__ import annotations


def plural(n: int, word: str, words: str | None = None) -> str:
    """``n`` and ``word`` in the number it takes: ``plural(1, "shard")`` -> ``"1 shard"``, ``plural(3, "shard")``
    -> ``"3 shards"`` (``words``: an irregular plural, e.g. ``plural(n, "match", "matches")``)."""
    return f"{n} {word if n == 1 else (words or word + 's')}"
