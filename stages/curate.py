"""Stage ``curate``: a raw synthetic dataset -> the curated one, the rejected one and the curation report.

The mismatch thresholds come from the REAL val split, every val image scored against the plan's
template(s) filled with its class and attributes (the samples' caption form); real train is checked for
memorised copies, real test for leaks, and the report says which share of real val and real test the
thresholds would reject.

    python stages/curate.py RAW OUT --rejected DIR --report FILE --plan FILE --val DATASET --train DATASET
        --test DATASET
    # dvc.yaml: python stages/curate.py data/synthetic/raw data/synthetic/curated
    #           --rejected data/synthetic/rejected --report reports/curate.json
    #           --plan data/prompts/plan.jsonl --val data/real/val --train ${plan.dataset} --test data/real/test
"""


from factory.config import load_params
from factory.core.stage import run_stage, stage_args
from factory.curate.filter import curate
from factory.curate.scorers import load_scorer


def main() -> None:
    args = stage_args(__doc__,
                      ("raw", "the synthetic dataset to curate"),
                      ("out", "the curated dataset folder to write"),
                      ("--rejected", "the dataset folder of rejected samples to write"),
                      ("--report", "the curation report (JSON) to write"),
                      ("--plan", "the raw set's prompt plan (the quotas of the rebalancing)"),
                      ("--val", "the real val split: the thresholds are calibrated on it"),
                      ("--train", "the real train split (memorised copies)"),
                      ("--test", "a real test split (test leaks; repeatable)", {"action": "append"}))
    c = load_params().curate
    scorer = load_scorer(c.scorer_backend, c.scorer_model, c.scorer_checkpoint, device=c.scorer_device)
    result = curate(args.raw, args.out, scorer=scorer, cfg=c, calibrate_on=args.val, test=args.test,
                    train=[args.train], plan=args.plan, rejected_dir=args.rejected, report_path=args.report,
                    overwrite=True)
    r = result.report
    print(f"curate: kept {r['kept']} of {r['samples']}; " +
          ", ".join(f"{k} {v}" for k, v in r["reasons"].items() if k != "kept" and v))
    cal = r["calibration"]
    if cal:
        print(f"curate: thresholds from {cal['n']} real val images (percentile {cal['percentile']}) would reject " +
              ", ".join(f"{100 * v:.1f}% of real {k}" for k, v in cal["reject_share"].items()))


if __name__ == "__main__":
    run_stage(main)
