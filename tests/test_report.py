"""The results page and plot data are built from the metrics files, never invented."""

import json

import pytest

from factory.measure.report import fraction_rows, load_metrics, render, to_html


def write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def classifier(pool, top1, frac, n, ci=None, seeds=(0, 1, 2)):
    return {"pool": pool, "top1": top1, "top1_mean": top1, "top1_ci95": ci, "seeds": list(seeds),
            "synthetic_fraction": frac, "n_train": n, "per_class": {}}


def test_report_tables_and_fraction_plot(tmp_path):
    write(tmp_path / "metrics/classifier/real.json", classifier("real", 0.98, 0.0, 800, [0.975, 0.985]))
    write(tmp_path / "metrics/classifier/half.json", classifier("half", 0.97, 0.5, 800, [0.95, 0.99]))
    write(tmp_path / "metrics/classifier/low.json", classifier("low", 0.90, 1.0, 800, [0.88, 0.92]))
    write(tmp_path / "metrics/contrastive/synthetic.json",
          {"pool": "synthetic", "n_train": 1000, "synthetic_fraction": 1.0, "methods": {
              "simclr": {"top1": 0.9, "top1_ci95": [0.85, 0.95], "top1_10shot": 0.8, "seeds": [0, 1, 2]},
              "stablerep": {"top1": 0.95, "effective_synthetic_share": 0.75},
              "stablerep_plus": {"skipped": "why"}}})
    split = {"top1_mean": 0.8, "top1_ci95": [0.7, 0.9], "consistent_top1_mean": 0.99, "flipped_top1_mean": 0.78,
             "gap_mean": 0.21, "gap_ci95": [0.1, 0.32]}
    write(tmp_path / "metrics/bias.json", {"train_correlation": 0.95, "val_correlation": 0.11, "test_correlation": 0.1,
                                           "chosen_on": "val", "seeds": [0, 1, 2], "pools": {
        "biased": {"n_train": 1400, "synthetic_fraction": 0.0, "val": {**split, "top1_mean": 0.81}, "test": split}},
        "synthetic": {"balanced": {"samples": 600, "agreement": 0.9, "unmeasured": 2,
                                   "realised": {"tv_mean_per_class": 0.12}, "requested": {"tv_mean_per_class": 0.0}}}})
    write(tmp_path / "reports/timings/train_classifier/real.json", {"seconds": 3.0, "images_per_second": 9.0})
    m = load_metrics(["real", "half", "low", "absent"], ["synthetic"], classifier=tmp_path / "metrics/classifier",
                     contrastive=tmp_path / "metrics/contrastive", evaluate=tmp_path / "metrics/evaluate.json",
                     bias=tmp_path / "metrics/bias.json", curate=tmp_path / "reports/curate.json",
                     classifier_timings=tmp_path / "reports/timings/train_classifier",
                     baselines={"half": "real", "low": "real", "absent": "real"})
    assert m["classifier"]["absent"] is None and m["evaluate"] is None
    md = render(m)
    assert "| real | 800 | 0.0% | 98.0% [97.5, 98.5] | 3 |  | 3 |" in md  # seconds from the timings
    # intervals overlap: the difference is within noise; they do not: below
    assert "| half | 800 | 50.0% | 97.0% [95.0, 99.0] | 3 | -1.0 pt, within noise (real) | n/a |" in md
    assert "| low | 800 | 100.0% | 90.0% [88.0, 92.0] | 3 | -8.0 pt, below (real) | n/a |" in md
    assert "| absent | missing |" in md  # a missing metrics file is reported, not filled in
    assert "| synthetic | simclr | 100.0% | 3 | 90.0% [85.0, 95.0] | 80.0% |" in md
    assert "| synthetic | stablerep | 75.0% | 1 | 95.0% | n/a |" in md
    assert "| synthetic | stablerep_plus |  |  | skipped (why) |  |" in md
    assert ("| biased | 1400 | 0.0% | 81.0% [70.0, 90.0] | 80.0% [70.0, 90.0] | 99.0% | 78.0% "
            "| +21.0 pt [+10.0, +32.0] |") in md
    assert "| balanced | 600 | 90.0% | 2 | 0.120 | 0.000 |" in md
    assert "Synthetic datasets" not in md  # no evaluate metrics, no table
    rows = fraction_rows(m["classifier"], ["half", "real", "absent"])
    assert [r["pool"] for r in rows] == ["real", "half"] and rows[1]["synthetic_fraction"] == 0.5
    page = to_html(md)
    assert page.count("<table>") == 4 and "<td>98.0% [97.5, 98.5]</td>" in page


def metric_row(fd, lo, hi, **extra):
    row = {m: 0.5 for m in ("kid", "precision", "recall", "density", "coverage")}
    row.update({f"{m}_ci95": [0.4, 0.6] for m in ("kid", "precision", "recall", "density", "coverage")})
    return {**row, "fd": fd, "fd_ci95": [lo, hi], **extra}


def test_report_evaluation_floor_row_intervals_and_noise():
    floor = {"label": "real (floor)", "path": "data/real/train", "samples": 1438, "note": "real train for now",
             **metric_row(2.0, 1.5, 2.5), "views": {"clip": metric_row(0.01, 0.005, 0.02)}}
    near = {"samples": 996, "guidance_scale": 2.0, "recognition": 0.99, "class_balance_tv": 0.004,
            **metric_row(2.2, 1.9, 2.6, within_noise={"fd": True, "kid": True, "precision": False}),
            "views": {"clip": metric_row(0.03, 0.025, 0.04, within_noise={"fd": False})}}
    ev = {"encoder": {"kind": "reference_cnn"}, "n": 359, "draws": 5, "bootstrap": 200,
          "views": {"reference_cnn": {"label": "reference CNN (independent)"},
                    "clip": {"label": "CLIP (the curation filter's space: not independent)"}},
          "reference_classifier": {"test_accuracy": 0.99}, "floor": floor, "datasets": {"curated": near}}
    md = render({"classifier": {}, "contrastive": {}, "evaluate": ev, "bias": None, "curate": None})
    assert "n = 359 images per side" in md and "5 seeded draws" in md and "reference CNN (independent)" in md
    assert "| real (floor) | 1438 |  |  |  | 2.0000 [1.5000, 2.5000] |" in md
    assert "| curated | 996 | 2.0 | 99.0% | n/a | 2.2000 [1.9000, 2.6000] | 0.5000 [0.4000, 0.6000] |" in md
    assert md.rstrip().endswith("| curated | 0.0300 [0.0250, 0.0400] | 0.5000 [0.4000, 0.6000] | 0.500 [0.400, 0.600] "
                                "| 0.500 [0.400, 0.600] | 0.500 [0.400, 0.600] | 0.500 [0.400, 0.600] | none |")
    assert "| 0.004 | fd, kid |" in md  # within noise of the floor: the metrics whose intervals overlap
    assert "Feature space: CLIP (the curation filter's space: not independent); same n and draws." in md
    assert "Floor: data/real/train (real train for now)." in md


def test_report_calibration_shares_per_threshold_and_whether_test_is_within_noise():
    cur = {"samples": 10, "kept": 9, "rejected": 1, "reasons": {"kept": 9, "mismatch": 1}, "filter": {},
           "calibration": {"split": "data/real/val", "n": 287, "percentile": 5.0, "reject_share": {"val": 0.087},
                           "reject_share_detail": {
                               "val": {"n": 287, "score": 0.05, "margin": 0.05, "either": 0.087,
                                       "either_ci95": [0.06, 0.118]},
                               "test": {"n": 359, "score": 0.064, "margin": 0.07, "either": 0.114,
                                        "either_ci95": [0.085, 0.146]}}}}
    md = render({"classifier": {}, "contrastive": {}, "evaluate": None, "bias": None, "curate": cur})
    assert ("they would reject 8.7% [6.0, 11.8] of real val (score alone 5.0%, margin alone 5.0%); "
            "11.4% [8.5, 14.6] of real test (score alone 6.4%, margin alone 7.0%)") in md
    assert "inside the val share's interval: within noise." in md
    cur["calibration"]["reject_share_detail"]["test"]["either"] = 0.2
    md = render({"classifier": {}, "contrastive": {}, "evaluate": None, "bias": None, "curate": cur})
    assert "outside the val share's interval." in md and "within noise" not in md.split("Thresholds")[1]
    # an older curate report (shares only) still renders
    del cur["calibration"]["reject_share_detail"]
    md = render({"classifier": {}, "contrastive": {}, "evaluate": None, "bias": None, "curate": cur})
    assert "they would reject 8.7% of real val." in md


def _gen(k, fd, lo, hi, cas, cas_ci):
    return {"generation": k, "active": True, "pool": {"samples": 100, "generations": {"0": 50, str(k - 1): 50}},
            "fd": fd, "fd_ci95": [lo, hi], "kid": 0.1, "kid_ci95": [0.05, 0.15], "precision": 0.7, "recall": 0.6,
            "recognition": 0.9, "cas": cas, "cas_ci95": cas_ci,
            "diversity": {"mean_pairwise_distance": 10.0, "real_mean_pairwise_distance": 12.0,
                          "near_duplicate_rate": 0.01},
            "denoise_loss": {"mean": 0.12345}, "floor": {"fd": 1.0, "fd_ci95": [0.5, 1.5]}}


def test_loop_report_rows_trends_and_the_sims_study():
    from factory.measure.loop_report import render_loop

    runs = {"replace": {"policy": "replace", "sampler": "plain", "corrector": None,
                        "generations": [_gen(1, 2.0, 1.5, 2.5, 0.9, [0.88, 0.92]), _gen(2, 5.0, 4.0, 6.0, 0.91, [0.9, 0.93]),
                                        {"generation": 3, "active": False}]},
            "fresh": None}
    study = {"n": 287, "draws": 3, "bootstrap": 100, "encoder": "reference CNN", "floor": {
        "label": "real train vs real val", "fd": 1.0, "fd_ci95": [0.5, 1.5]},
        "rows": [{"set": "w0", "w": 0.0, "steps": None, "fd": 3.0, "fd_ci95": [2.0, 4.0], "kid": 0.1,
                  "kid_ci95": [0.0, 0.2], "precision": 0.7, "recall": 0.6, "recognition": 0.95, "vs_w0": {}},
                 {"set": "w1-b30", "w": 1.0, "steps": 30, "fd": 2.5, "fd_ci95": [1.8, 3.2], "kid": 0.09,
                  "kid_ci95": [0.0, 0.2], "precision": 0.7, "recall": 0.6, "recognition": 0.96,
                  "vs_w0": {"fd": "within noise", "kid": "within noise"}}],
        "best_fd": {"set": "w1-b30", "w": 1.0, "steps": 30, "vs_w0": {"fd": "within noise", "kid": "within noise"}}}
    md = render_loop(runs, study, ["replace", "fresh"])
    assert "### replace (policy replace, sampler plain)" in md and "### fresh" not in md
    assert "| 1 | 100 (g0: 50) | 2.0000 [1.5000, 2.5000] | 0.1000 [0.0500, 0.1500] | 0.700 | 0.600 | 90.0% |" in md
    assert "| 2 | 100 (g0: 50, g1: 50) | 5.0000 [4.0000, 6.0000] |" in md
    assert "| 3 |" not in md  # an idle generation is not a row
    assert "From generation 1 to 2: FD up, KID within noise, CAS within noise" in md
    assert "| 1.0 | 30 | 2.5000 [1.8000, 3.2000] |" in md and "Lowest FD: w = 1.0 at B = 30 (fd within noise" in md


def test_compact_summary_lines(tmp_path):
    """dvc metrics show reads these: a few short columns, a file per pool, method, dataset and run."""
    from factory.measure.summary import loop_row, summary_files, write_summary

    m = {"classifier": {"real": classifier("real", 0.98123, 0.0, 800, [0.975, 0.985]), "gone": None},
         "contrastive": {"synthetic": {"methods": {"simclr": {"top1_mean": 0.9, "top1_ci95": [0.85, 0.95],
                                                             "top1_10shot_mean": 0.8}}}},
         "evaluate": {"floor": {"fd": 1.5, "kid": 0.1, "precision": 0.9, "recall": 0.95},
                      "datasets": {"raw": {"fd": 20.0, "kid": 2.0, "precision": 0.8, "recall": 0.7,
                                           "recognition": 0.99, "cas": 0.96, "per_draw": [1, 2]}}},
         "bias": {"pools": {"biased": {"test": {"top1_mean": 0.3, "top1_ci95": [0.1, 0.5], "gap_mean": 0.7}}}},
         "curate": {"samples": 100, "kept": 90, "rejected": 10, "leaks": [{"key": "a"}]}}
    files = summary_files(m)
    assert files == {
        "classifier/real": {"top1": 0.9812, "lo": 0.975, "hi": 0.985, "synthetic": 0.0, "n": 800},
        "contrastive/synthetic-simclr": {"top1": 0.9, "lo": 0.85, "hi": 0.95, "top1_10shot": 0.8},
        "evaluate/floor": {"fd": 1.5, "kid": 0.1, "precision": 0.9, "recall": 0.95},
        "evaluate/raw": {"fd": 20.0, "kid": 2.0, "precision": 0.8, "recall": 0.7, "recognition": 0.99, "cas": 0.96},
        "bias/biased": {"top1": 0.3, "lo": 0.1, "hi": 0.5, "gap": 0.7},
        "curate": {"n": 100, "kept": 90, "rejected": 10, "leaks": 1}}
    out = tmp_path / "metrics" / "summary"
    (out / "classifier").mkdir(parents=True)
    (out / "classifier" / "stale.json").write_text("{}")  # a pool that is gone does not linger
    write_summary(out, files)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.json")) == sorted(f"{k}.json" for k in files)
    assert json.loads((out / "curate.json").read_text()) == files["curate"]
    rows = [{"generation": 1, "fd": 40.0, "cas": 0.9, "recognition": 0.8},
            {"generation": 2, "fd": 50.0, "cas": 0.8, "recognition": 0.7}, {"generation": 3, "active": False}]
    assert loop_row({"generations": rows}) == {"generations": 2, "fd": 50.0, "recognition": 0.7, "cas": 0.8,
                                               "fd_g1": 40.0}


def test_headline_picks_the_named_summary_values():
    """metrics/headline.json, the only DVC metrics file: the values report.headline names, none filled in."""
    from factory.measure.summary import headline, loop_headline

    files = {"classifier/real": {"top1": 0.98, "lo": 0.97}, "evaluate/curated": {"fd": 12.5, "recognition": 0.99},
             "curate": {"kept": 90}}
    spec = {"real": "classifier/real:top1", "mixed": "classifier/real_synthetic:top1", "fd": "evaluate/curated:fd",
            "kept": "curate:kept", "lo": "classifier/real:lo", "missing_key": "curate:nothing"}
    assert headline(files, spec) == {"real": 0.98, "fd": 12.5, "kept": 90, "lo": 0.97}
    assert loop_headline({"replace": {"fd": 50.0}, "sims": {"generations": 0}}) == {"loop_fd": {"replace": 50.0}}
    assert loop_headline({}) == {}


@pytest.mark.parametrize("ref", ["classifier/real", ":top1", "classifier/real:"])
def test_a_headline_that_names_no_file_and_key_is_one_line(ref):
    from factory.config.measure import ReportParams

    with pytest.raises(Exception, match="not '<summary file>:<key>'"):
        ReportParams(headline={"x": ref})
    assert ReportParams().headline["cas"] == "classifier/synthetic:top1"
