"""Stage ``bias_benchmark``: train on each ``bias.pools`` pool with every ``classifier.seeds`` seed, test on
the colour-randomised real val and test splits -> the metrics (accuracy, colour-consistent vs
colour-flipped accuracy, and the gap: mean, 95% interval, per seed), and the realised colour balance of
the synthetic sets (measured from their pixels) beside the requested one.

    python stages/bias_benchmark.py TRAIN VAL TEST POOLS --balanced DIR --control DIR --metrics FILE --live DIR
    # dvc.yaml: python stages/bias_benchmark.py data/bias/real/train data/bias/real/val data/bias/real/test
    #           data/bias/pools --balanced data/bias/synthetic/raw --control data/bias/synthetic/control
    #           --metrics metrics/bias.json --live dvclive/bias
"""

from pathlib import Path

from dvclive import Live
from factory.config import load_params
from factory.core.files import write_json
from factory.core.stage import run_stage, stage_args
from factory.measure.bias import bias_benchmark


def _fmt(row: dict, metric: str) -> str:
    mean, ci = row[f"{metric}_mean"], row[f"{metric}_ci95"]
    if mean is None:
        return "n/a"
    return f"{mean:.4f}" + (f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci is not None else "")


def main() -> None:
    args = stage_args(__doc__,
                      ("train", "the biased real train split"),
                      ("val", "the colour-randomised real val split (design choices are read here)"),
                      ("test", "the colour-randomised real test split"),
                      ("pools", "the folder of bias.pools' pool files"),
                      ("--balanced", "the synthetic set of the balanced plan"),
                      ("--control", "the synthetic set of the control plan (biased like real train)"),
                      ("--metrics", "the metrics (JSON) to write"),
                      ("--live", "the folder of each pool's dvclive training curves (per seed, on val)"))
    params = load_params()
    bias = params.study("bias")
    values = [v for a in bias.plan.attributes if a.name == "color" for v in a.values] or None
    results = bias_benchmark(args.train, args.val, args.test,
                             {name: Path(args.pools) / f"{name}.json" for name in bias.pools},
                             params.classifier,
                             synthetic={"balanced": args.balanced, "control": args.control}, values=values,
                             live=lambda name: Live(f"{args.live}/{name}", dvcyaml=False, save_dvc_exp=False))
    write_json(args.metrics, results)
    for name, row in results["pools"].items():
        for split in ("val", "test"):
            r = row[split]
            print(f"bias_benchmark {name} {split}: top-1 {_fmt(r, 'top1')}, colour-consistent "
                  f"{_fmt(r, 'consistent_top1')}, colour-flipped {_fmt(r, 'flipped_top1')}, gap {_fmt(r, 'gap')}")
    for name, s in results["synthetic"].items():
        print(f"bias_benchmark {name} synthetic colour: realised mean per-class TV from uniform "
              f"{s['realised']['tv_mean_per_class']:.3f} (requested {s['requested']['tv_mean_per_class']:.3f}), "
              f"{s['agreement']:.1%} show the requested colour")


if __name__ == "__main__":
    run_stage(main)
