"""The visual report (reports/index.html): one self-contained page built from a run's own outputs."""

import base64
import io
import json
import re
from html.parser import HTMLParser

import pytest
from PIL import Image

from factory.core.errors import FactoryError
from factory.core.sample import real_sample, with_updates
from factory.core.shards import DatasetWriter
from factory.measure.loop_page import build_loop_page
from factory.measure.page import CHARTS, SECTIONS, PageInputs, build, named_datasets, write_report
from factory.measure.report import load_metrics, render
from factory.measure.runinfo import run_info, stage_timings
from factory.measure.sheets import choose

CLASSES = ["zero", "one", "two"]
POOLS = ["real", "synthetic", "frac0", "frac100"]


class Parsed(HTMLParser):
    """Every tag's attributes, the text under each id'd element, and the parser's own complaints."""

    def __init__(self, page):
        super().__init__()
        self.tags, self.ids, self.text, self.open = [], set(), [], []
        self.feed(page)
        self.close()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        if "id" in a:
            assert a["id"] not in self.ids, f"duplicate id {a['id']}"
            self.ids.add(a["id"])

    def handle_data(self, data):
        self.text.append(data)


def png(value, size=8):
    buf = io.BytesIO()
    Image.new("L", (size, size), value).save(buf, format="PNG")
    return buf.getvalue()


def sample(key, label, value, **updates):
    s = real_sample(key, png(value), label, CLASSES[label], {"dataset": "t", "index": key})
    return with_updates(s, **updates) if updates else s


def dataset(path, samples):
    with DatasetWriter(path, path.name, CLASSES, shard_size=4) as w:
        w.write_all(samples)
    return path


def write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def classifier(pool, top1, frac, confusion=True):
    m = {"pool": pool, "top1": top1, "top1_mean": top1, "top1_ci95": [top1 - 0.02, top1 + 0.01], "seeds": [0, 1],
         "synthetic_fraction": frac, "n_train": 60, "per_class": {c: top1 for c in CLASSES},
         "per_class_ci95": {c: [top1 - 0.05, min(1.0, top1 + 0.05)] for c in CLASSES},
         "history": [{"step": 50, "test_top1": top1 - 0.1}, {"step": 100, "test_top1": top1}]}
    if confusion:
        m.update(confusion=[[9, 1, 0], [0, 10, 0], [2, 0, 8]], confusion_note="summed over the 2 training seeds")
    return m


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny run: real val and test, curated and rejected sets with scores and decisions (a leak of test's
    t-1 with its evidence, a near-duplicate and an over-quota sample curated before evidence existed),
    classifier, evaluation and curation metrics, dvclive curves and timings."""
    root = tmp_path_factory.mktemp("run")
    test = dataset(root / "test", [sample(f"t-{i}", i % 3, 40 * i) for i in range(6)])
    dataset(root / "val", [sample(f"v-{i}", i % 3, 20 * i) for i in range(9)])
    dataset(root / "curated", [sample(f"c-{i}", i % 3, 25 * i, scores={"clip": 0.7 + i / 100, "clip_margin": 0.3})
                               for i in range(6)])
    leak = {"kept": False, "reason": "leak", "min_score": 0.6261, "min_margin": 0.1299,
            "evidence": {"matched_key": "t-1", "matched_dataset": str(test), "distance": 0, "method": "phash"}}
    low = {"kept": False, "reason": "low_clip_score", "min_score": 0.6261, "min_margin": 0.1299,
           "evidence": {"clip": 0.41, "threshold": 0.6261}}
    old = {"kept": False, "reason": "near_duplicate", "min_score": 0.6261, "min_margin": 0.1299}
    quota = {"kept": False, "reason": "over_quota", "min_score": 0.6261, "min_margin": 0.1299,
             "evidence": {"class": "two", "cell": {"slant": "left"}, "quota": 3, "survivors": 4}}
    dataset(root / "rejected", [
        sample("r-leak", 1, 40, scores={"clip": 0.8, "clip_margin": 0.4}, decision=leak),
        sample("r-low", 0, 200, scores={"clip": 0.41, "clip_margin": 0.2}, decision=low),
        sample("r-dup", 2, 90, scores={"clip": 0.75, "clip_margin": 0.3}, decision=old),
        sample("r-quota", 2, 99, scores={"clip": 0.77, "clip_margin": 0.31}, decision=quota)])
    for pool, top1, frac in (("real", 0.95, 0.0), ("synthetic", 0.9, 1.0), ("frac0", 0.93, 0.0),
                             ("frac100", 0.88, 1.0)):
        write(root / f"metrics/classifier/{pool}.json", classifier(pool, top1, frac))
        write(root / f"reports/timings/train_classifier/{pool}.json", {"seconds": 2.5})
        for curve, values in (("train/loss", [0.9, 0.2]), ("test/top1", [top1 - 0.1, top1])):
            for sub, shift in (("", 0.0), ("seed0/", -0.01), ("seed1/", 0.01)):
                f = root / f"dvclive/classifier/{pool}/plots/metrics/{sub}{curve}.tsv"
                f.parent.mkdir(parents=True, exist_ok=True)
                f.write_text("step\tv\n" + "".join(f"{i}\t{v + shift}\n" for i, v in enumerate(values)))
    write(root / "reports/timings/evaluate.json", {"seconds": 12.0})
    write(root / "metrics/evaluate.json", {"encoder": {"kind": "reference_cnn"},
                                           "reference_classifier": {"test_accuracy": 0.99}, "datasets": {
        name: {"guidance_scale": g, "cas": c, "cas_ci95": [c - 0.01, c + 0.01], "recognition": r, "samples": 6,
               "recognition_per_class": {k: r for k in CLASSES}, "class_balance_tv": 0.0, "fd": 3.0}
        for name, g, c, r in (("w1", 1.0, 0.9, 0.8), ("raw", 2.0, 0.91, 0.95), ("w4", 4.0, 0.89, 0.99))}})
    cur = {"samples": 10, "kept": 6, "rejected": 4, "reasons": {"kept": 6, "leak": 1, "low_clip_score": 1},
           "filter": {"thresholds": {"min_score": 0.6261, "min_margin": 0.1299}},
           "calibration": {"split": "val", "n": 9, "scores": {"clip": [0.7, 0.72, 0.8, 0.65], "clip_margin":
                                                              [0.2, 0.3, 0.35, 0.15]}}}
    write(root / "reports/curate.json", cur)
    (root / "params.yaml").write_text("base: {seed: 0}\n")
    return root


def inputs(root, **changes):
    metrics = load_metrics(POOLS, classifier=root / "metrics/classifier", evaluate=root / "metrics/evaluate.json",
                           curate=root / "reports/curate.json",
                           classifier_timings=root / "reports/timings/train_classifier")
    base = dict(metrics=metrics, markdown=render(metrics),
                run=run_info(root, root / "params.yaml", root / "reports/timings"),
                sheets=[("real val", root / "val"), ("curated", root / "curated")], rejected=root / "rejected",
                score_sets=[root / "curated", root / "rejected"], lookup={str(root / "test"): root / "test"},
                guidance=[{"dataset": d} for d in ("w1", "raw", "w4")], fraction_pools=["frac0", "frac100"],
                dvclive=root / "dvclive/classifier", per_class=2, cell=16)
    return PageInputs(**{**base, **changes})


@pytest.fixture(scope="module")
def page(run):
    return build(inputs(run))


def decoded(src):
    head, _, data = src.partition(",")
    assert head in ("data:image/png;base64", "data:image/jpeg;base64"), head
    im = Image.open(io.BytesIO(base64.b64decode(data)))
    im.load()
    return im


def section(page, ident):
    """The HTML of the <section id=ident> (sections do not nest)."""
    return page.split(f'<section id="{ident}">', 1)[1].split("</section>\n", 1)[0]


def test_page_is_self_contained_and_complete(run, page):
    p = Parsed(page.html)
    assert set(SECTIONS) | set(CHARTS) | {"hist-clip", "hist-clip-margin", "sheet-real-val"} <= p.ids
    imgs = [a["src"] for t, a in p.tags if t == "img"]
    assert len(imgs) >= 6
    for src in imgs:
        im = decoded(src)
        assert im.width > 0 and im.height > 0
    refs = [v for _, a in p.tags for k, v in a.items() if k in ("src", "href", "xlink:href") and v]
    assert not [r for r in refs if re.match(r"\s*(https?:)?//", r)], refs
    assert not re.search(r"url\(\s*['\"]?(https?:)?//", page.html)
    assert "<script" not in page.html and "@import" not in page.html
    assert len(page.html) < 3_000_000
    # every table of results.md is in the page
    assert section(page.html, "tables").count("<table>") == sum(
        1 for line in inputs(run).markdown.splitlines() if line.startswith("|---"))


def test_contact_sheets_have_a_labelled_row_per_class(run, page):
    sheet = page.html.split('id="sheet-real-val"', 1)[1].split("</section>", 1)[0]
    assert [m for m in re.findall(r"<tr><th>([^<]*)</th>", sheet)] == CLASSES
    assert sheet.count("<img") == 3  # a strip per class
    assert decoded(re.search(r'src="([^"]+)"', sheet).group(1)).width == 2 * (16 + 2) + 2  # 2 per class
    # deterministic: the same inputs give the same sheets; README figures come with them
    assert build(inputs(run)).figures["samples-real-val.png"] == page.figures["samples-real-val.png"]
    assert {"samples-curated.png", "guidance.png", "fraction.png"} <= set(page.figures)
    assert decoded("data:image/png;base64," + base64.b64encode(page.figures["guidance.png"]).decode()).width > 0


def test_rejected_samples_show_their_evidence_and_matched_image(run, page):
    html = section(page.html, "rejected")
    leak = html.split('id="rejected-leak"', 1)[1].split("</div>", 1)[0]
    assert 'alt="rejected r-leak"' in leak and 'alt="matched t-1"' in leak  # the test image beside it
    assert "phash distance 0 to" in leak and "t-1" in leak
    low = html.split('id="rejected-low-clip-score"', 1)[1].split("</div>", 1)[0]
    assert "CLIP score 0.410 &lt; threshold 0.626" in low
    assert "quota 3, 4 survivors" in html and "slant left" in html
    dup = html.split('id="rejected-near-duplicate"', 1)[1].split("</div>", 1)[0]
    assert "matched image not recorded" in dup  # an older record: said, not invented
    # the matched dataset not among the inputs: a visible note instead of the image
    html = section(build(inputs(run, lookup={})).html, "rejected")
    assert 'alt="matched t-1"' not in html and "not among the report&#x27;s inputs" in html


def test_histograms_show_real_and_synthetic_scores_and_thresholds(page):
    html = section(page.html, "scores")
    for ident, value in (("hist-clip", "0.6261"), ("hist-clip-margin", "0.1299")):
        fig = html.split(f'<figure id="{ident}">', 1)[1].split("</figure>", 1)[0]
        assert "<svg" in fig and f"threshold {float(value):.3f}" in fig and value in fig  # drawn and captioned
        assert "real val (4 scores)" in fig and "synthetic (raw) (10 scores)" in fig  # curated + rejected


def test_charts_draw_intervals_and_confusion(page):
    html = section(page.html, "charts")
    for ident in CHARTS:
        assert "<svg" in html.split(f'<figure id="{ident}">', 1)[1].split("</figure>", 1)[0], ident
    assert "summed over the 2 training seeds" in html
    assert html.count('id="chart-guidance-') > 0  # ids prefixed per chart: no clash between charts


def test_missing_inputs_render_as_notes(run, tmp_path):
    metrics = load_metrics(POOLS, classifier=tmp_path / "none", evaluate=tmp_path / "none.json",
                           curate=tmp_path / "none.json")
    page = build(PageInputs(metrics=metrics, markdown=render(metrics), run=run_info(tmp_path),
                            sheets=[("raw", tmp_path / "absent")], rejected=tmp_path / "absent-rejected",
                            dvclive=tmp_path / "absent-live"))
    p = Parsed(page.html)
    assert set(SECTIONS) | set(CHARTS) <= p.ids
    notes = re.findall(r'<p class="note">([^<]*)</p>', page.html)
    assert any("raw: not available" in n for n in notes) and any("rejected samples not available" in n
                                                                  for n in notes)
    assert any("curation report not available" in n for n in notes)
    assert any("confusion matrix not recorded" in n for n in notes)
    assert any("training curves not recorded" in n for n in notes)
    assert any("guidance chart: no evaluation metrics" in n for n in notes)
    assert "unknown (not a git work tree)" in page.html
    # a curation report from before calibration.scores: synthetic scores drawn alone, with a note
    old = json.loads((run / "reports/curate.json").read_text())
    del old["calibration"]["scores"]
    write(tmp_path / "curate.json", old)
    metrics = load_metrics(POOLS, curate=tmp_path / "curate.json")
    html = build(inputs(run, metrics=metrics)).html
    assert "real val scores not recorded" in section(html, "scores") and "<svg" in section(html, "scores")


def test_run_metadata(run, page):
    info = run_info(run, run / "params.yaml", run / "reports/timings")
    assert len(info["params_sha256"]) == 64 and info["date"].endswith("UTC")
    assert stage_timings(run / "reports/timings") == {"evaluate": 12.0, **{f"train_classifier@{p}": 2.5
                                                                           for p in sorted(POOLS)}}
    html = section(page.html, "run")
    assert '<p class="note">' not in html  # no notice in the results
    warned = build(inputs(run, markdown="# Results\n\n> **Random weights.** not a result\n\n## Tables\n"))
    assert section(warned.html, "run").startswith('<h2>Run</h2><p class="note">Random weights. not a result</p>')
    assert info["params_sha256"] in html and "train_classifier@real" in html and "torch" in html


def test_named_datasets_expand_a_folder_of_datasets_in_natural_order(run, tmp_path):
    for name in ("w10", "w4", "w1"):
        dataset(tmp_path / "guidance" / name, [sample(f"{name}-0", 0, 9)])
    (tmp_path / "guidance" / "notes").mkdir()  # not a dataset: left out
    assert named_datasets([f"curated={run / 'curated'}", f"guidance={tmp_path / 'guidance'}"]) == [
        ("curated", run / "curated")] + [(f"guidance {w}", tmp_path / "guidance" / w) for w in ("w1", "w4", "w10")]
    with pytest.raises(FactoryError, match="expected NAME=DIR"):
        named_datasets(["data/synthetic/raw"])


def test_loop_page_charts_every_run_and_sheets_every_generation(tmp_path):
    gens = [{"generation": k, "active": True, "fd": 10.0 * k, "fd_ci95": [9.0 * k, 11.0 * k], "cas": 0.9 - k / 20,
             "cas_ci95": [0.85 - k / 20, 0.95 - k / 20], "recognition": 0.9} for k in (1, 2)]
    for k in (1, 2):
        dataset(tmp_path / "loop" / "a" / f"g{k}", [sample(f"a{k}-{i}", i % 3, 30 * i + k) for i in range(6)])
    (tmp_path / "loop" / "a" / "g3").mkdir()
    (tmp_path / "loop" / "a" / "g3" / "inactive.json").write_text("{}")  # past loop.generations: no dataset
    md = "# Loops\n\n| run | fd |\n|---|---|\n| a | 10 |\n"
    html = build_loop_page({"a": {"generations": gens}, "b": None}, md, tmp_path / "loop", per_class=2, cell=16)
    p = Parsed(html)
    assert {"charts", "sheets", "tables", "chart-fd", "chart-cas", "sheet-a-g1", "sheet-a-g2"} <= p.ids
    assert "sheet-a-g3" not in p.ids and "no metrics for b" in html and "b: no generation" in html
    assert "<svg" in html.split('<figure id="chart-fd">', 1)[1].split("</figure>", 1)[0]
    assert "<td>10</td>" in section(html, "tables")
    for src in [a["src"] for t, a in p.tags if t == "img"]:
        assert decoded(src).width > 0
    assert re.findall(r"<tr><th>([^<]*)</th>", html.split('id="sheet-a-g1"', 1)[1].split("</section>")[0]) == CLASSES


def test_write_report_writes_the_page_the_figures_and_links_the_loop_page_if_there(run, tmp_path):
    metrics = inputs(run).metrics
    out = tmp_path / "reports"
    page = write_report(metrics, render(metrics), out / "index.html", sheets=[f"curated={run / 'curated'}"],
                        rejected=run / "rejected", matched=[run / "test"], dvclive=run / "dvclive/classifier",
                        timings=run / "reports/timings", params=run / "params.yaml",
                        fraction_pools=["frac0", "frac100"], loop_page=out / "loop.html", figures=out / "figures")
    assert (out / "index.html").read_text() == page.html and 'href="loop.html"' not in page.html  # no loop page yet
    assert sorted(p.name for p in (out / "figures").iterdir()) == sorted(page.figures)
    assert Image.open(out / "figures" / "samples-curated.png").width > 0
    assert 'alt="matched t-1"' in page.html
    (out / "loop.html").write_text("<!doctype html>")
    page = write_report(metrics, render(metrics), out / "index.html", loop_page=out / "loop.html")
    assert '<a href="loop.html">' in page.html


def test_the_sheet_choice_is_a_seeded_hash_not_the_order_of_the_shards():
    samples = [sample(f"k-{i}", i % 3, i) for i in range(30)]
    forward, backward = choose(samples, 4, seed=0), choose(samples[::-1], 4, seed=0)
    assert forward == backward and all(len(v) == 4 for v in forward.values())
    keys = lambda chosen: {s.key for v in chosen.values() for s in v}  # noqa: E731
    assert keys(choose(samples, 4, seed=1)) != keys(forward)  # another seed, another choice


def test_factory_report_writes_what_the_stage_writes(run, tmp_path):
    """factory report: the stage's call (make_report) with the paths on the command line; a real subprocess too."""
    import os
    import subprocess
    import sys

    from click.testing import CliRunner

    from factory.cli.main import cli
    from factory.config import Params
    from factory.measure.results import make_report

    args = ["--classifier", run / "metrics/classifier", "--evaluate", run / "metrics/evaluate.json",
            "--curate", run / "reports/curate.json", "--sheet", f"val={run / 'val'}", "--rejected", run / "rejected",
            "--matched", run / "test", "--dvclive", run / "dvclive/classifier", "--timings", run / "reports/timings"]
    out = tmp_path / "cli"
    r = CliRunner().invoke(cli, ["report", *map(str, args), "--markdown", str(out / "results.md"),
                                 "--html", str(out / "index.html"), "--figures", str(out / "figures"),
                                 "--headline", str(out / "headline.json"), "--json"])
    assert r.exit_code == 0, r.output
    shown = json.loads(r.output)
    assert shown["written"] == [str(out / f) for f in ("results.md", "index.html", "headline.json")]
    assert shown["figures"] and all(f.endswith(".png") for f in shown["figures"])
    lib = tmp_path / "lib"
    md = make_report(Params(), pools=sorted(p.stem for p in (run / "metrics/classifier").glob("*.json")),
                     contrastive_pools=[], classifier=run / "metrics/classifier",
                     evaluate=run / "metrics/evaluate.json", curate=run / "reports/curate.json",
                     markdown=lib / "results.md", headline_file=lib / "headline.json")
    assert (out / "results.md").read_text() == md and "| synthetic |" in md  # the pools: the folder's files
    assert (out / "headline.json").read_bytes() == (lib / "headline.json").read_bytes()
    parsed = Parsed((out / "index.html").read_text())
    assert set(SECTIONS) <= parsed.ids and "rejected-leak" in parsed.ids
    # nothing to write, and a bad input: one line, exit 2, nothing written
    r = CliRunner().invoke(cli, ["report", "--classifier", str(run / "metrics/classifier")])
    assert r.exit_code == 2 and "give --html and/or --markdown" in r.output
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    r = CliRunner().invoke(cli, ["report", "--evaluate", str(bad), "--markdown", str(tmp_path / "x" / "r.md")])
    assert r.exit_code == 2 and "bad.json" in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert not (tmp_path / "x" / "r.md").exists()
    p = subprocess.run([sys.executable, "-m", "factory.cli.main", "report", "--classifier",
                        str(run / "metrics/classifier"), "--markdown", str(tmp_path / "sub.md")],
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert p.returncode == 0 and p.stdout.strip() == f"wrote {tmp_path / 'sub.md'}", p.stdout + p.stderr
    assert (tmp_path / "sub.md").read_text().startswith("# Results")


def test_git_state_counts_code_changes_not_the_runs_own_outputs(tmp_path):
    """A run rewrites its outputs (metrics, reports, dvc.lock) before the report: that is not a dirty tree."""
    import subprocess

    from factory.measure.runinfo import git_state

    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
           "PATH": __import__("os").environ["PATH"]}
    files = {"factory/a.py": "x = 1\n", "params.yaml": "a: 1\n", "dvc.lock": "l\n", "metrics/m.json": "{}\n",
             "examples/p/reports/r.md": "r\n"}
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run(["git", "add", "-A"], cwd=tmp_path, check=True)
    subprocess.run(["git", "commit", "-qm", "c"], cwd=tmp_path, check=True, env=env)
    for name in ("dvc.lock", "metrics/m.json", "examples/p/reports/r.md"):
        (tmp_path / name).write_text("changed by the run\n")
    state = git_state(tmp_path)
    assert len(state["revision"]) == 40 and state["dirty"] is False and state["changed"] == []
    (tmp_path / "params.yaml").write_text("a: 2\n")
    (tmp_path / "factory/a.py").write_text("x = 2\n")
    assert git_state(tmp_path) == {"revision": state["revision"], "dirty": True,
                                   "changed": ["factory/a.py", "params.yaml"]}
    assert git_state(tmp_path / "nowhere")["dirty"] is None
