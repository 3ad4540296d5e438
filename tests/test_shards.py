import io
import json
import subprocess
import sys
import textwrap

import pytest
from PIL import Image

from factory.core.errors import DatasetError, FactoryError
from factory.core.files import file_sha256
from factory.core.sample import real_sample
from factory.core.shards import INDEX_NAME, Dataset, DatasetWriter


def make_samples(n, classes=("a", "b", "c")):
    for i in range(n):
        buf = io.BytesIO()
        Image.new("L", (8, 8), i % 256).save(buf, format="PNG")
        label = i % len(classes)
        yield real_sample(f"s-{i:04d}", buf.getvalue(), label, classes[label], {"dataset": "t", "index": i})


def write(path, n=25, shard_size=10, **kw):
    with DatasetWriter(path, "t", ["a", "b", "c"], shard_size=shard_size, **kw) as w:
        w.write_all(make_samples(n))
    return Dataset(path)


def test_round_trip_and_index(tmp_path):
    ds = write(tmp_path / "d")
    assert [s["samples"] for s in ds.shards] == [10, 10, 5]
    assert len(ds) == 25 and ds.classes == ["a", "b", "c"]
    for entry in ds.shards:
        p = tmp_path / "d" / entry["name"]
        assert entry["sha256"] == file_sha256(p) and entry["bytes"] == p.stat().st_size
    samples = list(ds)
    assert [s.key for s in samples] == [f"s-{i:04d}" for i in range(25)]
    assert samples[4].label == 1 and samples[4].provenance["class_name"] == "b"
    assert samples[4].pil().getpixel((0, 0)) == 4
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == [
        INDEX_NAME, "shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]


def test_same_input_gives_identical_bytes(tmp_path):
    write(tmp_path / "x")
    write(tmp_path / "y")
    for name in ["index.json", "shard-000000.tar", "shard-000002.tar"]:
        assert (tmp_path / "x" / name).read_bytes() == (tmp_path / "y" / name).read_bytes()


def test_plain_webdataset_reads_shards(tmp_path):
    import webdataset as wds

    ds = write(tmp_path / "d")
    rows = list(wds.WebDataset(ds.urls(), shardshuffle=False))
    assert len(rows) == 25
    assert rows[3]["__key__"] == "s-0003" and rows[3]["cls"] == b"0"
    assert json.loads(rows[3]["json"])["key"] == "s-0003"
    decoded = next(iter(wds.WebDataset(ds.urls(), shardshuffle=False).decode("pil")))
    assert decoded["png"].size == (8, 8)


def test_datasets_load_dataset_reads_shards(tmp_path):
    import datasets

    ds = write(tmp_path / "d")
    hf = datasets.load_dataset("webdataset", data_files={"train": ds.urls()}, split="train",
                               cache_dir=str(tmp_path / "cache"))
    assert hf.num_rows == 25
    assert sorted(hf["__key__"])[0] == "s-0000"
    row = hf[7]
    assert row["cls"] == 1 and row["json"]["class_name"] == "b"
    assert row["png"].size == (8, 8)


def test_exception_mid_write_leaves_nothing(tmp_path):
    def broken():
        yield from make_samples(15)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        with DatasetWriter(tmp_path / "d", "t", ["a", "b", "c"], shard_size=10) as w:
            w.write_all(broken())
    assert list(tmp_path.iterdir()) == []


def test_failed_overwrite_keeps_previous_dataset(tmp_path):
    write(tmp_path / "d", n=5)
    before = (tmp_path / "d" / INDEX_NAME).read_bytes()
    with pytest.raises(FactoryError, match="label"):
        with DatasetWriter(tmp_path / "d", "t", ["a"], shard_size=10, overwrite=True) as w:
            w.write_all(make_samples(3))
    assert (tmp_path / "d" / INDEX_NAME).read_bytes() == before
    assert len(Dataset(tmp_path / "d")) == 5


def test_refuses_to_overwrite_without_flag(tmp_path):
    write(tmp_path / "d", n=3)
    with pytest.raises(FactoryError, match="--overwrite"):
        DatasetWriter(tmp_path / "d", "t", ["a"])
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "precious.txt").write_text("keep me")
    with pytest.raises(FactoryError, match="not a factory dataset"):
        DatasetWriter(tmp_path / "other", "t", ["a"], overwrite=True)
    assert (tmp_path / "other" / "precious.txt").read_text() == "keep me"


def test_kill_during_write_leaves_no_final_shard_or_index(tmp_path):
    """SIGKILL a writer between shards and mid-shard: nothing appears under a final name."""
    script = textwrap.dedent(f"""
        import io, os, signal, sys
        from PIL import Image
        from factory.core.sample import real_sample
        from factory.core.shards import DatasetWriter
        def gen():
            for i in range(1000):
                if i == 25:
                    os.kill(os.getpid(), signal.SIGKILL)   # mid-shard, after 2 complete shards
                buf = io.BytesIO(); Image.new("L", (8, 8), i % 256).save(buf, format="PNG")
                yield real_sample(f"s-{{i}}", buf.getvalue(), 0, "a", {{"dataset": "t"}})
        with DatasetWriter({str(tmp_path / "d")!r}, "t", ["a"], shard_size=10) as w:
            w.write_all(gen())
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert proc.returncode == -9
    assert not (tmp_path / "d").exists()
    staging = tmp_path / ".d.partial"
    assert sorted(p.name for p in staging.iterdir()) == ["shard-000000.tar", "shard-000001.tar"]
    # A new run cleans the stale staging dir and completes.
    ds = write(tmp_path / "d", n=12)
    assert len(ds) == 12 and not staging.exists()


def test_dataset_errors_name_the_problem(tmp_path):
    with pytest.raises(DatasetError, match="no such dataset"):
        Dataset(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="not a factory dataset"):
        Dataset(tmp_path / "empty")
    (tmp_path / "empty" / INDEX_NAME).write_text("{broken")
    with pytest.raises(DatasetError, match="not valid JSON"):
        Dataset(tmp_path / "empty")
    ds = write(tmp_path / "d")
    (tmp_path / "d" / "shard-000001.tar").unlink()
    with pytest.raises(DatasetError, match="shard-000001.tar"):
        list(ds)
    with pytest.raises(FactoryError, match="no sample with key"):
        write(tmp_path / "e").find("nope")
