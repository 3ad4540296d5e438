import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from factory.cli.main import cli
from factory.core.shards import Dataset


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def inet(imagenette, tmp_path_factory):
    out = tmp_path_factory.mktemp("inet") / "inet"
    r = run("ingest", imagenette / "train", out, "--shard-size", 400)
    assert r.exit_code == 0, r.output
    assert "wrote 2000 samples in 5 shards (10 classes)" in r.output
    return out


def test_help_lists_every_command():
    r = run("--help")
    for cmd in ["ingest", "split", "verify", "inspect", "show", "grid", "generate", "curate", "pool",
                "train-classifier", "train-contrastive", "evaluate", "report"]:
        assert cmd in r.output


def test_verify_ok_and_every_byte_flip_is_caught(inet, tmp_path):
    r = run("verify", inet)
    assert r.exit_code == 0 and "OK" in r.output and "2000 samples" in r.output
    shards = sorted(inet.glob("shard-*.tar"))
    for i, shard in enumerate(shards):
        copy = tmp_path / f"copy{i}"
        shutil.copytree(inet, copy)
        target = copy / shard.name
        data = bytearray(target.read_bytes())
        pos = (len(data) * (i + 1)) // (len(shards) + 1)  # a different place inside each shard
        data[pos] ^= 0x01
        target.write_bytes(bytes(data))
        before = {p.name: p.read_bytes() for p in copy.iterdir()}
        r = run("verify", copy)
        assert r.exit_code == 1
        assert f"{shard.name}: sha256 mismatch" in r.output
        assert sum(name in r.output for name in (s.name for s in shards)) == 1
        assert {p.name: p.read_bytes() for p in copy.iterdir()} == before  # modifies nothing


def test_verify_reports_missing_truncated_and_extra_shards(digits, tmp_path):
    copy = tmp_path / "d"
    shutil.copytree(digits, copy)
    (copy / "shard-000001.tar").unlink()
    data = (copy / "shard-000002.tar").read_bytes()
    (copy / "shard-000002.tar").write_bytes(data[: len(data) // 2])
    shutil.copy(copy / "shard-000000.tar", copy / "shard-000099.tar")
    r = run("verify", copy, digits)
    assert r.exit_code == 1
    assert "shard-000001.tar: missing" in r.output
    assert "shard-000002.tar: size" in r.output
    assert "shard-000099.tar: not listed" in r.output
    assert f"OK   {digits}" in r.output
    r = run("verify", "--json", copy)
    report = json.loads(r.output)
    assert report[0]["ok"] is False and len(report[0]["problems"]) == 3


def test_verify_catches_corrupt_image_with_matching_index(tmp_path):
    """A shard re-hashed after corruption (index agrees) still fails: images are decoded."""
    import io

    from factory.core.sample import Sample, real_sample
    from factory.core.shards import DatasetWriter

    buf = io.BytesIO()
    Image.new("L", (8, 8), 3).save(buf, format="PNG")
    good = real_sample("k0", buf.getvalue(), 0, "a", {"dataset": "t"})
    broken = buf.getvalue()[:30]
    rec = dict(good.provenance, key="k1", sha256=__import__("hashlib").sha256(broken).hexdigest())
    with DatasetWriter(tmp_path / "d", "t", ["a"]) as w:
        w.write(good)
        w._buffer.append(Sample("k1", broken, 0, rec, "png"))
    r = run("verify", tmp_path / "d")
    assert r.exit_code == 1 and "shard-000000.tar: sample 'k1': image does not decode" in r.output


def test_inspect_text_and_json(inet):
    r = run("inspect", "--json", inet)
    info = json.loads(r.output)
    assert info["samples"] == 2000 and info["shards"] == 5
    assert info["classes"] == {c: 200 for c in Dataset(inet).classes}
    assert info["sources"] == {"real": 2000} and info["generations"] == {"0": 2000}
    assert info["image_sizes"] == {"224x224": 2000}
    assert info["bytes"] == sum(p.stat().st_size for p in inet.glob("*.tar"))
    text = run("inspect", inet).output
    assert "2000 in 5 shards" in text and "n01440764  200" in text


def test_show_and_grid(inet, tmp_path, imagenette):
    key = next(iter(Dataset(inet))).key
    r = run("show", inet, key)
    rec = json.loads(r.output)
    assert r.exit_code == 0 and rec["key"] == key and rec["schema"] == "factory.sample/1"
    r = run("grid", inet, tmp_path / "g.png", "--per-class", 3, "--cell", 32)
    assert r.exit_code == 0
    with Image.open(tmp_path / "g.png") as im:
        assert im.height == 10 * (32 + 4) + 4  # one row per class


def test_split_command(digits, tmp_path):
    r = run("split", digits, tmp_path / "tr", tmp_path / "te", "--test-fraction", "0.2", "--seed", "1")
    assert r.exit_code == 0 and "train: 1438" in r.output and "test: 359" in r.output


@pytest.mark.parametrize("args, culprit", [
    (["inspect", "{tmp}/missing"], "missing: no such dataset directory"),
    (["inspect", "{tmp}"], "not a factory dataset"),
    (["verify", "{digits}", "{tmp}/missing"], "missing: no such dataset directory"),
    (["show", "{digits}", "no-such-key"], "no sample with key 'no-such-key'"),
    (["ingest", "ftp:x", "{tmp}/o"], "unknown source scheme 'ftp'"),
    (["ingest", "{tmp}/nothere", "{tmp}/o"], "nothere: no such file or folder"),
    (["ingest", "sklearn:digits", "{digits}"], "already exists"),
    (["grid", "{digits}", "{tmp}/g.jpg"], "must be a .png"),
    (["split", "{digits}", "{tmp}/a", "{tmp}/b", "--test-fraction", "1.5"], "test fraction"),
])
def test_bad_input_exits_2_with_one_line(args, culprit, digits, tmp_path):
    args = [a.format(tmp=tmp_path, digits=digits) for a in args]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and culprit in lines[0] and lines[0].startswith("Error: ")
    assert "Traceback" not in r.output


def test_real_subprocess(digits, tmp_path):
    exe = Path(sys.executable).parent / "factory"
    env = dict(os.environ)
    p = subprocess.run([exe, "inspect", "--json", digits], capture_output=True, text=True, env=env)
    assert p.returncode == 0 and json.loads(p.stdout)["samples"] == 1797
    assert p.stderr == ""  # quiet when not on a terminal
    p = subprocess.run([exe, "show", digits, "nope"], capture_output=True, text=True, env=env)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "nope" in p.stderr
    p = subprocess.run([exe, "ingest", "sklearn:digits", tmp_path / "d", "--shard-size", "900"],
                       capture_output=True, text=True, env=env)
    assert p.returncode == 0 and "1797 samples in 2 shards" in p.stdout
    p = subprocess.run([exe, "verify", tmp_path / "d"], capture_output=True, text=True)
    assert p.returncode == 0


def test_grid_captions_each_cell_with_its_reason(digits, tmp_path):
    """``grid --caption reason``: each cell's reason and number under it (a kept one: its CLIP score), in cells
    of at least CAPTION_MIN_CELL px; the caption band's pixels change with the text, the images' do not."""
    from factory.core.sample import with_updates
    from factory.core.shards import DatasetWriter
    from factory.data.inspection import CAPTION_BAND, CAPTION_MIN_CELL, caption_lines

    rule = {"min_score": 0.63, "min_margin": 0.05}
    decisions = [({"clip": 0.41, "clip_margin": 0.2},
                  {"kept": False, "reason": "low_clip_score", **rule, "evidence": {"clip": 0.41, "threshold": 0.63}}),
                 ({"clip": 0.7, "clip_margin": 0.01}, {"kept": False, "reason": "low_clip_margin", **rule,
                                                       "evidence": {"clip_margin": 0.01, "threshold": 0.05}}),
                 ({"clip": 0.8, "clip_margin": 0.3}, {"kept": False, "reason": "leak", **rule, "evidence": {
                     "matched_key": "t-1", "matched_dataset": "data/real/test", "distance": 2, "method": "hash"}}),
                 ({"clip": 0.9, "clip_margin": 0.4}, {"kept": True, "reason": None, **rule})]
    src = Dataset(digits)
    zeros = [s for s in src if s.label == 0][:len(decisions)]
    with DatasetWriter(tmp_path / "rej", "rej", src.classes, shard_size=8) as w:
        for s, (scores, decision) in zip(zeros, decisions):
            w.write(with_updates(s, scores=scores, decision=decision))
    records = [s.provenance for s in Dataset(tmp_path / "rej")]
    assert [caption_lines(r, "reason") for r in records] == [
        ["low_clip_score", "0.41<0.63"], ["low_clip_margin", "0.01<0.05"], ["leak", "d=2"], ["clip 0.90"]]
    assert [caption_lines(r, "clip") for r in records] == [["clip 0.41"], ["clip 0.70"], ["clip 0.80"], ["clip 0.90"]]
    sheets = {}
    for mode in ("reason", "clip", "none"):
        r = run("grid", tmp_path / "rej", tmp_path / f"{mode}.png", "--per-class", 4, "--caption", mode)
        assert r.exit_code == 0, r.output
        sheets[mode] = Image.open(tmp_path / f"{mode}.png").convert("RGB")
    cell, pad = CAPTION_MIN_CELL, 4  # the default 64 px cell grows to fit the captions
    assert sheets["reason"].height == 10 * (cell + CAPTION_BAND + pad) + pad == sheets["clip"].height
    assert sheets["none"].height == 10 * (64 + pad) + pad
    assert sheets["reason"].width == sheets["clip"].width == sheets["none"].width + 4 * (cell - 64)
    width = sheets["reason"].width
    images, band = (0, pad, width, pad + cell), (0, pad + cell, width, pad + cell + CAPTION_BAND)
    assert sheets["reason"].crop(images).tobytes() == sheets["clip"].crop(images).tobytes()
    assert sheets["reason"].crop(band).tobytes() != sheets["clip"].crop(band).tobytes()
    assert min(sheets["reason"].crop(band).convert("L").getdata()) < 128  # text, not a blank band
    r = run("grid", tmp_path / "rej", tmp_path / "x.png", "--caption", "score")
    assert r.exit_code == 2 and "--caption" in r.stderr
