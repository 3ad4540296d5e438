"""The one secret detector: no token, key or password reaches an output of the factory.

Every text that ends up in a plan, a provenance record, an index or ``dvc.lock`` passes through
:func:`check_no_secret`: the provenance validator, the params loader, plan building and reading, and
the dataset writer (class names, dataset name, meta). It refuses two things:

- a string that looks like a credential (:data:`PATTERNS`: Hugging Face, GitHub, OpenAI, AWS, Slack
  tokens and PEM private keys), wherever it is;
- a mapping key named like a secret (ending in token, password, secret or api_key), whatever its value.

The patterns follow the vendors' documented prefixes; each asks for enough characters after the prefix
that ordinary words (``task-list``, ``hf_cache``) do not match.
"""

from __future__ import annotations

import re
from typing import Any

from factory.core.errors import FactoryError

_START = r"(?<![A-Za-z0-9])"  # a token starts a word (``desk-...`` is no OpenAI key)

PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("Hugging Face token", re.compile(_START + r"hf_[A-Za-z0-9]{20,}")),
    ("GitHub token", re.compile(_START + r"(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,})")),
    ("OpenAI API key", re.compile(_START + r"sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,}")),
    ("AWS access key", re.compile(_START + r"(?:AKIA|ASIA)[0-9A-Z]{16}(?![A-Za-z0-9])")),
    ("Slack token", re.compile(_START + r"xox[abposre]-[A-Za-z0-9-]{10,}")),
    ("private key", re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----")),
)

SECRET_KEY_NAME = re.compile(r"(token|password|passwd|secret|api[_-]?key)$", re.IGNORECASE)

_MESSAGE = "secrets never go into outputs"


# all patterns in one (a record's every string is searched once): group k is PATTERNS[k]
_ANY = re.compile("|".join(f"(?P<p{k}>{p.pattern})" for k, (_, p) in enumerate(PATTERNS)))


def redact(text: str) -> str:
    """``text`` with every credential-like string cut to its first 4 characters and ``…`` (an error message
    that names a key or path holding a token must not print the token)."""
    return _ANY.sub(lambda m: m.group(0)[:4] + "…", text)


def find_secret(text: str) -> str | None:
    """The kind of credential ``text`` holds (e.g. ``"Hugging Face token"``), or None."""
    m = _ANY.search(text)
    return None if m is None else PATTERNS[int(m.lastgroup[1:])][0]  # type: ignore[index]


def secret_problems(obj: Any, where: str) -> list[str]:
    """Every credential and secret-named key in ``obj`` (a string, or mappings and sequences of them,
    nested to any depth), one line each: ``<where>.<key>[<i>]: <what>; secrets never go into outputs``."""
    problems: list[str] = []
    stack: list[tuple[Any, str]] = [(obj, where)]
    while stack:  # depth-first, in document order; no recursion (a hostile nesting cannot overflow it)
        item, at = stack.pop()
        if isinstance(item, str):
            kind = find_secret(item)
            if kind is not None:
                article = "an" if kind[0] in "AEIOU" else "a"
                problems.append(f"{at}: looks like {article} {kind}; {_MESSAGE}")
        elif isinstance(item, dict):
            children = []
            for k, v in item.items():
                name = f"{at}.{k}" if at else str(k)
                if isinstance(k, str) and SECRET_KEY_NAME.search(k):
                    problems.append(f"{name}: a key named like a secret; {_MESSAGE}")
                    continue
                children += [(k, name), (v, name)]
            stack.extend(reversed(children))
        elif isinstance(item, (list, tuple)):
            stack.extend(reversed([(v, f"{at}[{i}]") for i, v in enumerate(item)]))
    return list(dict.fromkeys(problems))


def check_no_secret(obj: Any, where: str) -> None:
    """Raise :class:`FactoryError` naming ``where`` (dotted, with ``[i]`` for list items) when ``obj``
    (a string, or mappings and sequences of them, nested) holds a credential or a secret-named key."""
    problems = secret_problems(obj, where)
    if problems:
        raise FactoryError(problems[0])
