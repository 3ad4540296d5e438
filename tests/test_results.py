"""The README's results are those of the committed run: README quotes reports/results.md word for word, and
reports/results.md and every metrics file are the outputs dvc.lock records for that run (same md5)."""

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from factory.core.errors import FactoryError
from factory.measure.report import quoted_results, readme_with_results, results_block

REPO = Path(__file__).resolve().parent.parent


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def locked_outputs(dirs: bool = False) -> dict[str, str]:
    """Every file output (md5) that dvc.lock and loop/dvc.lock record, metrics and reports included (paths
    from the repository root: the loop stages run there); ``dirs``: the folder outputs instead (``.dir`` md5)."""
    out = {}
    for lock_file in (REPO / "dvc.lock", REPO / "loop" / "dvc.lock"):
        lock = yaml.safe_load(lock_file.read_text())
        for stage in lock["stages"].values():
            for o in stage.get("outs", []):
                if "md5" in o and o["md5"].endswith(".dir") == dirs:
                    out[o["path"]] = o["md5"]
    return out


def dir_md5(folder: Path) -> str:
    """DVC's hash of a folder output: the md5 of its sorted (md5, relpath) listing, as JSON, plus ``.dir``."""
    files = sorted((f for f in folder.rglob("*") if f.is_file()), key=lambda f: f.relative_to(folder).parts)
    listing = [{"md5": md5(f), "relpath": f.relative_to(folder).as_posix()} for f in files]
    return hashlib.md5(json.dumps(listing, sort_keys=True).encode()).hexdigest() + ".dir"


@pytest.mark.parametrize("name", ["reports/results.md", "reports/loop.md"])
def test_readme_quotes_the_committed_results_md(name):
    results = (REPO / name).read_text()
    assert quoted_results((REPO / "README.md").read_text(), name) == results_block(results), \
        f"README's results differ from {name}: run `make readme`"


def test_results_and_metrics_are_the_locked_run_outputs():
    locked = locked_outputs()
    committed = ["reports/results.md", "reports/loop.md", "reports/curate.json", "metrics/evaluate.json",
                 "metrics/bias.json", "metrics/loop/sims_study.json",
                 *(str(p.relative_to(REPO)) for p in sorted((REPO / "metrics").rglob("*.json")))]
    folders = {p: h for p, h in locked_outputs(dirs=True).items() if p.startswith("metrics/")}
    for folder, digest in folders.items():  # the compact metrics (metrics/summary): a folder output each
        assert dir_md5(REPO / folder) == digest, f"{folder} is not the folder of the run dvc.lock records"
    for path in committed:
        if any(path.startswith(f + "/") for f in folders):
            continue
        assert path in locked, f"{path} is not an output in dvc.lock"
        assert md5(REPO / path) == locked[path], f"{path} is not the file of the run dvc.lock records"


def test_readme_sync_replaces_only_the_block():
    from factory.measure.report import RESULTS_BEGIN, RESULTS_END

    readme = f"intro\n{RESULTS_BEGIN}\nold\n{RESULTS_END}\nafter\n"
    new = readme_with_results(readme, "# Results\n\n## A\n\n| x |\n")
    assert new == f"intro\n{RESULTS_BEGIN}\n\n## A\n\n| x |\n\n{RESULTS_END}\nafter\n"
    assert quoted_results(new) == results_block("# Results\n\n## A\n\n| x |\n")
    with pytest.raises(FactoryError, match="expected one"):
        readme_with_results("no markers", "# Results")
