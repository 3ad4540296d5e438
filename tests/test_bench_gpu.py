"""bench/gpu.py as a real subprocess: the no-GPU message, and ``--smoke`` (its code paths on the CPU, tiny models).

The GPU run itself needs a CUDA device; see the script's docstring.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from factory.core.errors import FactoryError

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu.py"


def bench(*args: str, gpu: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    if not gpu:
        env["CUDA_VISIBLE_DEVICES"] = ""  # hide any GPU: the no-GPU path on every machine
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=120)


def test_without_a_gpu_it_says_so_and_exits_2():
    p = bench(gpu=False)
    assert p.returncode == 2, p.stderr
    assert p.stdout == ""
    assert p.stderr.strip().splitlines() == [
        "bench/gpu.py: no CUDA device (torch.cuda.is_available() is False); this benchmark needs a GPU "
        "(python bench/gpu.py --smoke runs its code paths on the CPU)"]


def test_smoke_runs_every_path_and_writes_its_summary(tmp_path):
    p = bench("--smoke", "--out", str(tmp_path / "gpu.json"), gpu=False)
    assert p.returncode == 0, p.stdout + p.stderr
    s = json.loads((tmp_path / "gpu.json").read_text())
    assert s["smoke"] is True and s["complete"] is True and s["random_weights"] is True
    assert s["settings"]["arch"] == "tiny" and s["settings"]["size"] == 32
    eager = [r for r in s["generate"] if not r["compile"]]
    assert [r["batch_size"] for r in eager] == [1, 2]
    for r in eager:
        assert r["images"] == 2 * r["batch_size"]
        assert r["stage_images_per_s"] > 0 and r["bare_images_per_s"] > 0
        assert abs(r["ratio"] - r["stage_images_per_s"] / r["bare_images_per_s"]) < 0.01
    compiled = [r for r in s["generate"] if r["compile"]]
    assert [r["batch_size"] for r in compiled] == [2, 1]  # largest first
    assert all("for CUDA devices only" in r["skipped"] for r in compiled)  # the backend refuses it on the CPU
    assert [r["batch_size"] for r in s["scoring"]] == [4, 16]
    assert all(r["factory_images_per_s"] > 0 and r["bare_images_per_s"] > 0 for r in s["scoring"])
    assert "stage/bare" in p.stdout and "target stage/bare >= 0.95" in p.stdout
    assert "Writing model shards" not in p.stderr  # progress bars off


def load_script():
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_guard_skips_what_does_not_fit_and_records_refusals_and_failures():
    gpu = load_script()
    notes, rows = [], []
    guard = gpu.Guard(budget_s=gpu.elapsed() + 100, notes=notes)
    guard.run("generate", rows, {"batch_size": 1}, 0.0, lambda: {"batch_size": 1, "ratio": 0.97})
    guard.run("generate", rows, {"batch_size": 2}, 1000.0, lambda: pytest.fail("over budget: must not run"))

    def refused():
        raise FactoryError("compile (torch.compile of the UNet) is for CUDA devices only")

    def broken():
        raise RuntimeError("inductor failed\nlong traceback")

    guard.run("generate", rows, {"batch_size": 3}, 0.0, refused)
    guard.run("generate", rows, {"batch_size": 4}, 0.0, broken, tolerate=True)
    assert rows[0] == {"batch_size": 1, "ratio": 0.97}
    assert "budget" in rows[1]["skipped"] and rows[1]["batch_size"] == 2
    assert rows[2] == {"batch_size": 3, "skipped": "compile (torch.compile of the UNet) is for CUDA devices only"}
    assert rows[3] == {"batch_size": 4, "failed": "RuntimeError: inductor failed"}
    assert len(notes) == 2  # the budget skip and the failure
    with pytest.raises(RuntimeError):  # an eager configuration's error is a bug: it propagates
        guard.run("generate", rows, {"batch_size": 5}, 0.0, broken)


def test_the_deadline_cuts_the_run_short_and_still_reports(tmp_path):
    p = bench("--smoke", "--deadline-s", "0", "--out", str(tmp_path / "cut.json"), gpu=False)
    assert p.returncode == 0, p.stdout + p.stderr
    s = json.loads((tmp_path / "cut.json").read_text())
    assert s["complete"] is False and "deadline" in s["notes"][-1]
    assert "cut short" in p.stdout
