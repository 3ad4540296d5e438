"""Issue 10: keys are unique by construction (ImageFolder keys, the writer's check), and an ImageFolder's
unreadable files and folders are one-line errors or counted skips with --skip-bad, never silently lost."""

import hashlib
import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from factory.cli.main import cli
from factory.core.errors import FactoryError
from factory.core.shards import Dataset
from factory.data.inspection import verify
from factory.data.sources import imagefolder_keys


def run(*args, **kw):
    return CliRunner().invoke(cli, [str(a) for a in args], prog_name="factory", **kw)


def one_error_line(r):
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in r.output, r.output
    return lines[0]


def h(rel: str) -> str:
    return hashlib.sha256(rel.encode()).hexdigest()[:10]


def folder(root: Path, rels) -> Path:
    for i, rel in enumerate(rels):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (8, 8), (37 * i) % 256).save(root / rel, format="PNG")
    return root


def test_ordinary_paths_keep_their_keys():
    rels = ["n01440764/n01440764_10026.JPEG", "n01440764/sub/x-1.png", "n02102040/ILSVRC2012_val_00001.JPEG"]
    assert imagefolder_keys(rels) == ["n01440764_n01440764_10026", "n01440764_sub_x-1",
                                      "n02102040_ILSVRC2012_val_00001"]


def test_colliding_and_lossy_paths_get_the_hash_of_their_path():
    rels = ["a/b_x.png", "a_b/x.png", "猫/1.png", "犬/1.png", "a/c.tar.png", "c/ok.png"]
    assert imagefolder_keys(rels) == [f"a_b_x-{h('a/b_x.png')}", f"a_b_x-{h('a_b/x.png')}",
                                      f"1-{h('猫/1.png')}", f"1-{h('犬/1.png')}", f"a_c_tar-{h('a/c.tar.png')}",
                                      "c_ok"]
    # the rule depends on the files, never on their order
    assert imagefolder_keys(rels[::-1]) == imagefolder_keys(rels)[::-1]


def test_a_hash_that_spells_another_files_key_fails_with_both_names():
    rels = ["a/b_x.png", "a_b/x.png"]
    taken = f"a_b_x-{h('a/b_x.png')}"
    with pytest.raises(FactoryError, match=r"a/b_x.png and a_b_x-.*: both would get the sample key"):
        imagefolder_keys([*rels, f"{taken}.png"])


@pytest.mark.parametrize("rels", [["a/b_x.png", "a_b/x.png"], ["猫/1.png", "犬/1.png"],
                                  ["a/x.png", "a/x.jpg"], ["a/x y.png", "a/x_y.png"]])
def test_colliding_folders_ingest_every_file_under_its_own_key(tmp_path, rels):
    src = folder(tmp_path / "src", rels)
    r = run("ingest", src, tmp_path / "ds")
    assert r.exit_code == 0 and f"wrote {len(rels)} samples" in r.output, r.output
    ds = Dataset(tmp_path / "ds")
    samples = list(ds)
    assert len({s.key for s in samples}) == len(rels) == len(samples)
    assert verify(tmp_path / "ds").ok
    for s in samples:  # every key maps back to its file
        path = s.provenance["origin"]["path"]
        assert (src / path).read_bytes() == s.image
        assert s.key in imagefolder_keys(rels)


def test_the_writer_refuses_a_second_sample_with_a_key(tmp_path, digits):
    from factory.core.shards import DatasetWriter

    s = next(iter(Dataset(digits)))
    with pytest.raises(FactoryError, match=rf"^sample '{s.key}': a second sample with this key; keys must be unique$"):
        with DatasetWriter(tmp_path / "o", "d", Dataset(digits).classes) as w:
            w.write(s)
            w.write(s)
    assert not (tmp_path / "o").exists()


def test_hf_keys_are_unique_by_row(tmp_path):
    import datasets

    from factory.data.ingest import ingest

    img = tmp_path / "x.png"
    Image.new("L", (8, 8)).save(img)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a"])})
    datasets.Dataset.from_dict({"image": [str(img)] * 3, "label": [0] * 3}, features=features).save_to_disk(
        tmp_path / "hfd")
    ingest(f"hf:{tmp_path / 'hfd'}", tmp_path / "out")
    assert [s.key for s in Dataset(tmp_path / "out")] == ["hfd-data-00000000", "hfd-data-00000001",
                                                           "hfd-data-00000002"]


# -- unreadable files and folders ------------------------------------------------------------------------

@pytest.fixture
def src(tmp_path):
    return folder(tmp_path / "src", ["a/1.png", "a/2.png", "a/deep/3.png", "b/1.png", "b/2.png"])


def test_a_file_that_cannot_be_read_is_an_error_or_a_counted_skip(src, tmp_path, monkeypatch):
    real = Path.read_bytes
    bad = src / "a" / "2.png"

    def read_bytes(self):
        if self == bad:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    line = one_error_line(run("ingest", src, tmp_path / "ds"))
    assert line == f"Error: {bad}: cannot read (Permission denied)"
    assert not (tmp_path / "ds").exists()
    r = run("ingest", src, tmp_path / "ds", "--skip-bad")
    assert r.exit_code == 0 and "wrote 4 samples" in r.output and "skipped 1 unreadable" in r.output
    assert f"skipped: {bad}" in r.output


def test_an_unreadable_subfolder_is_an_error_or_a_counted_skip(src, tmp_path, monkeypatch):
    real = os.scandir
    bad = src / "a" / "deep"

    def scandir(path="."):
        if isinstance(path, (str, os.PathLike)) and Path(path) == bad:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    line = one_error_line(run("ingest", src, tmp_path / "ds"))
    assert line == f"Error: {bad}: cannot list folder (Permission denied)"
    r = run("ingest", src, tmp_path / "ds", "--skip-bad")
    assert r.exit_code == 0 and "wrote 4 samples" in r.output and f"skipped: {bad} (unreadable folder)" in r.output


def test_a_file_over_the_size_limit_is_refused_before_reading(src, tmp_path, monkeypatch):
    big = src / "b" / "big.png"
    Image.new("L", (512, 512)).save(big, format="PNG", compress_level=0)
    monkeypatch.setenv("FACTORY_MAX_MEMBER_BYTES", str(100_000))
    line = one_error_line(run("ingest", src, tmp_path / "ds"))
    assert str(big) in line and "over the limit of 100,000 bytes" in line
    r = run("ingest", src, tmp_path / "ds", "--skip-bad")
    assert r.exit_code == 0 and "wrote 5 samples" in r.output and "skipped 1" in r.output


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads files whatever their mode")
def test_real_permissions(src, tmp_path):
    os.chmod(src / "a" / "2.png", 0)
    os.chmod(src / "a" / "deep", 0)
    try:
        line = one_error_line(run("ingest", src, tmp_path / "ds"))
        assert "Permission denied" in line
        r = run("ingest", src, tmp_path / "ds", "--skip-bad")
        assert r.exit_code == 0 and "wrote 3 samples" in r.output and "skipped 2" in r.output
    finally:
        os.chmod(src / "a" / "deep", 0o755)
        os.chmod(src / "a" / "2.png", 0o644)


def test_fifo_and_broken_link_in_an_imagefolder_are_refused_or_counted(tmp_path):
    """Left out silently before: now an error naming the file, or a counted skip with --skip-bad."""
    import os

    from click.testing import CliRunner
    from PIL import Image

    from factory.cli.main import cli

    (tmp_path / "src" / "a").mkdir(parents=True)
    Image.new("L", (8, 8), 5).save(tmp_path / "src" / "a" / "good.png")
    os.mkfifo(tmp_path / "src" / "a" / "pipe.png")
    (tmp_path / "src" / "a" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    res = CliRunner().invoke(cli, ["ingest", str(tmp_path / "src"), str(tmp_path / "out")])
    assert res.exit_code == 2 and "not a regular file" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()
    res = CliRunner().invoke(cli, ["ingest", str(tmp_path / "src"), str(tmp_path / "out"), "--skip-bad"])
    assert res.exit_code == 0, res.output
    assert "wrote 1 sample in 1 shard" in res.output and "skipped 2 unreadable images" in res.output
