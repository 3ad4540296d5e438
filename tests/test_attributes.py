"""Attributes measured from pixels (colour, thickness, slant) and the realised-vs-requested report."""

import io

import pytest
from click.testing import CliRunner
from PIL import Image, ImageDraw

from factory.cli.main import cli
from factory.core.errors import FactoryError
from factory.core.sample import synthetic_sample
from factory.core.shards import DatasetWriter
from factory.curate.audit import UNMEASURED, audit, realised_attributes, realised_report
from factory.data.attributes import ALL, Levels, fit_levels, measure, stroke_colour, style_values
from factory.data.sources import PALETTE

GEN = {"backend": "embedded", "model": "m", "weights_sha256": "0" * 64, "scheduler": "ddim", "steps": 20,
       "guidance_scale": 2.0, "negative_guidance": None, "height": 16, "width": 16, "dtype": "float32"}
RED, BLUE, PURPLE = dict(PALETTE)["red"], dict(PALETTE)["blue"], dict(PALETTE)["purple"]


def stroke(width: float = 2, lean: float = 0.0, rgb=(255, 255, 255), size: int = 16) -> Image.Image:
    """A vertical bar ``width`` pixels wide; its top shifted ``lean`` pixels right of its bottom."""
    im = Image.new("RGB", (size * 4, size * 4))
    d = ImageDraw.Draw(im)
    top, bottom, cx = size * 4 * 0.15, size * 4 * 0.85, size * 2
    w = width * 4 / 2
    d.polygon([(cx + lean * 2 - w, top), (cx + lean * 2 + w, top), (cx - lean * 2 + w, bottom),
               (cx - lean * 2 - w, bottom)], fill=rgb)
    return im.resize((size, size), Image.Resampling.BOX)


def png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def test_thickness_is_the_stroke_width_in_pixels():
    thin, mid, thick = (style_values(stroke(w))["thickness"] for w in (1, 2, 4))
    assert thin < mid < thick
    assert thin == pytest.approx(1, abs=0.5) and thick == pytest.approx(4, abs=1.0)
    # the measure does not depend on the stroke's brightness or colour
    assert style_values(stroke(2, rgb=(90, 90, 90)))["thickness"] == pytest.approx(mid, rel=0.05)
    assert style_values(stroke(2, rgb=BLUE))["thickness"] == pytest.approx(mid, rel=0.1)


def test_slant_sign_follows_the_lean():
    right, upright, left = (style_values(stroke(2, lean))["slant"] for lean in (3, 0, -3))
    assert right > 0.2 and left < -0.2 and abs(upright) < 0.05
    assert right == pytest.approx(-left, rel=0.1)


@pytest.mark.parametrize("name,rgb", PALETTE)
def test_each_palette_colour_is_named(name, rgb):
    assert stroke_colour(stroke(2, rgb=rgb)) == name
    # a coloured digit as sklearn:digits-colored makes it (colour x intensity) at 8x8 too
    assert stroke_colour(stroke(2, rgb=tuple(int(c * 0.6) for c in rgb), size=8)) == name


def test_empty_and_grey_images_have_no_colour():
    empty = Image.new("RGB", (8, 8))
    assert stroke_colour(empty) is None and stroke_colour(stroke(2, rgb=(200, 200, 200))) is None
    assert style_values(empty) == {"thickness": 0.0, "slant": 0.0}
    levels = Levels.fit([{"thickness": t, "slant": 0.0} for t in (1, 2, 3)])
    assert measure(empty, ["color", "thickness"], levels) == {"color": None, "thickness": "thin"}


def test_levels_are_fit_per_class():
    # class "1" strokes are 1-3 px wide, class "8" strokes 3-5 px: each class's thirds are its own
    ones = [stroke(w) for w in (1, 1, 2, 2, 3, 3)]
    eights = [stroke(w) for w in (3, 3, 4, 4, 5, 5)]
    levels = fit_levels(ones + eights, ["thickness"], ["1"] * 6 + ["8"] * 6)
    assert set(levels.edges) == {ALL, "1", "8"} and levels.axes == ("thickness",)
    assert levels.edges["1"]["thickness"][1] < levels.edges["8"]["thickness"][0]
    thirds = ["thin"] * 2 + ["medium"] * 2 + ["thick"] * 2
    assert [measure(im, ["thickness"], levels, "1")["thickness"] for im in ones] == thirds
    assert [measure(im, ["thickness"], levels, "8")["thickness"] for im in eights] == thirds
    # a 3 px stroke is thick for a one and thin for an eight
    assert measure(ones[-1], ["thickness"], levels, "1")["thickness"] == "thick"
    assert measure(ones[-1], ["thickness"], levels, "8")["thickness"] == "thin"
    assert fit_levels(ones + eights, ["thickness"], ["1"] * 6 + ["8"] * 6) == levels  # deterministic
    assert Levels.from_dict(levels.to_dict()).to_dict() == levels.to_dict()
    with pytest.raises(FactoryError, match="needs style levels"):
        measure(ones[0], ["thickness"])


def write_synthetic(path, rows):
    """rows: (class_name, requested colour, image)."""
    with DatasetWriter(path, "syn", ["0", "1"], 100) as w:
        for i, (cls, color, im) in enumerate(rows):
            w.write(synthetic_sample(f"s{i:03d}", png(im), int(cls), cls,
                                     prompt={"text": f"a {color} digit {cls}", "template": "t",
                                             "attributes": {"color": color}},
                                     seed=i, generator=GEN, generation=1, parents=[]))


def test_realised_colour_is_counted_not_the_requested_one(tmp_path):
    # class 0 asked for red 4 times but two came out purple; class 1 asked for blue and got blue, plus
    # one empty image (no colour to see)
    rows = [("0", "red", stroke(2, rgb=RED))] * 2 + [("0", "red", stroke(2, rgb=PURPLE))] * 2 \
        + [("1", "blue", stroke(2, rgb=BLUE))] * 3 + [("1", "blue", Image.new("RGB", (16, 16)))]
    write_synthetic(tmp_path / "syn", rows)
    realised = realised_attributes(tmp_path / "syn", ["color"])
    report = realised_report(realised, ["color"])["color"]
    assert report["agreement"] == 5 / 8 and report["agree"] == 5 and report["requested"] == 8
    c0, c1 = report["per_class"]["0"], report["per_class"]["1"]
    assert c0["requested_counts"]["red"] == 4 and c0["realised_counts"]["red"] == 2
    assert c0["realised_counts"]["purple"] == 2 and c0["agreement"] == 0.5
    assert c1["realised_counts"][UNMEASURED] == 1 and c1["agreement"] == 0.75
    assert report["confusion"] == {"red": {"red": 2, "purple": 2}, "blue": {"blue": 3, UNMEASURED: 1}}

    # the audit counts what the images show, with the request beside it; no scorer needed for colour
    result = audit(tmp_path / "syn", axes={"color": ["red", "blue", "purple"]})
    color = result["axes"]["color"]
    assert result["measured_by"] == {"color": "pixels"}
    assert color["per_class"]["0"]["distribution"]["purple"] == 0.5
    assert color["per_class"]["0"]["requested_counts"]["red"] == 4
    assert color["requested_overall"]["red"] == 0.5 and color["overall"]["red"] == 0.25
    assert color["agreement"] == 5 / 8
    # counting the request instead would hide it
    asked = audit(tmp_path / "syn", axes={"color": ["red", "blue", "purple"]}, mode="provenance")["axes"]["color"]
    assert asked["per_class"]["0"]["distribution"]["red"] == 1.0

    r = CliRunner().invoke(cli, ["prompts", "audit", str(tmp_path / "syn")])
    assert r.exit_code == 0, r.output
    assert "measured by pixels" in r.output and "requested -> realised (62.5% agree)" in r.output
    assert "-> red 2, purple 2" in r.output and "-> blue 3, (none) 1" in r.output


class NoColourWords:
    """A scorer whose vocabulary lacks colour words, like the embedded one trained on plain digits."""

    def class_prompts(self, classes, attributes=None):
        return [f"a {(attributes or {}).get('color', '')} digit {c}" for c in classes]

    def embed_texts(self, texts):
        raise FactoryError(f"text {texts[0]!r}: 'red' not in the embedded scorer's vocabulary")


def test_clip_mode_falls_back_to_pixels_for_colour(tmp_path):
    write_synthetic(tmp_path / "syn", [("0", "red", stroke(2, rgb=RED)), ("1", "blue", stroke(2, rgb=PURPLE))])
    result = audit(tmp_path / "syn", scorer=NoColourWords(), mode="clip")
    assert result["measured_by"] == {"color": "pixels"} and "vocabulary" in result["notes"][0]
    assert result["axes"]["color"]["per_class"]["1"]["counts"]["purple"] == 1
    with pytest.raises(FactoryError, match="cannot measure 'shape'"):
        audit(tmp_path / "syn", scorer=NoColourWords(), mode="clip", axes={"shape": ["round"]})


def test_style_audit_needs_a_reference(tmp_path):
    write_synthetic(tmp_path / "syn", [("0", "red", stroke(1)), ("0", "red", stroke(4))])
    with pytest.raises(FactoryError, match="--reference"):
        audit(tmp_path / "syn", axes={"thickness": ["thin", "medium", "thick"]})
    write_synthetic(tmp_path / "ref", [("0", "red", stroke(w)) for w in (1, 2, 2.5, 3, 3.5, 4)])
    result = audit(tmp_path / "syn", axes={"thickness": ["thin", "medium", "thick"]}, reference=tmp_path / "ref")
    assert result["axes"]["thickness"]["per_class"]["0"]["counts"] == {"thin": 1, "medium": 0, "thick": 1}
    assert "0" in result["levels"]


def test_evaluation_balance_fields_read_the_realised_colour(tmp_path):
    from factory.measure.metrics import attribute_balance, balance_fields

    # 2 red and 2 blue asked for; 3 of them show red: balanced as asked, not as made
    write_synthetic(tmp_path / "syn", [("0", "red", stroke(2, rgb=RED)), ("0", "red", stroke(2, rgb=RED)),
                                       ("1", "blue", stroke(2, rgb=RED)), ("1", "blue", stroke(2, rgb=BLUE))])
    requested = attribute_balance([{"color": c} for c in ("red", "red", "blue", "blue")], {"color": ["red", "blue"]})
    fields = balance_fields(tmp_path / "syn", requested)
    assert fields["attribute_balance_requested"] == {"color": 0.0}
    assert fields["attribute_balance"] == {"color": pytest.approx(0.25)}
    assert fields["attribute_agreement"] == {"color": 0.75}
    # an axis pixels cannot measure keeps its requested balance, and no realised one
    other = balance_fields(tmp_path / "syn", attribute_balance([{"shape": "round"}] * 4))
    assert other["attribute_balance"] == {"shape": None} and other["attribute_balance_requested"] == {"shape": 0.0}


def test_cli_clip_audit_of_a_coloured_set_with_the_embedded_scorer(tmp_path, clip_dir):
    """The reported failure: the embedded scorer trained on plain digits has no colour words ('blue' not in
    its vocabulary); the CLIP-mode audit of a colour set measures colour from the pixels instead."""
    write_synthetic(tmp_path / "syn", [("0", "red", stroke(2, rgb=RED)), ("1", "blue", stroke(2, rgb=PURPLE))])
    r = CliRunner().invoke(cli, ["prompts", "audit", str(tmp_path / "syn"), "--mode", "clip",
                                 "--scorer", f"embedded:{clip_dir}"])
    assert r.exit_code == 0, r.output
    assert "measured from pixels, the scorer cannot" in r.output and "vocabulary" in r.output
    assert "-> purple 1" in r.output
