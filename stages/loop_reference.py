"""Stage ``loop_reference``: the reference CNN of the loops' metrics, trained on real train only.

    python stages/loop_reference.py TRAIN TEST OUT
    # loop/dvc.yaml: python stages/loop_reference.py data/real/train data/real/test models/loop/reference

The independent evaluator (its penultimate layer is the feature space of FD, KID, precision and recall;
its predictions give the recognition rate): the same model and recipe as the evaluate stage's.
"""

from factory.config import load_params
from factory.core.stage import run_stage, stage_args
from factory.measure.recognition import save_reference_classifier, train_reference_classifier


def main() -> None:
    args = stage_args(__doc__, ("train", "real train"), ("test", "real test (its accuracy is recorded)"),
                      ("out", "the model folder to write"))
    lp = load_params().loop
    model, info = train_reference_classifier(args.train, epochs=lp.measure.reference_epochs, seed=lp.seed,
                                             test=args.test)
    info.pop("seconds", None)  # same seed, same bytes: no wall-clock time in the folder
    save_reference_classifier(model, info, args.out)
    print(f"loop_reference: real test accuracy {info.get('test_accuracy')}")


if __name__ == "__main__":
    run_stage(main)
