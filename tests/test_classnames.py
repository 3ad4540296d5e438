"""Human class names (factory.data.classnames): the bundled ImageNet map, class-name files, ingest of
WordNet-id folders, plans whose templates use names, synonyms, definitions and hypernyms, and curation
captions that name the classes."""

import csv
import json
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from factory.cli.main import cli
from factory.config import GenerateConfig, PlanConfig
from factory.core.errors import FactoryError
from factory.core.shards import Dataset
from factory.curate.filter import CaptionForm
from factory.curate.scorers.base import class_words
from factory.data.classnames import ClassInfo, class_infos, display_names, load_class_names, names_for
from factory.data.ingest import ingest, split
from factory.data.inspection import summarize
from factory.generate.plans import build_plan, plan_for, read_plan, write_plan
from factory.generate.tasks import generate


@pytest.fixture(scope="module")
def wnid_folder(imagenette, tmp_path_factory) -> Path:
    """Four photos of each of three imagenette classes, in folders named by WordNet id."""
    root = tmp_path_factory.mktemp("wnid") / "photos"
    for wnid in ("n01440764", "n02102040", "n03000684"):
        for f in sorted((imagenette / "train" / wnid).iterdir())[:4]:
            (root / wnid).mkdir(parents=True, exist_ok=True)
            shutil.copy(f, root / wnid / f.name)
    return root


def test_bundled_imagenet_map_is_wordnet_and_agrees_with_imagenette(imagenette):
    table = load_class_names("imagenet")
    assert len(table) == 1000 and all(i.definition and i.hypernym for i in table.values())
    assert len({i.name for i in table.values()}) == 1000  # names shared by two classes are disambiguated
    assert table["n02012849"].name == "crane (wading bird)" and table["n03126707"].name == "crane (lifting device)"
    ids = list(table)
    with open(imagenette / "classes.tsv") as f:
        for row in csv.DictReader(f, delimiter="\t"):  # Imagenette's own names and ImageNet-1k indices
            assert table[row["wnid"]].name == row["name"] and ids.index(row["wnid"]) == int(row["imagenet1k_index"])
    tench = table["n01440764"]
    assert tench.synonyms == ("Tinca tinca",) and tench.hypernym == "cyprinid" and "freshwater" in tench.definition
    doc = json.loads((Path(__file__).parents[1] / "factory/data/imagenet_classes.json").read_text())
    assert "WordNet" in doc["source"] and "Princeton" in doc["license"]


def test_ingest_of_wnid_folders_records_names_that_split_inspect_and_the_cli_show(wnid_folder, tmp_path):
    r = CliRunner().invoke(cli, ["ingest", str(wnid_folder), str(tmp_path / "ds")])
    assert r.exit_code == 0, r.output
    assert "class names: n01440764 tench, n02102040 English springer, n03000684 chain saw" in r.output
    ds = Dataset(tmp_path / "ds")
    assert ds.classes == ["n01440764", "n02102040", "n03000684"]  # the ids stay the classes
    assert ds.meta["class_names"]["n03000684"] == {
        "name": "chain saw", "synonyms": ["chainsaw"], "hypernym": "power saw",
        "definition": "portable power saw; teeth linked to form an endless chain"}
    split(tmp_path / "ds", tmp_path / "train", tmp_path / "test", test_fraction=0.25, seed=0)
    assert display_names(Dataset(tmp_path / "train").classes, Dataset(tmp_path / "train").meta) == [
        "tench", "English springer", "chain saw"]
    assert summarize(tmp_path / "train")["class_names"]["n01440764"] == "tench"
    r = CliRunner().invoke(cli, ["inspect", str(tmp_path / "train")])
    assert r.exit_code == 0 and "n02102040" in r.output and "English springer" in r.output, r.output
    # --class-names none keeps ids only
    ingest(str(wnid_folder), tmp_path / "ids", class_names="none")
    assert "class_names" not in Dataset(tmp_path / "ids").meta


def test_class_name_files_tsv_and_json_and_their_errors(wnid_folder, tmp_path):
    tsv = tmp_path / "names.tsv"
    tsv.write_text("id\tname\tsynonyms\tdefinition\n"
                   "n01440764\ta tench fish\tTinca tinca; doctor fish\ta fish\n"
                   "n02102040\tspringer\t\t\n"
                   "n03000684\tchainsaw\tchain saw\t\n")
    ingest(str(wnid_folder), tmp_path / "a", class_names=str(tsv))
    names = Dataset(tmp_path / "a").meta["class_names"]
    assert names["n01440764"]["synonyms"] == ["Tinca tinca", "doctor fish"] and names["n02102040"]["name"] == "springer"
    for doc in ({"n01440764": "tench", "n02102040": "springer", "n03000684": "saw"},
                [{"id": "n01440764", "name": "tench"}, {"id": "n02102040", "name": "springer"},
                 {"id": "n03000684", "name": "saw", "hypernym": "tool"}],
                {"classes": [{"id": c, "name": c.upper()} for c in ("n01440764", "n02102040", "n03000684")]}):
        (tmp_path / "n.json").write_text(json.dumps(doc))
        assert len(load_class_names(tmp_path / "n.json")) == 3
    # every error is one line, and nothing is written
    short = tmp_path / "short.tsv"
    short.write_text("id\tname\nn01440764\ttench\n")
    bad_header = tmp_path / "bad.tsv"
    bad_header.write_text("wnid\tlabel\nn01440764\ttench\n")
    twice = tmp_path / "twice.json"
    twice.write_text(json.dumps([{"id": "a", "name": "x"}, {"id": "a", "name": "y"}]))
    for spec, message in ((short, "no name for 2 class(es) of the data (first: 'n02102040')"),
                          (bad_header, "starts with a header naming its columns"),
                          (twice, "class id 'a' appears twice"),
                          (tmp_path / "missing.tsv", "no such file")):
        with pytest.raises(FactoryError, match=re.escape(message)) as exc:
            ingest(str(wnid_folder), tmp_path / "out", class_names=str(spec))
        assert "\n" not in str(exc.value) and not (tmp_path / "out").exists()
    r = CliRunner().invoke(cli, ["ingest", str(wnid_folder), str(tmp_path / "out"), "--class-names", str(short)])
    assert r.exit_code != 0 and "no name for 2 class(es)" in r.output and not (tmp_path / "out").exists()
    assert names_for(["3", "7"], None) is None  # not WordNet ids: no names
    assert names_for(["n01440764", "n99999999"], None) is None  # an id the map lacks: no guessing


def test_plan_templates_use_names_synonyms_definitions_hypernyms_and_attributes(wnid_folder, tmp_path):
    ingest(str(wnid_folder), tmp_path / "ds")
    cfg = PlanConfig(images_per_class=8, images_per_prompt=2,
                     templates=("a photo of a {class_name}, {background}", "a {synonym}, a kind of {hypernym}",
                                "{class_name}: {definition}"),
                     attributes={"background": ["on grass", "indoors"]}, negative_prompt="blurry, text")
    plan = plan_for(cfg, tmp_path / "ds")
    texts = {r.text for r in plan.rows}
    assert "a photo of a tench, on grass" in texts and "a photo of a chain saw, on grass" in texts
    assert "chain saw: portable power saw; teeth linked to form an endless chain" in texts
    assert any(t.startswith("a chainsaw, a kind of power saw") or t.startswith("a chain saw, a kind of power saw")
               for t in texts)
    tench = [r for r in plan.rows if r.class_name == "n01440764"]
    assert {r.template for r in tench} == set(cfg.templates)  # varied prompts per class
    by_group: dict[str, set[str]] = {}
    for r in plan.rows:
        by_group.setdefault(r.group, set()).add(r.text)
    assert all(len(t) == 1 for t in by_group.values())  # one prompt per group (StableRep's positives)
    assert {r.class_name for r in plan.rows} == {"n01440764", "n02102040", "n03000684"}  # rows keep the ids
    assert plan.header["class_names"]["n02102040"] == "English springer"
    assert plan.header["negative_prompt"] == "blurry, text"
    write_plan(plan, tmp_path / "plan.jsonl")
    assert read_plan(tmp_path / "plan.jsonl").header == plan.header
    assert plan_for(cfg, tmp_path / "ds").rows == plan.rows  # deterministic, synonyms included
    # a field nobody knows, or a definition the class lacks: one line
    with pytest.raises(FactoryError, match=r"unknown field \{colour\}"):
        plan_for(cfg.model_copy(update={"templates": ("a {colour} {class_name}",)}), tmp_path / "ds")
    with pytest.raises(FactoryError, match="class '0' has no definition recorded"):
        build_plan(PlanConfig(images_per_class=1, templates=("{definition}",)), ["0", "1"])
    # digits (names are the ids): the header has no class_names, so existing plans are unchanged
    digits = build_plan(PlanConfig(images_per_class=2), ["0", "1"], class_infos=class_infos(["0", "1"], {}))
    assert "class_names" not in digits.header and digits.rows[0].text == "a photo of the digit 0"


def test_a_plans_negative_prompt_reaches_the_sampler(tmp_path, generator_dir, digits_split):
    plan = build_plan(PlanConfig(images_per_class=1, negative_prompt="blurry"), Dataset(digits_split[0]).classes)
    write_plan(plan, tmp_path / "plan.jsonl")
    with pytest.raises(FactoryError, match="negative_prompt is not supported by the embedded backend"):
        generate(tmp_path / "plan.jsonl", tmp_path / "out", GenerateConfig(model=str(generator_dir), steps=2))


def test_open_vocabulary_scorers_caption_names_and_closed_ones_ids():
    class Stub:
        open_vocabulary = True

        def prompt_text(self, class_name, text=None, attributes=None):
            return text or f"a photo of {class_name}"

    open_, closed = Stub(), Stub()
    closed.open_vocabulary = False
    assert class_words(open_, ["n01440764"], ["tench"]) == ["tench"]
    assert class_words(closed, ["n01440764"], ["tench"]) == ["n01440764"]
    with pytest.raises(FactoryError, match="1 names for 2 classes"):
        class_words(open_, ["a", "b"], ["x"])

    class Real:
        key = "r1"
        provenance = {"class_name": "n01440764", "attributes": {}}

    info = ClassInfo("n01440764", "tench", ("Tinca tinca",), "a fish", "cyprinid")
    assert CaptionForm().texts(open_, Real(), info) == ["a photo of tench"]
    assert CaptionForm().texts(closed, Real(), info) == ["a photo of n01440764"]
    form = CaptionForm(("a photo of a {class_name}, a {hypernym}",))
    assert form.texts(open_, Real(), info) == ["a photo of a tench, a cyprinid"]


def test_prompt_only_attributes_are_scored_as_the_best_caption_over_their_values():
    """A photo carries no 'background' (nothing measures it): each value fills the caption and the photo keeps
    its best; a style axis that split measures (thickness) is never guessed."""
    class Stub:
        open_vocabulary = True

        def prompt_text(self, class_name, text=None, attributes=None):
            return text or f"a photo of {class_name}"

    class Real:
        key = "r1"
        provenance = {"class_name": "n01440764", "attributes": {"lighting": "dim"}}

    info = ClassInfo("n01440764", "tench", ("Tinca tinca",), "a fish", "cyprinid")
    form = CaptionForm(("a {lighting} photo of a {class_name}, {background}", "a photo of a {class_name}"),
                       ("background", "lighting"), "plan",
                       (("background", ("outdoors", "indoors")), ("lighting", ("bright", "dim"))))
    assert form.variants(Stub(), Real(), info) == [
        ["a dim photo of a tench, outdoors", "a dim photo of a tench, indoors"], ["a photo of a tench"]]
    with pytest.raises(FactoryError, match="has no 'thickness' attribute"):
        CaptionForm(("a {thickness} {class_name}",), ("thickness",), "plan",
                    (("thickness", ("thin", "thick")),)).variants(Stub(), Real(), info)
    with pytest.raises(FactoryError, match="has no 'background' attribute"):  # no values to try
        CaptionForm(("a {class_name}, {background}",), ("background",), "dataset").variants(Stub(), Real(), info)
