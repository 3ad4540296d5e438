"""The DVC pipeline, run for real with ``dvc repro`` in a temporary copy of the repository."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from factory.core.shards import Dataset
from factory.data.inspection import verify

sys.path.insert(0, str(Path(__file__).parent))
from s3_server import moto_endpoint, s3  # noqa: E402,F401  (fixtures: an S3 server on loopback)

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def copy_repo(dest: Path) -> Path:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, check=True,
                           capture_output=True, text=True).stdout.split()
    for f in files:
        if (REPO / f).is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / f, dest / f)
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True)
    subprocess.run(["git", "commit", "-qm", "copy"], cwd=dest, check=True, env=env)
    return dest


def dvc(repo: Path, *args: str) -> subprocess.CompletedProcess:
    bindir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bindir + os.pathsep + os.environ["PATH"], "PYTHONPATH": str(repo),
           "DVC_NO_ANALYTICS": "1"}
    return subprocess.run([os.path.join(bindir, "dvc"), *args], cwd=repo, capture_output=True, text=True, env=env)


TINY = """
train_generator:
  image_size: 8
  block_out_channels: [8, 16]
  norm_num_groups: 4
  steps: 10
  batch_size: 32
  warmup_steps: 2
train_clip:
  vision_width: 32
  vision_layers: 1
  vision_head_width: 16
  embed_dim: 16
  text_width: 32
  text_layers: 1
  text_heads: 2
  steps: 4
  batch_size: 32
"""


def shrink_params(repo: Path) -> None:
    """The real pipeline, with a tiny generator and a small plan so the test takes seconds."""
    import yaml

    params = yaml.safe_load((repo / "params.yaml").read_text())
    tiny = yaml.safe_load(TINY)
    params["train_generator"] = tiny["train_generator"]
    params["train_clip"] = tiny["train_clip"]
    # one style axis, 2 images per prompt: every class x slant cell is one prompt group of 2 images, so the
    # grouped contrastive methods have positives (the default's 9 cells would leave single-image groups)
    params["plan"].update(images_per_class=6, images_per_prompt=2, oversample=1.0,
                          attributes={"slant": ["left", "upright", "right"]},
                          templates=["a {slant}-slanted handwritten {class_name}"])
    params["generate"].update(steps=3, batch_size=8, shard_size=16)
    params["sweep"]["guidance_scales"] = [1]
    params["pools"] = {
        "real": [{"dataset": "data/real/train", "per_class": 3}],
        "synthetic": [{"dataset": "data/synthetic/curated"}],
        "mix": [{"dataset": "data/real/train", "count": 20}, {"dataset": "data/synthetic/curated", "count": 20}],
    }
    params["classifier"].update(steps=4, batch_size=16, shuffle_buffer=16, seeds=[0, 1])
    params["contrastive"]["pools"] = ["real", "synthetic"]
    params["contrastive"]["seeds"] = [0]
    params["contrastive"]["train"] = {"steps": 3, "batch_size": 16, "images_per_group": 2, "width": 8,
                                      "embed_dim": 16}
    params["evaluate"].update(k=2)
    params["bias"]["plan"].update(images_per_class=10, images_per_prompt=2)
    params["bias"]["train_generator"] = tiny["train_generator"]
    params["bias"]["generate"].update(steps=3, batch_size=8, shard_size=50)
    params["report"]["fraction_pools"] = ["real", "mix", "synthetic"]
    params["report"]["baselines"] = {"synthetic": "real", "mix": "real"}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    repo = copy_repo(tmp_path_factory.mktemp("repo"))
    shrink_params(repo)
    p = dvc(repo, "repro")
    assert p.returncode == 0, p.stdout + p.stderr
    return repo


def test_repro_builds_real_splits(repo):
    import json

    train, val, test = (Dataset(repo / f"data/real/{n}") for n in ("train", "val", "test"))
    assert len(train) + len(val) + len(test) == 1797 and len(test) == 359
    keys = [{s.key for s in d} for d in (train, val, test)]
    assert not keys[0] & keys[1] and not keys[0] & keys[2] and not keys[1] & keys[2]
    assert len(val) == 287  # split.val_fraction 0.2 of each class of the 1,438 left after test
    for d in (train, val, test):
        assert verify(d.path).ok
        assert d.meta["style_levels"]["fit_on"] == "train"
        assert all(set(s.provenance["attributes"]) == {"thickness", "slant"} for s in d)
    # the generator is conditioned on both style axes of the real train records
    config = json.loads((repo / "models/generator/config.json").read_text())
    assert set(config["attributes"]) == {"thickness", "slant"}
    p = dvc(repo, "status", "dvc.yaml")  # the main pipeline (loop/dvc.yaml has its own test)
    assert p.returncode == 0 and "up to date" in p.stdout, p.stdout


def test_repro_generates_the_synthetic_dataset(repo):
    raw = Dataset(repo / "data/synthetic/raw")
    assert len(raw) == 60 and verify(raw.path).ok
    assert {s.provenance["attributes"]["slant"] for s in raw} == {"left", "upright", "right"}
    assert (repo / "models/generator/model.safetensors").is_file()
    s = next(iter(raw))
    assert s.provenance["generator"]["guidance_scale"] == 2.0
    assert s.provenance["parents"][0]["index_sha256"] == Dataset(repo / "data/real/train").index_sha256


def test_repro_curates(repo):
    import json

    report = json.loads((repo / "reports/curate.json").read_text())
    curated, rejected = Dataset(repo / "data/synthetic/curated"), Dataset(repo / "data/synthetic/rejected")
    assert report["samples"] == 60 and report["kept"] == len(curated) and report["rejected"] == len(rejected)
    assert len(curated) + len(rejected) == 60
    for s in curated:
        assert s.provenance["decision"]["kept"] is True and "clip" in s.provenance["scores"]
    cal = report["calibration"]  # thresholds from real val, scored as the samples are
    assert cal["split"] == "data/real/val" and cal["n"] == 287 and cal["test_n"] == 359
    assert set(cal["reject_share"]) == {"val", "test"}
    assert report["filter"]["thresholds"]["calibrated_on"] == "data/real/val"
    p = dvc(repo, "metrics", "show", "metrics/summary/curate.json")  # the compact line, not the 1,000-line report
    assert p.returncode == 0 and "metrics/summary/curate.json" in p.stdout and "reports/curate.json" not in p.stdout
    assert json.loads((repo / "metrics/summary/curate.json").read_text()) == {
        "n": 60, "kept": report["kept"], "rejected": report["rejected"], "leaks": len(report["leaks"])}


def test_repro_proves_the_pools(repo):
    import json

    for pool in ("real", "synthetic", "mix"):
        m = json.loads((repo / f"metrics/classifier/{pool}.json").read_text())
        assert 0 <= m["top1"] <= 1 and m["pool"] == pool and m["n_test"] == 359
        assert m["seeds"] == [0, 1] and len(m["top1_per_seed"]) == 2 and m["top1"] == m["top1_mean"]
        lo, hi = m["top1_ci95"]
        assert lo <= m["top1_mean"] <= hi
        assert (repo / f"dvclive/classifier/{pool}/plots/metrics/test/top1.tsv").is_file()
    mix = json.loads((repo / "data/pools/mix.json").read_text())
    assert mix["samples"] == 40 and mix["synthetic_fraction"] == 0.5
    con = json.loads((repo / "metrics/contrastive/synthetic.json").read_text())
    assert set(con["methods"]) == {"simclr", "stablerep", "stablerep_plus", "random_groups"}
    assert all("top1" in v and "top1_10shot" in v for v in con["methods"].values())
    real = json.loads((repo / "metrics/contrastive/real.json").read_text())
    assert set(real["methods"]) == {"simclr", "supcon"}  # supcon: the label-supervised reference
    ev = json.loads((repo / "metrics/evaluate.json").read_text())
    assert set(ev["datasets"]) == {"w1", "raw", "curated"} and "cas" in ev["datasets"]["w1"]
    rows = json.loads((repo / "plots/guidance.json").read_text())
    assert [r["guidance_scale"] for r in rows] == [1.0, 2.0]
    bias = json.loads((repo / "metrics/bias.json").read_text())
    assert set(bias["pools"]) == {"biased_real", "biased_real_biased_synthetic", "biased_real_balanced_synthetic"}
    assert bias["chosen_on"] == "val"
    assert bias["train_correlation"] > 0.9
    assert "## Bias benchmark" in (repo / "reports/results.md").read_text()
    # dvc metrics show: the headline, one line; the compact lines (a line per pool, method, dataset) on demand
    p = dvc(repo, "metrics", "show")
    rows = {ln.split()[0] for ln in p.stdout.splitlines()[1:] if ln.strip()}
    assert p.returncode == 0 and "metrics/headline.json" in rows, p.stdout + p.stderr
    assert not any("summary" in r for r in rows), p.stdout  # (the photos' and loops' headlines, if committed)
    summary = {k: json.loads((repo / f"metrics/summary/{f}.json").read_text())
               for k, f in (("real", "classifier/real"), ("cas", "classifier/synthetic"), ("ev", "evaluate/curated"),
                            ("curate", "curate"))}
    assert json.loads((repo / "metrics/headline.json").read_text()) == {  # mixed: no real_synthetic pool here
        "real": summary["real"]["top1"], "cas": summary["cas"]["top1"], "fd": summary["ev"]["fd"],
        "recognition": summary["ev"]["recognition"], "kept": summary["curate"]["kept"]}
    p = dvc(repo, "metrics", "show", "metrics/summary")
    assert p.returncode == 0, p.stderr
    for name in ("metrics/summary/classifier/mix.json", "metrics/summary/contrastive/synthetic-stablerep.json",
                 "metrics/summary/bias/biased_real.json", "metrics/summary/evaluate/w1.json",
                 "metrics/summary/evaluate/floor.json"):
        assert name in p.stdout, p.stdout
    for detail in ("metrics/classifier/mix.json", "metrics/contrastive/synthetic.json", "metrics/bias.json",
                   "metrics/evaluate.json", "metrics/train_clip.json"):
        assert detail not in p.stdout, p.stdout
    mix_row = json.loads((repo / "metrics/summary/classifier/mix.json").read_text())
    mix_m = json.loads((repo / "metrics/classifier/mix.json").read_text())
    assert mix_row == {"top1": round(mix_m["top1_mean"], 4), "lo": round(mix_m["top1_ci95"][0], 4),
                       "hi": round(mix_m["top1_ci95"][1], 4), "synthetic": 0.5, "n": 40}
    p = dvc(repo, "metrics", "show", "metrics/summary/classifier")  # one kind: a table that fits a terminal
    lines = [ln for ln in p.stdout.splitlines() if ln.strip()]
    assert p.returncode == 0 and len(lines) == 1 + 3 and max(map(len, lines)) <= 100, p.stdout
    p = dvc(repo, "plots", "show", "--json")
    assert p.returncode == 0 and "plots/guidance.json" in p.stdout, p.stderr


def test_the_report_passes_in_a_browser(repo, chromium):
    """The run's own reports/index.html in headless Chromium (factory/measure/browser.py): no console or script
    error, no failed or external request, every image decoded, every section there."""
    from factory.measure.browser import REPORT_SECTIONS, check_page

    check = check_page(repo / "reports/index.html")
    assert check.problems(REPORT_SECTIONS) == [], check
    assert check.images > 0


def test_the_report_page_shows_every_dataset_chart_and_readme_figure(repo):
    """The report stage's page from the run's own outputs (factory/measure/page.py): a contact sheet per dataset
    (each sweep scale and bias set too), every chart drawn and no input missing (no note); README figures."""
    page = (repo / "reports/index.html").read_text()
    sheets = ("real-val", "raw", "curated", "guidance-w1", "bias-real-train", "bias-balanced", "bias-control")
    for ident in [f"sheet-{s}" for s in sheets] + ["hist-clip", "hist-clip-margin", "chart-guidance",
                                                     "chart-fraction", "chart-per-class", "chart-confusion",
                                                     "chart-curves"]:
        assert f'id="{ident}"' in page, ident
    notes = re.findall(r'<p class="note">([^<]*)</p>', page)
    assert set(notes) <= {"no images"}, notes  # a class the tiny curation left empty; no input is missing
    figures = {p.name for p in (repo / "reports/figures").iterdir()}
    assert {f"samples-{s}.png" for s in sheets} | {"guidance.png", "fraction.png"} <= figures


def test_the_pipelines_outputs_go_through_an_s3_remote(repo, s3, tmp_path):
    """The whole pipeline's outputs (the shrunk run above) pushed to an S3 remote on loopback (moto), then a
    fresh clone pulls them: dvc status clean and factory verify passing on every dataset."""
    from s3_server import ACCESS_KEY, SECRET_KEY

    env = {**os.environ, "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"],
           "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}

    def sh(cwd: Path, *args: str) -> str:
        p = subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, f"{' '.join(args)}: {p.stdout[-2000:]}\n{p.stderr[-2000:]}"
        return p.stdout

    sh(repo, "dvc", "remote", "add", "-f", "-d", "storage", s3.url("dvcstore"))
    sh(repo, "dvc", "remote", "modify", "storage", "endpointurl", s3.endpoint)
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "the run and its remote")
    sh(repo, "dvc", "push", "-q", "dvc.yaml")
    clone = tmp_path / "clone"
    sh(tmp_path, "git", "clone", "-q", str(repo), str(clone))
    assert not (clone / "data/real/train").exists()
    env.update(AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY)
    sh(clone, "dvc", "pull", "-q", "dvc.yaml")
    assert "up to date" in sh(clone, "dvc", "status", "dvc.yaml")
    datasets = ["data/real/train", "data/real/val", "data/real/test", "data/synthetic/raw", "data/synthetic/curated"]
    out = sh(clone, "factory", "verify", *datasets)
    assert out.count("OK ") == len(datasets), out
    for d in datasets:
        assert Dataset(clone / d).index_sha256 == Dataset(repo / d).index_sha256


LOOP = """
generations: 2
max_generations: 3
images: 0.04
fresh_images: 0.03
train: {steps: 2, batch_size: 16}
sampler: {scheduler: dpm, steps: 3, guidance_scale: 1.0, batch_size: 8}
corrector: {clusters: 4}
sims: {w: 1.0, images: 0.02, steps: 2}
sims_study: {w: [0, 1], steps: [2], images: 30}
measure: {draws: 1, bootstrap: 10, k: 2, cas_steps: 3, cas_seeds: [0], denoise_timesteps: [100, 500],
          reference_epochs: 1}
runs:
  replace: {policy: replace}
  fresh_corrected: {policy: fresh, corrector: kmeans}
  sims: {policy: replace, sampler: sims}
"""


def ran_stages(out: str) -> set[str]:
    """The stages a dvc repro (or factory loop run, whose lines carry a ``[chain] `` prefix) ran."""
    lines = (line.split("] ", 1)[1] if line.startswith("[") and "] " in line else line for line in out.splitlines())
    return {line.split("'")[1].split(":")[-1] for line in lines if line.startswith("Running stage")}


def test_loop_runs_stops_resumes_extends_and_proves_its_lineage(repo):
    """make loop's pipeline for real: interrupted part-way and resumed; every generation's pool and samples
    carry the lineage the policy says; a SIMS sample regenerates byte for byte; raising loop.generations
    leaves every finished generation up to date (tests/test_loop_lineage.py checks every policy's pool)."""
    import json
    import signal
    import time

    import psutil
    import yaml

    for committed in ("metrics/loop", "plots/loop", "reports/loop.md", "loop/dvc.lock"):  # the real run's
        path = repo / committed
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["loop"] = {**params.get("loop", {}), **yaml.safe_load(LOOP)}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    bindir = Path(sys.executable).parent
    env = {**os.environ, "PATH": str(bindir) + os.pathsep + os.environ["PATH"], "PYTHONPATH": str(repo),
           "DVC_NO_ANALYTICS": "1"}
    r = subprocess.run([str(bindir / "factory"), "loop", "stages"], cwd=repo, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    # 1. stopped part-way: interrupt the loop once a first generation is made ...
    # SIGINT as a terminal's Ctrl-C sends it; a shell that starts a job in the background without job control
    # (nohup ... &, some CI runners) leaves SIGINT ignored, and children inherit that: restore the default
    proc = subprocess.Popen([str(bindir / "dvc"), "repro", "loop/dvc.yaml"], cwd=repo, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lock = repo / "loop" / "dvc.lock"

    def made() -> set[str]:  # the generation stages DVC has recorded as made
        stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {}) if lock.is_file() else {}
        return {name for name in stages if name == "loop_first" or name.startswith("loop_generation@")}

    def generation_running() -> bool:  # a generation stage's command is running (DVC ignores SIGINT meanwhile)
        try:
            children = psutil.Process(proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return False
        return any("loop_generation.py" in " ".join(c.cmdline()) for c in children if c.is_running())

    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not (made() and generation_running()):
        time.sleep(0.2)
    assert proc.poll() is None, "the loop finished before it could be interrupted: " + proc.communicate()[0]
    # Ctrl-C while a stage runs: the stage stops and DVC fails cleanly (between two stages DVC 3 can be caught
    # writing .dvc/tmp/rwlock, which it then cannot read: the README says to delete that file)
    os.killpg(proc.pid, signal.SIGINT)
    out = proc.communicate(timeout=120)[0]
    done = made()
    assert done and proc.returncode != 0, out
    # ... and resumed as make loop resumes (factory loop run: runs' chains two at a time): what was made is not
    # made again, and the pipeline ends up to date
    p = subprocess.run([str(bindir / "factory"), "loop", "run", "--jobs", "2"], cwd=repo, env=env, capture_output=True,
                       text=True)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
    assert "4 chains, 2 at a time" in p.stdout, p.stdout[:2000]  # 3 runs and the SIMS study
    assert ran_stages(p.stdout)  # the interrupted loop's remaining stages ran
    s = dvc(repo, "status", "loop/dvc.yaml")
    assert s.returncode == 0 and "up to date" in s.stdout, s.stdout
    assert "loop_first" in done
    for name in done:
        assert f"Stage 'loop/dvc.yaml:{name}' didn't change, skipping" in p.stdout, p.stdout
    assert not done & ran_stages(p.stdout)
    # 2. lineage: generation 2 of each run trained on what its policy says, from provenance
    real = Dataset(repo / "data/real/train")
    for run, want in (("replace", {"1"}), ("fresh_corrected", {"0", "1"}), ("sims", {"1"})):
        pool = json.loads((repo / f"data/loop/{run}/g2.pool.json").read_text())
        assert set(pool["loop"]["generations"]) == want, (run, pool["loop"])
        refs = [c["dataset"] for c in pool["components"]]
        ds = Dataset(repo / f"data/loop/{run}/g2")
        for s in ds:
            assert s.provenance["generation"] == 2 and s.provenance["parents"] == refs
        assert verify(ds.path).ok
        if "0" in want:
            assert refs[0]["index_sha256"] == real.index_sha256
    corrected = json.loads((repo / "data/loop/fresh_corrected/g2.pool.json").read_text())["components"][1]
    assert corrected["dataset"]["path"] == "data/loop/fresh_corrected/g1.side/corrected"
    rec = next(Dataset(repo / corrected["dataset"]["path"]).records())
    assert rec["correction"]["method"] == "kmeans" and rec["generation"] == 1
    sims = next(iter(Dataset(repo / "data/loop/sims/g2")))
    neg = sims.provenance["generator"]["negative_guidance"]
    assert neg["method"] == "sims" and neg["w"] == 1.0 and neg["model"] == "data/loop/sims/g2.side/aux-model"
    r = subprocess.run([str(bindir / "factory"), "regenerate", "data/loop/sims/g2", sims.key, "again.png"], cwd=repo,
                       env=env, capture_output=True, text=True)
    assert r.returncode == 0 and "match" in r.stdout.lower(), r.stdout + r.stderr
    # 3. metrics: one row per generation, the past-the-end generation idle
    for run in ("replace", "fresh_corrected", "sims"):
        m = json.loads((repo / f"metrics/loop/{run}.json").read_text())
        assert [row["generation"] for row in m["generations"]] == [1, 2]
        assert json.loads((repo / f"metrics/loop/{run}/g3.json").read_text())["active"] is False
    page = (repo / "reports/loop.md").read_text()
    assert "### sims (policy replace, sampler sims)" in page and "SIMS negative guidance at generation 1" in page
    study = json.loads((repo / "metrics/loop/sims_study.json").read_text())
    assert {r_["set"] for r_ in study["rows"]} == {"w0", "w1-b2"} and study["reference"] == "real val"
    # 4. extended: with loop.generations=3 only generation 3 (and what gathers the rows) is out of date,
    #    so `dvc exp run -S loop.generations=3 loop/dvc.yaml` redoes no finished generation
    params["loop"]["generations"] = 3
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    p = dvc(repo, "repro", "loop/dvc.yaml:loop_schedule")
    assert p.returncode == 0, p.stdout + p.stderr
    p = dvc(repo, "status", "loop/dvc.yaml")
    assert p.returncode == 0, p.stdout + p.stderr
    stale = {line.split(":")[1].strip() for line in p.stdout.splitlines() if line.startswith("loop/dvc.yaml:")}
    assert stale == {f"loop_generation@{r_}-g3" for r_ in ("replace", "fresh_corrected", "sims")}, p.stdout


def test_exp_run_guidance_reruns_only_generate(repo):
    # the shrunk run is the baseline commit, as a user's last `dvc repro` + `git commit` would be
    git_env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
               "GIT_COMMITTER_EMAIL": "t@t"}
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run(["git", "commit", "-qm", "shrunk run", "--allow-empty"], cwd=repo, check=True, env=git_env)
    p = dvc(repo, "exp", "run", "-S", "generate.guidance_scale=1", "report")
    assert p.returncode == 0, p.stdout + p.stderr
    ran = {line.split("'")[1] for line in p.stdout.splitlines() if line.startswith("Running stage")}
    assert {"generate", "curate", "report"} <= ran, p.stdout
    upstream = {"ingest", "split", "plan", "train_generator", "train_clip", "sweep@1"}
    assert not ran & upstream, p.stdout  # nothing upstream, and not the sweep (it sets its own guidance)
    assert not {r for r in ran if r.startswith("bias")}, p.stdout
    s = next(iter(Dataset(repo / "data/synthetic/raw")))
    assert s.provenance["generator"]["guidance_scale"] == 1.0
    # what the experiment moved fits a terminal: the headline metrics and the one param (--drop '.*/': the
    # data dependencies' hashes, which an experiment changes by the dozen); rich's natural width, untruncated
    p = subprocess.run([os.path.join(str(Path(sys.executable).parent), "dvc"), "exp", "show", "--only-changed",
                        "--drop", ".*/", "--no-pager"], cwd=repo, capture_output=True, text=True,
                       env={**os.environ, "COLUMNS": "1000", "DVC_NO_ANALYTICS": "1",
                            "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"]})
    lines = [ln.rstrip() for ln in p.stdout.splitlines() if ln.strip()]
    assert p.returncode == 0 and "…" not in p.stdout, p.stdout + p.stderr
    header = next(ln for ln in lines if "Experiment" in ln).split()
    # (the photos' params.yaml has the same key: DVC names this one params.yaml:generate.guidance_scale)
    assert any(h.endswith("generate.guidance_scale") for h in header), p.stdout
    assert {"cas", "fd"} <= set(header) and "real" not in header, p.stdout  # real train: unchanged
    assert max(map(len, lines)) <= 132, p.stdout  # a wide terminal (VT100: 132 columns)


def test_param_change_reruns_only_the_split(repo):
    before = (repo / "data/real/full/index.json").read_bytes()
    params = (repo / "params.yaml").read_text().replace("test_fraction: 0.2", "test_fraction: 0.3")
    (repo / "params.yaml").write_text(params)
    p = dvc(repo, "repro", "split")
    assert p.returncode == 0, p.stderr
    assert "Stage 'ingest' didn't change" in p.stdout and "Running stage 'split'" in p.stdout
    assert (repo / "data/real/full/index.json").read_bytes() == before
    assert len(Dataset(repo / "data/real/test")) == 539
