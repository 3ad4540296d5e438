"""Stage ``curate``: ``data/synthetic/raw`` -> ``data/synthetic/curated`` (+ rejected) and ``reports/curate.json``."""

from factory.config import curate_config, load_params
from factory.core.stage import run_stage
from factory.curate.filter import curate
from factory.curate.scorers import load_scorer


def main() -> None:
    params = load_params()
    c = params.curate
    scorer = load_scorer(c.scorer_backend, c.scorer_model, c.scorer_checkpoint)
    result = curate("data/synthetic/raw", "data/synthetic/curated", scorer=scorer, cfg=curate_config(params),
                    calibrate_on=params.plan.dataset, test=["data/real/test"], train=[params.plan.dataset],
                    plan="data/prompts/plan.jsonl", rejected_dir="data/synthetic/rejected",
                    report_path="reports/curate.json", overwrite=True)
    r = result.report
    print(f"curate: kept {r['kept']} of {r['samples']}; " +
          ", ".join(f"{k} {v}" for k, v in r["reasons"].items() if k != "kept" and v))


if __name__ == "__main__":
    run_stage(main)
