"""Hostile shards and indexes (issue 10, slice A): every reader fails with one line, never a traceback
and never a huge allocation; ``verify`` names every problem; no copy path launders a bad sample.

Each hostile dataset is built here with ``tarfile``/``io``; its index agrees with its shard bytes
(size and sha256) unless the attack is on that agreement, so the checks behind it are what is tested.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from factory.cli.main import cli
from factory.core.errors import DatasetError, FactoryError
from factory.core.integrity import is_shard_name, max_image_pixels, max_member_bytes
from factory.core.sample import real_sample
from factory.core.shards import Dataset, iter_shard_file
from factory.data.inspection import verify

CLASSES = ["a", "b"]
GIB6 = 6 << 30


# ---------------------------------------------------------------- builders


def png(value: int = 7, size=(8, 8)) -> bytes:
    buf = io.BytesIO()
    Image.new("L", size, value).save(buf, format="PNG")
    return buf.getvalue()


def noise_png(size=(64, 64)) -> bytes:
    px = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(px, "RGB").save(buf, format="PNG")
    return buf.getvalue()


def gif() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (8, 8), 3).save(buf, format="GIF")
    return buf.getvalue()


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A small PNG whose header claims ``width`` x ``height`` (IHDR patched, CRC fixed)."""
    data = bytearray(png())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def record(key: str, label: int = 0, image: bytes | None = None, **updates) -> dict:
    """A valid record for ``key``; its sha256 is that of ``image`` (so only the image checks can fail)."""
    try:  # the record of ``image`` itself where it decodes (so its phash is the image's), else of a stand-in
        rec = real_sample(key, png() if image is None else image, label, CLASSES[label],
                          {"dataset": "t", "index": 0}).provenance
    except FactoryError:
        rec = real_sample(key, png(), label, CLASSES[label], {"dataset": "t", "index": 0}).provenance
    if image is not None:
        rec["sha256"] = hashlib.sha256(image).hexdigest()
    rec.update(updates)
    return rec


def sample(key: str, label: int = 0, image: bytes | None = None, ext: str = "png", rec: dict | None = None,
           cls: bytes | None = None) -> list[tuple[str, bytes]]:
    image = png(label * 50) if image is None else image
    rec = record(key, label, image) if rec is None else rec
    return [(f"{key}.{ext}", image), (f"{key}.cls", cls if cls is not None else str(label).encode()),
            (f"{key}.json", json.dumps(rec, sort_keys=True).encode())]


def tar_of(members) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for m in members:
            if isinstance(m, tarfile.TarInfo):
                tar.addfile(m)
                continue
            name, data = m
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def huge_member_tar(declared: int = GIB6) -> bytes:
    """28 KB of tar whose first member's header declares ``declared`` bytes."""
    info = tarfile.TarInfo("k0.png")
    info.size, info.mtime = declared, 0
    return info.tobuf(tarfile.GNU_FORMAT) + b"\x89PNG" + b"\0" * 28_000


def make_dataset(root: Path, shards, *, samples=None, classes=CLASSES, counts=None, **index_fields) -> Path:
    """A dataset folder with the given shards (member lists or raw tar bytes) and an index that agrees
    with the shard files' bytes."""
    root.mkdir(parents=True)
    entries = []
    for i, shard in enumerate(shards):
        data = shard if isinstance(shard, bytes) else tar_of(shard)
        name = f"shard-{i:06d}.tar"
        (root / name).write_bytes(data)
        n = samples[i] if samples is not None else len({m[0].split(".")[0] for m in shard})
        entries.append({"name": name, "samples": n, "sha256": hashlib.sha256(data).hexdigest(),
                        "bytes": len(data)})
    index = {"schema": "factory.dataset/1", "name": "t", "classes": list(classes),
             "samples": sum(e["samples"] for e in entries), "shards": entries, **index_fields}
    if counts is not None:
        index["counts"] = counts
    (root / "index.json").write_text(json.dumps(index))
    return root


def good_shards():
    return [sample("k0", 0) + sample("k1", 1), sample("k2", 0)]


def rehash(root: Path) -> None:
    """Make index.json agree again with the (tampered) shard bytes: a laundered corruption."""
    index = json.loads((root / "index.json").read_text())
    for e in index["shards"]:
        data = (root / e["name"]).read_bytes()
        e["sha256"], e["bytes"] = hashlib.sha256(data).hexdigest(), len(data)
    (root / "index.json").write_text(json.dumps(index))


# ---------------------------------------------------------------- hostile shards

# name -> (builder(root) -> dataset folder, text the verify problem line must hold)
HOSTILE_SHARDS = {
    "huge member": (lambda r: make_dataset(r, [huge_member_tar()], samples=[1]), "declares 6,442,450,944 bytes"),
    "symlink": (lambda r: make_dataset(r, [[_link("k0.png", tarfile.SYMTYPE)] + sample("k1")], samples=[2]),
                "'k0.png' is a symbolic link"),
    "hardlink": (lambda r: make_dataset(r, [sample("k1") + [_link("k0.png", tarfile.LNKTYPE)]], samples=[2]),
                 "'k0.png' is a hard link"),
    "directory": (lambda r: make_dataset(r, [[_link("k0", tarfile.DIRTYPE)] + sample("k1")], samples=[2]),
                  "'k0' is a directory"),
    "device": (lambda r: make_dataset(r, [[_link("k0.png", tarfile.CHRTYPE)] + sample("k1")], samples=[2]),
               "'k0.png' is a device"),
    "dotdot name": (lambda r: make_dataset(r, [[("../k0.png", png())] + sample("k0")[1:]], samples=[1]),
                    "'../k0.png' has a directory part"),
    "newline in key": (lambda r: make_dataset(r, [[("k0\n.png", png())] + sample("k1")], samples=[2]),
                       "has a key that is not"),
    "no extension": (lambda r: make_dataset(r, [[("k0", png())] + sample("k1")], samples=[2]),
                     "'k0' has no extension"),
    "not a tar": (lambda r: make_dataset(r, [b"this is not a tar file at all" * 40], samples=[1]),
                  "unreadable tar"),
    "truncated tar": (lambda r: make_dataset(r, [tar_of(sample("k0") + sample("k1"))[:700]], samples=[2]),
                      "shard-000000.tar"),
    "zero-byte png": (lambda r: make_dataset(r, [sample("k0", image=b"") + sample("k1", 1)]),
                      "'k0': image member is empty"),
    "truncated png": (lambda r: make_dataset(r, [sample("k0", image=noise_png()[:900]) + sample("k1", 1)]),
                      "'k0': image does not decode"),
    "not an image": (lambda r: make_dataset(r, [sample("k0", image=b"GIF? no, text") + sample("k1", 1)]),
                     "'k0': image does not decode"),
    "gif under png": (lambda r: make_dataset(r, [sample("k0", image=gif()) + sample("k1", 1)]),
                      "'k0': .png member holds GIF bytes"),
    "bomb": (lambda r: make_dataset(r, [sample("k0", image=bomb_png()) + sample("k1", 1)]),
             "'k0': image is over the pixel limit"),
    "record sha256 mismatch": (lambda r: make_dataset(r, [sample("k0", rec=record("k0", 0, png(1)))]),
                               "'k0': image bytes do not match the record's sha256"),
    "record key": (lambda r: make_dataset(r, [sample("k0", rec=record("k9", 0, png(0)))]),
                   "'k0': record key is 'k9'"),
    "cls differs": (lambda r: make_dataset(r, [sample("k0", cls=b"1")]), "'k0': .cls 1 differs"),
    "bad cls": (lambda r: make_dataset(r, [sample("k0", cls=b"one")]), "'k0': .cls member is not"),
    "flipped class name": (lambda r: make_dataset(r, [sample("k0", rec=record("k0", 0, png(0), class_name="b"))]),
                           "'k0': class_name 'b' is not class 0"),
    "attributes not an object": (lambda r: make_dataset(r, [sample("k0", rec=record("k0", 0, png(0),
                                                                                  attributes=["red"]))]),
                                 "'k0': record attributes must be an object"),
    "invalid record": (lambda r: make_dataset(r, [sample("k0", rec=record("k0", 0, png(0), schema="x"))]),
                       "'k0': provenance of 'k0': schema"),
    "token in record": (lambda r: make_dataset(r, [sample("k0", rec=record(
        "k0", 0, png(0), origin={"dataset": "t", "note": "hf_" + "aB3dE5gH7jK9mN1pQ3sT5vX7zA"}))]), "'k0'"),
    "forged phash": (lambda r: make_dataset(r, [sample("k0", image=noise_png(), rec=record(
        "k0", 0, noise_png(), phash="ffffffffffffffff"))]), "'k0': the record's phash is not the image's"),
    "NaN in record": (lambda r: make_dataset(r, [[("k0.png", png(0)), ("k0.cls", b"0"), ("k0.json", json.dumps(
        record("k0", 0, png(0), attributes={"color": float("nan")})).encode())]]), "NaN is not JSON"),
    "png cut before its end chunk": (lambda r: make_dataset(r, [sample("k0", image=noise_png()[:-20])]),
                                     "'k0': image does not decode"),
    "deep json": (lambda r: make_dataset(r, [[("k0.png", png(0)), ("k0.cls", b"0"),
                                             ("k0.json", b"[" * 100_000 + b"]" * 100_000)]]),
                  "'k0': .json member: not valid JSON (nested deeper"),
    "json not utf-8": (lambda r: make_dataset(r, [[("k0.png", png(0)), ("k0.cls", b"0"), ("k0.json", b"{\xff}")]]),
                       "'k0': .json member: not UTF-8"),
    "missing json": (lambda r: make_dataset(r, [sample("k0")[:2]]), "'k0' lacks a .cls or .json member"),
    "two images": (lambda r: make_dataset(r, [sample("k0") + [("k0.jpg", png())]]), "no single image member"),
    "duplicate across shards": (lambda r: make_dataset(r, [sample("k0") + sample("k1", 1), sample("k1", 1)]),
                                "shard-000001.tar: sample 'k1' is also in shard-000000.tar"),
    "key twice in a shard": (lambda r: make_dataset(r, [sample("k0") + sample("k1", 1) + sample("k0")],
                                                    samples=[3]), "sample 'k0' appears twice"),
    "swapped classes": (lambda r: make_dataset(r, good_shards(), classes=["b", "a"]), "class_name 'a' is not"),
    "wrong counts": (lambda r: make_dataset(r, good_shards(), counts={"a": 1, "b": 2}),
                     "index.json: counts differ from the shards ('a': index 1, shards 2"),
    "counts do not add up": (lambda r: make_dataset(r, good_shards(), counts={"a": 5, "b": 1}),
                             "index.json: counts differ from the shards ('a': index 5, shards 2)"),
    "wrong shard count": (lambda r: make_dataset(r, good_shards(), samples=[1, 2]),
                          "shard-000000.tar: 2 samples, index says 1"),
}


def _link(name: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mtime = kind, "/etc/passwd", 0
    return info


def flipped_json(root: Path) -> Path:
    """A valid dataset, then one bit of a .json member flipped in place (index not updated)."""
    make_dataset(root, good_shards())
    shard = root / "shard-000000.tar"
    data = bytearray(shard.read_bytes())
    pos = data.index(b'"class_name": "a"') + len('"class_name": "')
    data[pos] ^= 0x01  # "a" -> "`"
    shard.write_bytes(bytes(data))
    return root


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def assert_one_line_error(r, culprit: str = "") -> None:
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.stderr
    assert culprit in lines[0]
    assert "Traceback" not in r.output


def assert_verify_finds(root: Path, text: str) -> None:
    r = run("verify", root)
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output
    assert text in r.output, r.output
    problems = [line for line in r.output.splitlines() if line.startswith("  ")]
    assert problems and all(line.strip() for line in problems)


@pytest.mark.parametrize("attack", sorted(HOSTILE_SHARDS))
def test_verify_names_each_hostile_shard(attack, tmp_path):
    build, text = HOSTILE_SHARDS[attack]
    root = build(tmp_path / "ds")
    before = {p.name: p.read_bytes() for p in root.iterdir()}
    assert_verify_finds(root, text)
    assert {p.name: p.read_bytes() for p in root.iterdir()} == before  # read-only


@pytest.mark.parametrize("attack", sorted(HOSTILE_SHARDS))
def test_copy_commands_refuse_each_hostile_shard(attack, tmp_path):
    """Re-shard, dedup --out and split copy nothing from a hostile dataset: one line, exit 2."""
    build, _ = HOSTILE_SHARDS[attack]
    root = build(tmp_path / "ds")
    outs = tmp_path / "outs"
    outs.mkdir()
    for args in (["ingest", root, outs / "re"], ["dedup", root, "--out", outs / "dd"],
                 ["split", root, outs / "tr", outs / "te", "--test-fraction", "0.5"]):
        r = run(*args)
        assert_one_line_error(r)
        assert list(outs.iterdir()) == [], (args, list(outs.iterdir()))


@pytest.mark.parametrize("attack", sorted(HOSTILE_SHARDS))
def test_readers_never_traceback(attack, tmp_path):
    """inspect, show and grid read without the full checks: they may succeed, but a problem in what they
    read is one line and exit 2."""
    build, _ = HOSTILE_SHARDS[attack]
    root = build(tmp_path / "ds")
    for args in (["inspect", root], ["show", root, "k1"], ["grid", root, tmp_path / "g.png"]):
        r = run(*args)
        assert r.exit_code in (0, 2), (args, r.output)
        assert "Traceback" not in r.output
        if r.exit_code == 2:
            assert_one_line_error(r)


@pytest.mark.parametrize("attack", ["huge member", "symlink", "dotdot name", "not a tar", "deep json",
                                    "json not utf-8", "bad cls", "invalid record", "key twice in a shard",
                                    "attributes not an object", "flipped class name", "swapped classes"])
def test_structural_attacks_fail_every_reader(attack, tmp_path):
    build, text = HOSTILE_SHARDS[attack]
    root = build(tmp_path / "ds")
    for args in (["inspect", root], ["show", root, "nope"], ["grid", root, tmp_path / "g.png"]):
        assert_one_line_error(run(*args), "shard-000000.tar")
    assert not (tmp_path / "g.png").exists()
    with pytest.raises(DatasetError, match="shard-000000.tar"):
        list(Dataset(root))


def test_flipped_bit_in_json_is_caught_and_never_laundered(tmp_path):
    root = flipped_json(tmp_path / "ds")
    assert_verify_finds(root, "shard-000000.tar: sha256 mismatch")
    outs = tmp_path / "outs"
    outs.mkdir()
    assert_one_line_error(run("ingest", root, outs / "re"), "sha256 mismatch")
    assert_one_line_error(run("dedup", root, "--out", outs / "dd"), "shard-000000.tar")
    assert list(outs.iterdir()) == []
    rehash(root)  # the index now agrees with the flipped bytes: the record itself is checked
    assert_verify_finds(root, "class_name '`' is not class 0")
    assert_one_line_error(run("ingest", root, outs / "re"), "class_name")
    assert list(outs.iterdir()) == []


def test_skip_bad_reshard_keeps_only_good_samples(tmp_path):
    """--skip-bad leaves out bad samples and shards, counts them, and the result verifies."""
    shards = [sample("k0") + sample("k1", 1, image=gif()) + sample("k2", 1),
              sample("k3") + sample("k2", 1),  # k2 again: a duplicate across shards
              sample("k4", 1)]
    root = make_dataset(tmp_path / "ds", shards)
    (root / "shard-000002.tar").write_bytes(b"x" * (root / "shard-000002.tar").stat().st_size)
    r = run("ingest", root, tmp_path / "out", "--skip-bad")
    assert r.exit_code == 0, r.output
    assert "wrote 3 samples" in r.output and "skipped 3" in r.output
    assert "sample 'k1': .png member holds GIF bytes" in r.output
    assert "sample 'k2' is also in shard-000000.tar" in r.output
    assert "shard-000002.tar: sha256 mismatch" in r.output
    assert sorted(s.key for s in Dataset(tmp_path / "out")) == ["k0", "k2", "k3"]
    assert verify(tmp_path / "out").ok


def test_duplicate_sample_is_not_resharded_twice(tmp_path):
    root = make_dataset(tmp_path / "ds", [sample("k0") + sample("k1", 1), sample("k1", 1)])
    r = run("ingest", root, tmp_path / "out")
    assert_one_line_error(r, "sample 'k1' is also in shard-000000.tar")
    assert not (tmp_path / "out").exists()


def test_pixel_limit_comes_from_the_environment(tmp_path, monkeypatch):
    root = make_dataset(tmp_path / "ds", [sample("k0", image=noise_png((40, 30)))])
    assert verify(root).ok
    monkeypatch.setenv("FACTORY_MAX_IMAGE_PIXELS", "1000")
    assert max_image_pixels() == 1000
    result = verify(root)
    assert result.problems == ["shard-000000.tar: sample 'k0': image of 40x30 pixels is over the limit of "
                               "1,000 pixels (raise FACTORY_MAX_IMAGE_PIXELS to allow it)"]
    with pytest.raises(FactoryError, match="sample 'k0': image of 40x30 pixels"):
        next(iter(Dataset(root))).pil()
    monkeypatch.setenv("FACTORY_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(FactoryError, match="FACTORY_MAX_IMAGE_PIXELS must be a positive integer"):
        max_image_pixels()


def test_member_limit_comes_from_the_environment(tmp_path, monkeypatch):
    root = make_dataset(tmp_path / "ds", [sample("k0", image=noise_png())])
    size = len(noise_png())
    monkeypatch.setenv("FACTORY_MAX_MEMBER_BYTES", str(size - 1))
    assert max_member_bytes() == size - 1
    with pytest.raises(DatasetError, match=f"member 'k0.png' declares {size:,} bytes, over the limit"):
        list(iter_shard_file(root / "shard-000000.tar"))
    monkeypatch.setenv("FACTORY_MAX_MEMBER_BYTES", "0")
    assert_one_line_error(run("inspect", root), "FACTORY_MAX_MEMBER_BYTES must be a positive integer")


def test_huge_member_is_refused_before_it_is_read(tmp_path):
    """A 28 KB shard declaring a 6 GiB member (or a pax header declaring 6 GiB, which tarfile itself
    would read whole): the error comes from the header, and the reader allocates almost nothing."""
    import tracemalloc

    root = make_dataset(tmp_path / "ds", [huge_member_tar()], samples=[1])
    pax = tarfile.TarInfo("././@PaxHeader")
    pax.type, pax.size = tarfile.XHDTYPE, GIB6
    root2 = make_dataset(tmp_path / "ds2", [pax.tobuf(tarfile.GNU_FORMAT) + b"\0" * 28_000], samples=[1])
    for ds in (root, root2):
        tracemalloc.start()
        try:
            with pytest.raises(DatasetError, match="declares 6,442,450,944 bytes, over the limit"):
                list(Dataset(ds))
            with pytest.raises(DatasetError, match="declares 6,442,450,944 bytes"):
                list(Dataset(ds).iter_checked())
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 5 << 20


@pytest.mark.slow
def test_huge_member_memory_in_a_subprocess(tmp_path):
    """The same through the command line, measured as the peak RSS of a real process."""
    root = make_dataset(tmp_path / "ds", [huge_member_tar()], samples=[1])
    script = textwrap.dedent("""
        import resource, sys
        from click.testing import CliRunner
        from factory.cli.main import cli
        import factory.data.ingest, factory.data.inspection  # imports are not the command's memory
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        codes = [CliRunner().invoke(cli, args).exit_code for args in (
            ["verify", sys.argv[1]], ["inspect", sys.argv[1]], ["ingest", sys.argv[1], sys.argv[2]])]
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(codes, (after - before) // 1024)
    """)
    p = subprocess.run([sys.executable, "-c", script, str(root), str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    codes, grown_mb = p.stdout.split("]")
    assert codes == "[1, 2, 2" and int(grown_mb) < 200, p.stdout


@pytest.mark.slow
def test_hostile_shard_as_a_real_subprocess(tmp_path):
    root = HOSTILE_SHARDS["not a tar"][0](tmp_path / "ds")
    exe = [sys.executable, "-m", "factory.cli.main"]
    p = subprocess.run([*exe, "verify", root], capture_output=True, text=True, timeout=300)
    assert p.returncode == 1 and "shard-000000.tar: unreadable tar" in p.stdout and "Traceback" not in p.stderr
    for args in (["ingest", root, tmp_path / "out"],):
        p = subprocess.run([*exe, *map(str, args)], capture_output=True, text=True, timeout=300)
        assert p.returncode == 2 and p.stderr.count("\n") == 1 and p.stderr.startswith("Error: ")
        assert "shard-000000.tar" in p.stderr
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- hostile indexes


def _index(**changes) -> bytes:
    base = {"schema": "factory.dataset/1", "name": "t", "classes": ["a"], "samples": 0, "shards": []}
    base.update(changes)
    return json.dumps(base).encode()


def _entry(name="shard-000000.tar", samples=1, sha256="0" * 64, size=10) -> dict:
    return {"name": name, "samples": samples, "sha256": sha256, "bytes": size}


HOSTILE_INDEXES = {
    "dotdot shard": (_index(samples=1, shards=[_entry("../other/shard-000000.tar")]),
                     "'../other/shard-000000.tar' is not a plain .tar file name"),
    "absolute shard": (_index(samples=1, shards=[_entry("/etc/passwd.tar")]), "'/etc/passwd.tar' is not a plain"),
    "hidden shard": (_index(samples=1, shards=[_entry(".shard-000000.tar")]), "is not a plain"),
    "dot shard": (_index(samples=1, shards=[_entry("..")]), "'..' is not a plain"),
    "shard listed twice": (_index(samples=2, shards=[_entry(), _entry()]), "shard shard-000000.tar is listed twice"),
    "float samples": (b'{"schema": "factory.dataset/1", "name": "t", "classes": ["a"], "samples": 1e400, '
                      b'"shards": []}', "samples must be an integer >= 0; got inf"),
    "huge int": (b'{"schema": "factory.dataset/1", "name": "t", "classes": ["a"], "samples": 1' + b"0" * 400
                 + b', "shards": []}', "samples is 1000"),
    "int too long": (b'{"schema": "factory.dataset/1", "name": "t", "classes": ["a"], "samples": 1' + b"0" * 5000
                     + b', "shards": []}', "not valid JSON"),
    "deep nesting": (b'{"schema": "factory.dataset/1", "meta": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
                     "not valid JSON (nested deeper"),
    "moderate nesting": (_index(meta={"x": json.loads("[" * 200 + "]" * 200)}), "nested deeper than 64"),
    "not utf-8": (b'{"schema": "factory.dataset/1", "name": "\xff\xfe"}', "not UTF-8 text"),
    "not an object": (b"[1, 2, 3]", "not a JSON object"),
    "wrong schema": (_index(schema="factory.dataset/2"), "schema is not 'factory.dataset/1'"),
    "missing shards": (json.dumps({"schema": "factory.dataset/1", "name": "t", "classes": ["a"],
                                   "samples": 0}).encode(), "missing field 'shards'"),
    "classes not a list": (_index(classes="ab"), "classes must be a non-empty list of strings"),
    "no classes": (_index(classes=[]), "classes must be a non-empty list"),
    "class not a string": (_index(classes=["a", 1]), "classes must be a non-empty list of strings"),
    "duplicated classes": (_index(classes=["a", "b", "a"]), "class 'a' is listed twice"),
    "samples a string": (_index(samples="3"), "samples must be an integer >= 0; got '3'"),
    "samples a bool": (_index(samples=True), "samples must be an integer"),
    "negative samples": (_index(samples=-1), "samples must be an integer >= 0"),
    "shards not a list": (_index(shards={"name": "x"}), "shards must be a list"),
    "shard not an object": (_index(shards=["shard-000000.tar"]), "shards[0] must be an object"),
    "sha256 wrong type": (_index(samples=1, shards=[_entry(sha256=7)]), "sha256 must be 64 lowercase hex"),
    "bytes wrong type": (_index(samples=1, shards=[_entry(size="10")]), "samples and bytes must be integers"),
    "samples do not add up": (_index(samples=5, shards=[_entry(samples=2)]), "samples is 5, but the shards hold 2"),
    "counts wrong type": (_index(counts={"a": "0"}), "counts must map class names to integers"),
    "counts unknown class": (_index(counts={"z": 0}), "counts name 'z'"),
    "meta not a dict": (_index(meta=[1]), "meta must be an object"),
    "name wrong type": (_index(name=["t"]), "name must be a non-empty string"),
}


@pytest.mark.parametrize("attack", sorted(HOSTILE_INDEXES))
def test_hostile_index_is_one_line_everywhere(attack, tmp_path):
    raw, text = HOSTILE_INDEXES[attack]
    root = tmp_path / "ds"
    root.mkdir()
    (root / "index.json").write_bytes(raw)
    with pytest.raises(DatasetError, match="index.json") as info:
        Dataset(root)
    assert text in str(info.value) and "\n" not in str(info.value)
    r = run("verify", root)
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert "1 problem(s)" in r.output and text in r.output
    outs = tmp_path / "outs"
    outs.mkdir()
    for args in (["inspect", root], ["show", root, "k0"], ["grid", root, outs / "g.png"],
                 ["ingest", root, outs / "re"], ["dedup", root, "--out", outs / "dd"],
                 ["split", root, outs / "tr", outs / "te", "--test-fraction", "0.5"]):
        assert_one_line_error(run(*args), "index.json")
    assert list(outs.iterdir()) == []


def test_index_larger_than_the_limit(tmp_path, monkeypatch):
    root = make_dataset(tmp_path / "ds", good_shards())
    monkeypatch.setenv("FACTORY_MAX_MEMBER_BYTES", "100")
    with pytest.raises(DatasetError, match="index.json: larger than the limit of 100 bytes"):
        Dataset(root)


def test_shard_names_stay_inside_the_folder(tmp_path):
    """A shard outside the folder is never opened, even when its bytes match the index."""
    outside = make_dataset(tmp_path / "other", good_shards())
    root = tmp_path / "ds"
    root.mkdir()
    index = json.loads((outside / "index.json").read_text())
    index["shards"][0]["name"] = "../other/shard-000000.tar"
    index["shards"][1]["name"] = str(outside / "shard-000001.tar")
    (root / "index.json").write_text(json.dumps(index))
    result = verify(root)
    assert not result.ok and len(result.problems) == 1 and "is not a plain .tar file name" in result.problems[0]
    for name in ["shard-000000.tar", "shard-1.tar", "a_b-c.d.tar"]:
        assert is_shard_name(name)
    for name in ["../x.tar", "/x.tar", "x/y.tar", ".x.tar", "..", ".", "x.tar/", "x.TAR", "x", "", None, 3,
                 "x\\y.tar", "x\n.tar"]:
        assert not is_shard_name(name)


# ---------------------------------------------------------------- valid data stays valid, grid bounds


def test_real_datasets_pass_every_check(digits, tmp_path):
    ds = Dataset(digits)
    seen = []
    assert sum(1 for _ in ds.iter_checked(skip_bad=True, on_bad=seen.append)) == 1797 and seen == []
    r = run("ingest", digits, tmp_path / "re", "--shard-size", 500)
    assert r.exit_code == 0 and "wrote 1797 samples" in r.output
    for name in ["shard-000000.tar", "shard-000003.tar"]:  # the checks change no byte of what is copied
        assert (tmp_path / "re" / name).read_bytes() == (digits / name).read_bytes()


def test_webdataset_still_reads_our_shards(digits):
    import webdataset as wds

    rows = list(wds.WebDataset(Dataset(digits).urls()[:1], shardshuffle=False))
    assert len(rows) == 500 and {"png", "cls", "json", "__key__"} <= set(rows[0])


def test_grid_cell_and_sheet_are_bounded(digits, tmp_path):
    r = run("grid", digits, tmp_path / "g.png", "--cell", 100000)
    assert r.exit_code == 2 and "Traceback" not in r.output and "--cell" in r.stderr
    r = run("grid", digits, tmp_path / "g.png", "--per-class", 10**6)
    assert_one_line_error(r, "lower --per-class or --cell")
    assert not (tmp_path / "g.png").exists()
    from factory.data.inspection import grid

    with pytest.raises(FactoryError, match="--cell must be between 8 and 1024"):
        grid(digits, tmp_path / "g.png", cell=4096)


def test_verify_reports_a_broken_index_beside_a_good_dataset(digits, tmp_path):
    """verify of several datasets: a broken one is reported, the good one still says OK."""
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "index.json").write_bytes(HOSTILE_INDEXES["deep nesting"][0])
    r = run("verify", bad, digits)
    assert r.exit_code == 1 and f"OK   {digits}" in r.output and "BAD" in r.output
    copy = tmp_path / "copy"
    shutil.copytree(digits, copy)
    os.remove(copy / "shard-000001.tar")
    r = run("verify", copy)
    assert r.exit_code == 1 and "shard-000001.tar: missing" in r.output


def test_training_loader_reads_through_the_checked_iterator(tmp_path):
    """The pool loader (training) refuses a huge member from its header, and a bomb within the pixel limit."""
    from factory.data.loader import PoolStream
    from factory.data.pools import Component, PoolSpec, build_pool

    root = make_dataset(tmp_path / "ds", [sample("k0") + sample("k1", 1)])
    pool = build_pool(PoolSpec("p", (Component(str(root), count=2),), 0))
    assert len(list(PoolStream(pool, shuffle_buffer=0))) == 2
    (root / "shard-000000.tar").write_bytes(huge_member_tar())  # swapped after the pool was drawn
    with pytest.raises(DatasetError, match="member 'k0.png' declares 6,442,450,944 bytes"):
        list(PoolStream(pool, shuffle_buffer=0))
    (root / "shard-000000.tar").write_bytes(tar_of(sample("k0", image=bomb_png(9000, 9000)) + sample("k1", 1)))
    with pytest.raises(DatasetError, match="sample 'k0': image of 9000x9000 pixels is over the limit"):
        list(PoolStream(pool, shuffle_buffer=0))


def test_fifo_shard_never_blocks_a_reader(tmp_path):
    """A FIFO named like a shard would block every reader forever: it is refused before it is opened."""
    root = make_dataset(tmp_path / "ds", good_shards())
    (root / "shard-000000.tar").unlink()
    os.mkfifo(root / "shard-000000.tar")
    r = verify(root)
    assert not r.ok and any("not a regular file" in p for p in r.problems)
    for args in (["show", str(root), "k2"], ["inspect", str(root)], ["grid", str(root), str(tmp_path / "g.png")],
                 ["ingest", str(root), str(tmp_path / "out")]):
        res = CliRunner().invoke(cli, args)
        assert res.exit_code == 2, (args, res.output)
        assert "not a regular file" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_nan_in_index_meta_is_refused(tmp_path):
    root = make_dataset(tmp_path / "ds", good_shards())
    text = (root / "index.json").read_text()
    (root / "index.json").write_text(text[:-1] + ', "meta": {"x": Infinity}}')
    res = CliRunner().invoke(cli, ["ingest", str(root), str(tmp_path / "out")])
    assert res.exit_code == 2 and "Infinity is not JSON" in res.stderr
    assert not (tmp_path / "out").exists()


def test_bad_limit_in_the_environment_is_one_line(digits, monkeypatch):
    monkeypatch.setenv("FACTORY_MAX_IMAGE_PIXELS", "0")
    res = CliRunner().invoke(cli, ["verify", str(digits)])
    assert res.exit_code == 2
    assert res.stderr.strip() == "Error: FACTORY_MAX_IMAGE_PIXELS must be a positive integer; got '0'"
