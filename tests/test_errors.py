"""Issue 10, the one error path: every failure of usage, input, file system or parameters is one line on
stderr (exit 2; 130 interrupted), and nothing a dataset holds can drive the terminal (escaping)."""

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from factory.cli.common import escape
from factory.cli.main import cli

REPO = Path(__file__).resolve().parent.parent
HOSTILE = ["x\x1b[2J", "y\r OK   data-real-train: 1797 samples", "z\u202egnp.exe", "w\x7f\x85\u2028"]


def run(*args, **kw):
    return CliRunner().invoke(cli, [str(a) for a in args], prog_name="factory", **kw)


def one_error_line(r, code=2):
    """The result failed with ``code`` and printed exactly one line, ``Error: ...``, on stderr."""
    assert r.exit_code == code, (r.exit_code, r.output)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.stderr
    assert "Traceback" not in r.output and "Usage:" not in r.output
    return lines[0]


# -- click's usage errors: one line, for every command and subgroup ----------------------------------

@pytest.mark.parametrize("args, culprit, command", [
    (["ingest"], "Missing argument 'SOURCE'", "factory ingest"),
    (["ingest", "sklearn:digits", "o", "--shard-size", "0"], "--shard-size", "factory ingest"),
    (["grid", "d", "g.png", "--cell", "big"], "--cell", "factory grid"),
    (["verify", "d", "--bogus"], "--bogus", "factory verify"),
    (["split", "d", "a", "b", "--test-fraction", "0.2", "--seed", "-1"], "--seed", "factory split"),
    (["prompts", "show"], "Missing argument 'PLAN'", "factory prompts show"),
    (["prompts", "audit", "d", "--mode", "magic"], "--mode", "factory prompts audit"),
    (["prompts", "nope"], "nope", "factory prompts"),
    (["nope"], "nope", "factory"),
    (["--bogus"], "--bogus", "factory"),
])
def test_usage_errors_are_one_line(args, culprit, command):
    line = one_error_line(run(*args))
    assert culprit in line and line.endswith(f"(see '{command} --help')")


def test_help_and_version_print_as_before():
    r = run("--help")
    assert r.exit_code == 0 and r.output.startswith("Usage: factory [OPTIONS] COMMAND") and "ingest" in r.output
    r = run("prompts", "show", "--help")
    assert r.exit_code == 0 and "Usage: factory prompts show [OPTIONS] PLAN" in r.output
    r = run("--version")
    assert r.exit_code == 0 and r.output.startswith("factory, version ")


def test_usage_error_in_a_real_process():
    p = subprocess.run([sys.executable, "-m", "factory.cli.main", "ingest", "sklearn:digits"],
                       capture_output=True, text=True)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr == "Error: Missing argument 'OUT_DIR'. (see 'factory ingest --help')\n"


# -- the file system, and everything else ------------------------------------------------------------

def _raise(exc):
    def boom(*args, **kwargs):
        raise exc
    return boom


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EIO, errno.EACCES, errno.ENOENT])
def test_every_os_error_is_one_line_naming_the_file(monkeypatch, tmp_path, code):
    import factory.data.inspection as inspection

    culprit = tmp_path / "d" / "shard-000003.tar"
    monkeypatch.setattr(inspection, "summarize", _raise(OSError(code, os.strerror(code), str(culprit))))
    line = one_error_line(run("inspect", tmp_path / "d"))
    assert line == f"Error: {culprit}: {os.strerror(code)} ({errno.errorcode[code]})"


def test_os_error_without_a_file_name_and_with_two(monkeypatch, tmp_path):
    import factory.data.inspection as inspection

    monkeypatch.setattr(inspection, "summarize", _raise(OSError(errno.ENOSPC, "No space left on device")))
    assert one_error_line(run("inspect", tmp_path)) == "Error: No space left on device (ENOSPC)"
    monkeypatch.setattr(inspection, "summarize", _raise(OSError(errno.EXDEV, "Invalid cross-device link", "a", None, "b")))
    assert one_error_line(run("inspect", tmp_path)) == "Error: a -> b: Invalid cross-device link (EXDEV)"


def test_unexpected_exception_is_one_line_unless_debugging(monkeypatch, tmp_path):
    import factory.data.inspection as inspection

    monkeypatch.setattr(inspection, "summarize", _raise(RecursionError("maximum recursion\ndepth exceeded")))
    line = one_error_line(run("inspect", tmp_path))
    assert line == ("Error: internal error (RecursionError: maximum recursion depth exceeded); "
                    "run with FACTORY_DEBUG=1 for the traceback")
    r = run("inspect", tmp_path, env={"FACTORY_DEBUG": "1"})
    assert isinstance(r.exception, RecursionError)  # re-raised: the traceback is there for who asks


def test_ctrl_c_is_interrupted_130(monkeypatch, tmp_path):
    import factory.data.inspection as inspection

    monkeypatch.setattr(inspection, "summarize", _raise(KeyboardInterrupt()))
    assert one_error_line(run("inspect", tmp_path), code=130) == "Error: interrupted"


@pytest.mark.slow  # a real process that imports the inspection code: about 10 s on a loaded machine
def test_os_error_in_a_real_process(tmp_path):
    code = ("import errno, sys, factory.data.inspection as m\n"
            "def boom(*a, **k):\n"
            "    raise OSError(errno.EIO, 'Input/output error', sys.argv[-1] + '/shard-000000.tar')\n"
            "m.summarize = boom\n"
            "from factory.cli.main import main\n"
            "sys.argv[0] = 'factory'\n"
            "main()\n")
    p = subprocess.run([sys.executable, "-c", code, "inspect", str(tmp_path)], capture_output=True, text=True)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr == f"Error: {tmp_path}/shard-000000.tar: Input/output error (EIO)\n"


# -- parameters ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("yaml_text, culprit", [
    ("base:\n  seed: -1\n", "base.seed: must be >= 0 (got -1)"),
    ("base:\n  seed: 4294967296\n", "base.seed: must be < 4294967296"),
    ("plan:\n  oversample: .inf\n", "plan.oversample: must be a finite number (got inf)"),
    ("plan:\n  oversample: 1000\n", "plan.oversample: must be <= 100"),
    ("plan:\n  attributes:\n    color: {values: [red, blue], weights: [.nan, 1]}\n",
     "plan.attributes.color: weights must be finite numbers"),
    ("generate:\n  guidance_scale: .nan\n", "generate.guidance_scale: must be a finite number"),
    ("curate:\n  percentile: .nan\n", "curate.percentile: must be a finite number"),
    ("classifier:\n  lr: -.inf\n", "classifier.lr: must be a finite number"),
    ("split:\n  test_fraction: .inf\n", "split.test_fraction: must be a finite number"),
    ("sweep:\n  guidance_scales: [1, .nan]\n", "sweep.guidance_scales[1]: must be a finite number"),
    ("generate:\n  width: 1048576\n", "generate.width: must be <= 8192"),
    ("plan:\n  images_per_class: 1000000000\n", "plan.images_per_class: must be <= 1000000"),
    ("plan:\n  templates: ['{class_name} hf_abcdefghijklmnopqrstuvwxyz0123']\n",
     "plan.templates[0]: looks like a Hugging Face token"),
    ("plan: [\n", "not valid YAML"),
])
def test_bad_params_are_one_line_naming_the_parameter(tmp_path, digits, yaml_text, culprit):
    params = tmp_path / "params.yaml"
    params.write_text(yaml_text)
    line = one_error_line(run("prompts", "build", params, tmp_path / "plan.jsonl", "--dataset", digits))
    assert culprit in line and str(params) in line
    assert not (tmp_path / "plan.jsonl").exists()


def test_several_bad_params_are_one_line(tmp_path, digits):
    params = tmp_path / "params.yaml"
    params.write_text("base:\n  seed: -1\nplan:\n  oversample: .inf\n  templates: ['sk-abcdefghijklmnopqrstuvwx']\n")
    line = one_error_line(run("prompts", "build", params, tmp_path / "plan.jsonl", "--dataset", digits))
    assert line.startswith(f"Error: {params}: 3 problems: "), line
    for culprit in ("base.seed: must be >= 0", "plan.oversample: must be a finite", "plan.templates[0]: looks like"):
        assert line.count(culprit) == 1, (culprit, line)


def test_an_unknown_key_named_like_a_secret_is_one_line(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text((REPO / "params.yaml").read_text() + "\nbias:\n  token: abc\n")
    line = one_error_line(run("prompts", "build", params, tmp_path / "plan.jsonl"))
    assert line.startswith(f"Error: {params}: 2 problems: bias.token: "), line
    assert "named like a secret" in line and "unknown parameter" in line
    assert not (tmp_path / "plan.jsonl").exists()


@pytest.mark.timeout(30)
def test_a_recursive_yaml_alias_is_one_line_in_a_real_process(tmp_path):
    (tmp_path / "params.yaml").write_text("a: &a [*a]\n")
    p = subprocess.run([sys.executable, "-m", "factory.cli.main", "prompts", "build", "params.yaml", "out.jsonl"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=25)
    assert p.returncode == 2 and p.stderr == ("Error: params.yaml:1: YAML alias *a is inside the node it names "
                                                "(a recursive structure)\n"), p.stderr
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.slow  # the stage as DVC runs it, a real process
@pytest.mark.timeout(60)
def test_a_yaml_alias_fails_the_plan_stage(tmp_path, digits):
    (tmp_path / "params.yaml").write_text("plan:\n  images_per_class: 2\n  templates: &t ['{class_name}', *t]\n")
    p = subprocess.run([sys.executable, REPO / "stages" / "plan.py", digits, tmp_path / "plan.jsonl"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=50)
    assert p.returncode == 2 and p.stderr == ("Error: params.yaml:3: YAML alias *t is inside the node it names "
                                                "(a recursive structure)\n"), p.stderr


def test_the_projects_params_still_load():
    from factory.config import load_params

    params = load_params(REPO / "params.yaml")
    assert params.base.seed == 0 and params.plan.oversample > 1


@pytest.mark.parametrize("value", ["abc", "-1", "99999999999999999999", "1e9", ""])
def test_bad_source_date_epoch_is_one_line(tmp_path, value):
    line = one_error_line(run("ingest", "sklearn:digits", tmp_path / "d", env={"SOURCE_DATE_EPOCH": value}))
    assert "SOURCE_DATE_EPOCH must be an integer" in line and not (tmp_path / "d").exists()


def test_prompts_show_refuses_files_that_are_no_plan(tmp_path, digits):
    import tarfile

    from factory.generate.plans import PlanConfig, build_plan, write_plan

    with tarfile.open(tmp_path / "x.tar", "w") as tar:
        tar.add(digits / "index.json", arcname="index.json")
    (tmp_path / "bin.jsonl").write_bytes(bytes(range(256)))
    for f in ("x.tar", "bin.jsonl"):
        assert "not a prompt plan" in one_error_line(run("prompts", "show", tmp_path / f))
    good = write_plan(build_plan(PlanConfig(images_per_class=4), [str(i) for i in range(10)]), tmp_path / "p.jsonl")
    lines = good.read_text().split("\n")
    for n, bad in [(3, "{not json"), (3, "[1, 2]"), (2, lines[1].replace('"label": 0', '"label": 99')),
                   (2, lines[1].replace('"class_name": "0"', '"class_name": "7"')),
                   (2, lines[1].replace('"seed": ', '"seed": -')), (4, lines[3].replace('"text"', '"txt"')),
                   (1, lines[0].replace('"classes": [', '"classes": [7, '))]:
        broken = tmp_path / "broken.jsonl"
        broken.write_text("\n".join(lines[:n - 1] + [bad] + lines[n:]))
        line = one_error_line(run("prompts", "show", broken))
        assert f"{broken}:{n}: bad plan" in line, line
    assert run("prompts", "show", good).exit_code == 0


# -- escaping ------------------------------------------------------------------------------------------

def test_escape_shows_every_control_as_text():
    assert escape("a\x1b[2Jb") == "a\\x1b[2Jb"
    assert escape("\r OK\n\t") == "\\r OK\\n\\t"
    assert escape("\x7f\x85\x9b\u2028\u2029\u202e\u2066\u200f\x00") == \
        "\\x7f\\x85\\x9b\\u2028\\u2029\\u202e\\u2066\\u200f\\x00"
    assert escape("猫 n01440764_10026 ü €") == "猫 n01440764_10026 ü €"  # printable text stays as it is
    assert escape(escape("\x1b")) == escape("\x1b")


def _hostile_folder(root: Path, bad_image: bool = False) -> Path:
    for i, cls in enumerate(HOSTILE):
        (root / cls).mkdir(parents=True)
        Image.new("L", (8, 8), 40 * i).save(root / cls / f"{i}.png")
    if bad_image:
        (root / HOSTILE[0] / "\x1b]0;pwned\x07.png").write_bytes(b"not an image")
    return root


def _clean(text: str) -> None:
    for c in ("\x1b", "\r", "\x7f", "\x85", "\u2028", "\u202e", "\x07"):
        assert c not in text, repr(text)


def test_names_from_a_dataset_reach_the_terminal_escaped(tmp_path):
    src = _hostile_folder(tmp_path / "src\x1b[31m")
    ds = tmp_path / "ds"
    r = run("ingest", src, ds)
    assert r.exit_code == 0 and "wrote 4 samples" in r.output
    _clean(r.output)
    from factory.core.shards import Dataset

    assert Dataset(ds).classes == sorted(HOSTILE)  # stored as they are: only the terminal sees escapes
    for args in (["inspect", ds], ["verify", ds], ["show", ds, next(iter(Dataset(ds))).key],
                 ["dedup", ds], ["grid", ds, tmp_path / "g.png"]):
        r = run(*args)
        assert r.exit_code == 0, r.output
        _clean(r.output)
    assert "y\\r OK   data-real-train" in run("inspect", ds).output
    info = json.loads(run("inspect", ds, "--json").output)  # JSON output stays JSON, escapes and all
    assert sorted(info["classes"]) == sorted(HOSTILE)
    rec = json.loads(run("show", ds, next(iter(Dataset(ds))).key).output)
    assert rec["class_name"] in HOSTILE


def test_errors_naming_hostile_files_are_escaped(tmp_path):
    src = _hostile_folder(tmp_path / "src", bad_image=True)
    line = one_error_line(run("ingest", src, tmp_path / "ds"))
    assert "unreadable image" in line and "\\x1b]0;pwned\\x07.png" in line
    _clean(run("ingest", src, tmp_path / "ds").stderr)
    r = run("ingest", src, tmp_path / "ds", "--skip-bad")
    assert r.exit_code == 0 and "skipped 1 unreadable image\n" in r.output
    _clean(r.output)


def test_log_lines_are_escaped():
    import logging

    from factory.cli.common import EscapingFormatter

    record = logging.LogRecord("factory.data.sources", logging.WARNING, __file__, 1, "skipping %s", ("a\x1b[2J\nb",),
                               None)
    assert EscapingFormatter("%(levelname)s %(message)s").format(record) == "WARNING skipping a\\x1b[2J\\nb"


@pytest.mark.slow  # two real processes: about 10 s each on a loaded 2-core machine
def test_escaping_in_a_real_process(tmp_path):
    src = _hostile_folder(tmp_path / "src", bad_image=True)
    (src / HOSTILE[0] / "\x1b]0;pwned\x07.png").rename(tmp_path / "bad.png")
    assert run("ingest", src, tmp_path / "ds").exit_code == 0
    (tmp_path / "bad.png").rename(src / HOSTILE[1] / "\x1b]0;pwned\x07.png")
    exe = [sys.executable, "-m", "factory.cli.main"]
    p = subprocess.run([*exe, "inspect", tmp_path / "ds"], capture_output=True)
    assert p.returncode == 0 and b"x\\x1b[2J" in p.stdout and b"y\\r OK" in p.stdout, p.stdout
    p2 = subprocess.run([*exe, "ingest", src, tmp_path / "ds2"], capture_output=True)  # an error naming the file
    assert p2.returncode == 2 and p2.stderr.count(b"\n") == 1 and b"\\x1b]0;pwned\\x07.png" in p2.stderr
    for out in (p.stdout + p.stderr, p2.stdout + p2.stderr):
        assert b"\x1b" not in out and b"\r" not in out and b"\x07" not in out and "\u202e".encode() not in out
