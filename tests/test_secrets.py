"""Issue 10: no secret reaches an output. One detector (factory.core.secrets), used by provenance, params,
plans and the dataset writer (class names, dataset names, meta)."""

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from factory.cli.main import cli
from factory.core.errors import FactoryError
from factory.core.secrets import check_no_secret, find_secret, secret_problems

REPO = Path(__file__).resolve().parent.parent
HF = "hf_" + "aB3" * 10  # token-like strings, built here so that no scanner takes this file for a leak
TOKENS = {
    "Hugging Face token": HF,
    "GitHub token": "ghp_" + "x1Y2" * 9,
    "OpenAI API key": "sk-proj-" + "Ab9_" * 8,
    "AWS access key": "AKIA" + "QWERTYUIOPASDFGH",
    "Slack token": "xoxb-" + "1234567890-abcdef",
    "private key": "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEA\n",
}


def run(*args, **kw):
    return CliRunner().invoke(cli, [str(a) for a in args], prog_name="factory", **kw)


def one_error_line(r):
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in r.output, r.output
    return lines[0]


@pytest.mark.parametrize("kind", sorted(TOKENS))
def test_every_kind_is_found_inside_text(kind):
    assert find_secret(TOKENS[kind]) == kind
    assert find_secret(f"a photo of {TOKENS[kind]} here") == kind
    with pytest.raises(FactoryError, match=rf"^plan.templates\[1\]: looks like an? {kind}; secrets never go into"):
        check_no_secret({"plan": {"templates": ["ok", f"x {TOKENS[kind]}"]}}, "")


@pytest.mark.parametrize("text", ["a photo of the digit {class_name}", "n01440764_n01440764_10026", "hf_cache",
                                  "task-" + "a" * 30, "desk-" + "b" * 30, "digits-00001", "sk-short",
                                  "AKIA-not-a-key", "3-g00002-01", "-----BEGIN CERTIFICATE-----", "猫"])
def test_ordinary_text_is_no_secret(text):
    assert find_secret(text) is None


def test_secret_key_names_and_every_problem_listed():
    problems = secret_problems({"origin": {"hf_token": "x", "API_KEY": 1}, "meta": [{"password": None}],
                                "classes": ["a", HF], "ok": {"tokens": 3}}, "rec")
    assert problems == ["rec.origin.hf_token: a key named like a secret; secrets never go into outputs",
                        "rec.origin.API_KEY: a key named like a secret; secrets never go into outputs",
                        "rec.meta[0].password: a key named like a secret; secrets never go into outputs",
                        "rec.classes[1]: looks like a Hugging Face token; secrets never go into outputs"]
    deep: list = []
    for _ in range(100_000):  # no recursion: a hostile nesting cannot crash the check
        deep = [deep]
    assert secret_problems(deep, "x") == []


def _record():
    import io

    from factory.core.sample import real_sample

    buf = io.BytesIO()
    Image.new("L", (4, 4)).save(buf, format="PNG")
    return real_sample("k", buf.getvalue(), 0, "a", {"dataset": "x", "index": 0}).provenance


@pytest.mark.parametrize("kind", sorted(TOKENS))
def test_provenance_refuses_a_token_anywhere(kind):
    from factory.core.sample import validate_record

    rec = _record()
    rec["attributes"] = {"colour": f"red {TOKENS[kind]}"}
    with pytest.raises(FactoryError, match=rf"provenance of 'k'.attributes.colour: looks like an? {kind}"):
        validate_record(rec)


@pytest.mark.slow  # the stage as DVC runs it, a real process: about 10 s on a loaded machine
def test_params_with_a_token_fail_the_plan_stage_before_dvc_records_it(tmp_path, digits):
    (tmp_path / "params.yaml").write_text(
        f"plan:\n  images_per_class: 2\n  templates: ['a photo of {{class_name}} {HF}']\n")
    p = subprocess.run([sys.executable, REPO / "stages" / "plan.py", digits, tmp_path / "plan.jsonl"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip().splitlines() == [
        "Error: params.yaml: plan.templates[0]: looks like a Hugging Face token; secrets never go into outputs"]
    assert not (tmp_path / "plan.jsonl").exists()


@pytest.mark.parametrize("where", ["attributes", "negative_prompt", "pools", "name"])
def test_every_string_of_params_is_checked(tmp_path, where):
    from factory.config import load_params

    text = {"attributes": f"plan:\n  attributes:\n    color: [red, '{HF}']\n",
            "negative_prompt": f"generate:\n  negative_prompt: 'blurry {HF}'\n",
            "pools": f"pools:\n  real: [{{dataset: 'data/{HF}'}}]\n",
            "name": f"generate:\n  name: {HF}\n"}[where]
    (tmp_path / "params.yaml").write_text(text)
    with pytest.raises(FactoryError, match="looks like a Hugging Face token"):
        load_params(tmp_path / "params.yaml")


def test_plans_refuse_tokens_from_classes_templates_and_files(tmp_path):
    from factory.config import PlanConfig
    from factory.generate.plans import build_plan, read_plan, write_plan

    with pytest.raises(FactoryError, match=r"plan.classes\[1\]: looks like a Hugging Face token"):
        build_plan(PlanConfig(images_per_class=2), ["cat", HF])
    with pytest.raises(FactoryError, match="plan.templates"):
        build_plan(PlanConfig(images_per_class=2, templates=(f"{HF} {{class_name}}",)), ["cat"])
    # a template and a class name that spell a token only together
    with pytest.raises(FactoryError, match="text: looks like a Hugging Face token"):
        build_plan(PlanConfig(images_per_class=2, templates=("hf_{class_name}",)), ["aB3" * 10])
    plan = write_plan(build_plan(PlanConfig(images_per_class=2), ["cat", "dog"]), tmp_path / "p.jsonl")
    lines = plan.read_text().split("\n")
    lines[2] = lines[2].replace('"text": "a photo', f'"text": "{HF} a photo')
    plan.write_text("\n".join(lines))
    with pytest.raises(FactoryError, match=r"p.jsonl:3.text: looks like a Hugging Face token"):
        read_plan(plan)


def _folder(root: Path, classes) -> Path:
    for i, cls in enumerate(classes):
        (root / cls).mkdir(parents=True)
        Image.new("L", (8, 8), 60 * i).save(root / cls / "1.png")
    return root


def test_ingest_refuses_a_class_folder_or_dataset_name_like_a_token(tmp_path):
    src = _folder(tmp_path / "src", ["cat", HF])
    line = one_error_line(run("ingest", src, tmp_path / "out"))
    assert f"{src / HF[:4]}…: class folder name: looks like a Hugging Face token" in line  # redacted
    assert HF not in line and not (tmp_path / "out").exists()
    src = _folder(tmp_path / "src2", ["cat", "dog"])
    line = one_error_line(run("ingest", src, tmp_path / "out", "--name", f"cats-{TOKENS['GitHub token']}"))
    assert "index.name: looks like a GitHub token" in line and not (tmp_path / "out").exists()
    assert run("ingest", src, tmp_path / "out", "--name", "cats").exit_code == 0


def test_the_writer_refuses_secret_meta_and_hf_class_names(tmp_path):
    import datasets

    from factory.core.shards import DatasetWriter
    from factory.data.ingest import ingest

    with pytest.raises(FactoryError, match=r"index.meta.source.api_key: a key named like a secret"):
        DatasetWriter(tmp_path / "o", "n", ["a"], meta={"source": {"api_key": "x"}})
    assert not (tmp_path / "o").exists()
    img = tmp_path / "x.png"
    Image.new("L", (8, 8)).save(img)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", HF])})
    datasets.Dataset.from_dict({"image": [str(img)] * 2, "label": [0, 1]}, features=features).save_to_disk(
        tmp_path / "hfd")
    with pytest.raises(FactoryError, match=r"class names\[1\]: looks like a Hugging Face token"):
        ingest(f"hf:{tmp_path / 'hfd'}", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_error_messages_never_print_the_token(tmp_path):
    """A token in a file name is refused, and the one-line error names the file without the token."""
    from click.testing import CliRunner
    from PIL import Image

    from factory.cli.main import cli

    token = "hf_" + "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    (tmp_path / "src" / "a").mkdir(parents=True)
    Image.new("L", (8, 8), 5).save(tmp_path / "src" / "a" / f"{token}.png")
    res = CliRunner().invoke(cli, ["ingest", str(tmp_path / "src"), str(tmp_path / "out")])
    assert res.exit_code == 2
    assert token not in res.stderr and "hf_A…" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
