"""The one model-folder format (factory.core.modelfolder): round trip, atomic replace, refusals, clear errors."""

import json
import os

import pytest
import torch
from torch import nn

from factory.core.errors import FactoryError
from factory.core.files import staging_dir
from factory.core.modelfolder import ModelFolder, json_bytes

KIND = ModelFolder(kind="tiny model", schema="factory.tiny/1", weights="tiny.safetensors", config="tiny.json",
                   files=("extra.json",), keys=("width",), metadata={"format": "pt"}, short="tiny",
                   hint="train it first")
PLAIN = ModelFolder(kind="plain model", schema="factory.plain/1", weights="w.safetensors", config="c.json")


def tiny(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))


def save(out, seed: int = 0, width: int = 4) -> nn.Module:
    model = tiny(seed)
    KIND.save(out, model, {"schema": KIND.schema, "width": width, "b": [1, 2]},
              files={"extra.json": json_bytes({"z": 1, "a": 2}, indent=1, sort_keys=False)})
    return model


def test_round_trip_and_bytes(tmp_path):
    model = save(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["extra.json", "tiny.json", "tiny.safetensors"]
    assert (tmp_path / "m" / "tiny.json").read_bytes() == b'{\n  "b": [\n    1,\n    2\n  ],\n  "schema": ' \
        b'"factory.tiny/1",\n  "width": 4\n}\n'
    assert (tmp_path / "m" / "extra.json").read_bytes() == b'{\n "z": 1,\n "a": 2\n}\n'
    assert oct(os.stat(tmp_path / "m" / "tiny.safetensors").st_mode & 0o777) == "0o644"
    config = KIND.read(tmp_path / "m")
    assert config == {"schema": KIND.schema, "width": 4, "b": [1, 2]}
    again = tiny(1)
    KIND.load_into(again, tmp_path / "m")
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in model.state_dict().items())
    # deterministic bytes; the single metadata key is there
    first = (tmp_path / "m" / "tiny.safetensors").read_bytes()
    save(tmp_path / "m")
    assert (tmp_path / "m" / "tiny.safetensors").read_bytes() == first
    header = json.loads(first[8:8 + int.from_bytes(first[:8], "little")])
    assert header["__metadata__"] == {"format": "pt"}
    PLAIN.save(tmp_path / "p", model, {"schema": PLAIN.schema})
    raw = (tmp_path / "p" / "w.safetensors").read_bytes()
    assert "__metadata__" not in json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])


def test_replace_is_atomic_and_a_failure_keeps_the_old_folder(tmp_path, monkeypatch):
    out = tmp_path / "m"
    save(out, width=1)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    save(out, seed=3, width=2)  # a second save replaces the folder whole
    assert KIND.read(out)["width"] == 2

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    before = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setattr(KIND.__class__, "write_config", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        save(out, seed=5, width=9)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not staging_dir(out).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_an_incomplete_folder_is_never_moved_into_place(tmp_path):
    out = tmp_path / "m"
    with pytest.raises(FactoryError, match="extra.json was not written"):
        with KIND.staging(out) as folder:
            KIND.write_weights(folder, tiny())
            KIND.write_config(folder, {"schema": KIND.schema, "width": 1})
    assert not out.exists() and not staging_dir(out).exists()
    with pytest.raises(ValueError, match="schema must be"):
        PLAIN.save(out, tiny(), {"schema": "other"})
    assert not out.exists()


def test_refuses_to_replace_what_is_not_a_model_folder(tmp_path):
    other = tmp_path / "data"
    other.mkdir()
    (other / "keep.txt").write_text("precious")
    with pytest.raises(FactoryError, match=r"data: exists, is not empty and is not a tiny folder; refusing"):
        save(other)
    assert (other / "keep.txt").read_text() == "precious"
    (tmp_path / "file").write_text("x")
    with pytest.raises(FactoryError, match="exists and is not a directory"):
        save(tmp_path / "file")
    (tmp_path / "empty").mkdir()
    save(tmp_path / "empty")  # an empty folder is fine
    assert KIND.read(tmp_path / "empty")["width"] == 4


def one_line(exc_info) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg
    return msg


def test_corrupt_or_missing_files_give_one_clear_line(tmp_path):
    out = tmp_path / "m"
    with pytest.raises(FactoryError, match="no such tiny folder") as e:
        KIND.read(out)
    assert one_line(e).endswith("(train it first)")
    save(out)
    (out / "extra.json").unlink()
    with pytest.raises(FactoryError) as e:
        KIND.read(out)
    assert one_line(e) == f"{out / 'extra.json'}: missing; {out} is not a complete tiny model folder"

    save(out)
    (out / "tiny.json").write_text("{not json")
    with pytest.raises(FactoryError, match=r"tiny.json: not valid JSON") as e:
        KIND.read(out)
    one_line(e)
    for bad, what in (({"schema": "x", "width": 1}, "schema is not 'factory.tiny/1'"),
                      ([1, 2], "schema is not"), ({"schema": KIND.schema}, "missing field\\(s\\) width")):
        (out / "tiny.json").write_text(json.dumps(bad))
        with pytest.raises(FactoryError, match=f"tiny.json: {what}") as e:
            KIND.read(out)
        one_line(e)

    save(out)
    (out / "tiny.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(FactoryError, match="tiny.safetensors: unreadable weights") as e:
        KIND.load_into(tiny(), out)
    one_line(e)
    save(out)
    with pytest.raises(FactoryError, match=r"tiny.safetensors: weights do not match .*tiny.json") as e:
        KIND.load_into(nn.Linear(3, 4), out)
    one_line(e)


def test_every_kind_keeps_its_file_names():
    from factory.curate.scorers.embedded import MODEL_FOLDER as SCORER
    from factory.generate.backends.embedded import MODEL_FOLDER as GENERATOR
    from factory.measure.recognition import CLASSIFIER_FOLDER
    from factory.train.contrastive import ENCODER_FOLDER

    assert (GENERATOR.weights, GENERATOR.config, GENERATOR.metadata) == ("model.safetensors", "config.json",
                                                                          {"format": "pt"})
    assert (SCORER.weights, SCORER.config, SCORER.files, SCORER.metadata) == (
        "model.safetensors", "scorer.json", ("vocab.json",), {"format": "pt"})
    assert (CLASSIFIER_FOLDER.weights, CLASSIFIER_FOLDER.config, CLASSIFIER_FOLDER.metadata) == (
        "classifier.safetensors", "classifier.json", None)
    assert (ENCODER_FOLDER.weights, ENCODER_FOLDER.config, ENCODER_FOLDER.metadata) == (
        "encoder.safetensors", "encoder.json", None)
    with pytest.raises(ValueError, match="at most one"):
        ModelFolder("x", "s", "w", "c", metadata={"a": "1", "b": "2"})
