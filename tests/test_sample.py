import io

import pytest
from PIL import Image

from factory.core.errors import FactoryError
from factory.core.sample import (
    SAMPLE_SCHEMA,
    decode_image,
    image_ext,
    real_sample,
    sanitize_key,
    sha256_hex,
    synthetic_sample,
    validate_record,
    with_updates,
)


def png(color=128, size=(8, 8), mode="L") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="PNG")
    return buf.getvalue()


GEN = {"backend": "embedded", "model": "models/generator", "weights_sha256": "0" * 64, "scheduler": "ddim",
       "steps": 20, "guidance_scale": 2.0, "negative_guidance": None, "height": 16, "width": 16,
       "dtype": "float32"}


def test_real_record_has_contract_fields():
    data = png()
    s = real_sample("a-1", data, 3, "three", {"dataset": "x", "index": 7})
    rec = s.provenance
    assert rec["schema"] == SAMPLE_SCHEMA
    assert rec["sha256"] == sha256_hex(data)
    assert len(rec["phash"]) == 16 and int(rec["phash"], 16) >= 0
    assert rec["source"] == "real" and rec["generation"] == 0 and rec["parents"] == []
    assert rec["origin"] == {"dataset": "x", "index": 7}
    assert rec["created"].endswith("Z") and rec["factory_version"]
    assert s.ext == "png"


def test_synthetic_record_requires_generator_fields():
    s = synthetic_sample("g-1", png(), 1, "one", prompt={"text": "a one", "template": "a {class_name}",
                                                           "attributes": {"color": "red"}},
                         seed=5, generator=GEN, generation=1, parents=[{"id": "digits", "index_sha256": "ab"}],
                         group="g0")
    assert s.provenance["generator"]["guidance_scale"] == 2.0
    assert s.provenance["attributes"] == {"color": "red"}
    bad = dict(GEN)
    del bad["weights_sha256"]
    with pytest.raises(FactoryError, match="generator"):
        synthetic_sample("g-2", png(), 1, "one", prompt={"text": "t"}, seed=1, generator=bad, generation=1,
                         parents=[])


@pytest.mark.parametrize("mutate, match", [
    (lambda r: r.update(key="a.b"), "no dots"),
    (lambda r: r.update(schema="other/1"), "schema"),
    (lambda r: r.update(label=-1), "label"),
    (lambda r: r.update(sha256="xyz"), "sha256"),
    (lambda r: r.update(source="fake"), "source"),
    (lambda r: r.pop("origin"), "origin"),
    (lambda r: r.update(origin={"dataset": "x", "hf_token": "abc"}), "secret"),
    (lambda r: r.update(origin={"dataset": "hf_" + "a" * 30}), "token"),
])
def test_validation_rejects_bad_records(mutate, match):
    rec = dict(real_sample("k", png(), 0, "zero", {"dataset": "x"}).provenance)
    mutate(rec)
    with pytest.raises(FactoryError, match=match):
        validate_record(rec)


def test_with_updates_keeps_original_untouched():
    s = real_sample("k", png(), 0, "zero", {"dataset": "x"})
    t = with_updates(s, scores={"clip": 0.3})
    assert "scores" not in s.provenance and t.provenance["scores"] == {"clip": 0.3}


def test_sanitize_key_and_image_ext():
    assert sanitize_key("n0144/ILSVRC.val 1") == "n0144_ILSVRC_val_1"
    assert image_ext(png()) == "png"
    with pytest.raises(FactoryError, match="^not an image format PIL knows$"):  # not PIL's "<_io.BytesIO ...>"
        image_ext(b"not an image")
    with pytest.raises(FactoryError, match="^not an image format PIL knows$"):
        decode_image(b"not an image")
    with pytest.raises(FactoryError, match=r"^not a readable image \(.+\)$"):  # a PNG cut short: PIL's reason
        decode_image(png()[:20])


def test_created_honours_source_date_epoch(monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    assert real_sample("k", png(), 0, "z", {"dataset": "x"}).provenance["created"] == "2023-11-14T22:13:20Z"
