"""Stage ``evaluate``: every dataset of ``evaluate.datasets`` against the real test split ->
``metrics/evaluate.json`` (FD, precision/recall, density/coverage, recognition, CAS, balance)
and ``plots/guidance.json`` (the guidance trade-off)."""

from pathlib import Path

from factory.config import evaluation_config, load_params
from factory.core.files import write_json
from factory.core.stage import run_stage
from factory.measure.evaluation import evaluate_datasets, guidance_rows

OUT, PLOT = Path("metrics/evaluate.json"), Path("plots/guidance.json")


def main() -> None:
    params = load_params()
    cfg = evaluation_config(params)
    result = evaluate_datasets(cfg)
    write_json(OUT, result)
    write_json(PLOT, guidance_rows(result, list(cfg.guidance) or None))
    for name, d in result["datasets"].items():
        cas = f", CAS {d['cas']:.4f}" if "cas" in d else ""
        print(f"evaluate {name} (guidance {d['guidance_scale']}): FD {d['fd']:.4g}, precision {d['precision']:.3f}, "
              f"recall {d['recall']:.3f}, recognition {d['recognition']:.4f}{cas}")


if __name__ == "__main__":
    run_stage(main)
