"""Stage ``curate``: a raw synthetic dataset -> the curated one, the rejected one and the curation report.

    python stages/curate.py RAW OUT --rejected DIR --report FILE --plan FILE --train DATASET --test DATASET
    # dvc.yaml: python stages/curate.py data/synthetic/raw data/synthetic/curated
    #           --rejected data/synthetic/rejected --report reports/curate.json
    #           --plan data/prompts/plan.jsonl --train ${plan.dataset} --test data/real/test
"""

import argparse

from factory.config import load_params
from factory.core.stage import run_stage
from factory.curate.filter import curate
from factory.curate.scorers import load_scorer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("raw", help="the synthetic dataset to curate")
    ap.add_argument("out", help="the curated dataset folder to write")
    ap.add_argument("--rejected", required=True, help="the dataset folder of rejected samples to write")
    ap.add_argument("--report", required=True, help="the curation report (JSON) to write")
    ap.add_argument("--plan", required=True, help="the raw set's prompt plan (the quotas of the rebalancing)")
    ap.add_argument("--train", required=True, help="the real train split (calibration, memorised copies)")
    ap.add_argument("--test", required=True, action="append", help="a real test split (test leaks; repeatable)")
    args = ap.parse_args()
    c = load_params().curate
    scorer = load_scorer(c.scorer_backend, c.scorer_model, c.scorer_checkpoint)
    result = curate(args.raw, args.out, scorer=scorer, cfg=c, calibrate_on=args.train, test=args.test,
                    train=[args.train], plan=args.plan, rejected_dir=args.rejected, report_path=args.report,
                    overwrite=True)
    r = result.report
    print(f"curate: kept {r['kept']} of {r['samples']}; " +
          ", ".join(f"{k} {v}" for k, v in r["reasons"].items() if k != "kept" and v))


if __name__ == "__main__":
    run_stage(main)
