"""``loop/dvc.yaml``: the loops as DVC stages, one per run and generation, written from params.yaml's runs.

``factory loop stages`` writes it (and ``--check`` says whether the committed file is current).
``loop_first`` makes generation 1 of every run (the main generator's samples; one process, so runs that
sample the same plan are measured once); per run r, ``loop_generation@r-g<k>`` for k = 2 ..
``loop.max_generations``, each depending on generation k-1's outputs and on its own schedule entry;
``loop_metrics@r`` gathers the rows. Stages past ``loop.generations`` do no work (see :mod:`factory.loops.schedule`), so
``dvc exp run -S loop.generations=8 loop/dvc.yaml`` extends every run without redoing a finished generation,
and ``dvc repro loop/dvc.yaml`` after a stop resumes at the first generation not made. Every stage lists,
as deps, the files of ``factory/`` its script imports (:func:`factory.core.code.code_deps`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from factory.config import Params
from factory.core.code import code_deps as _code_deps
from factory.core.code import import_graph

HEADER = """\
# The self-consuming loops (make loop; `dvc repro loop/dvc.yaml`). WRITTEN BY `factory loop stages` from
# params.yaml's loop.runs and loop.max_generations: edit params.yaml and run that command, do not edit this
# file. Stages past loop.generations do nothing (their outputs hold an inactive.json), so
# `dvc exp run -S loop.generations=8 loop/dvc.yaml` adds generations 6-8 and reruns nothing else.
# Paths are relative to the repository root.
"""

PLOTTED = ("fd", "kid", "precision", "recall", "recognition", "cas", "diversity", "near_duplicate_rate",
           "denoise_loss")


def render(params: Params, root: Path = Path(".")) -> str:
    """The text of ``loop/dvc.yaml`` for ``params``' runs."""
    graph = import_graph(root)  # built once: every stage's code deps come from it

    def code_deps(root: Path, script: str) -> list[str]:
        return _code_deps(root, script, graph)

    runs = list(params.loop.runs)
    top = params.loop.max_generations
    gens = {f"{r}-g{k}": {"run": r, "k": k, "prev": k - 1} for r in runs for k in range(2, top + 1)}
    gen_code = code_deps(root, "stages/loop_generation.py")
    reals = ["data/real/train", "data/real/val", "data/real/test"]
    common = "--schedule data/loop/schedule --reference models/loop/reference --test data/real/test --val data/real/val"

    def outs(run: str, k: str) -> list[Any]:
        return [f"data/loop/{run}/g{k}", f"data/loop/{run}/g{k}.pool.json", f"data/loop/{run}/g{k}.side",
                f"models/loop/{run}/g{k}", {f"metrics/loop/{run}/g{k}.json": {"cache": False}}]

    stages: dict[str, Any] = {
        "loop_schedule": {"wdir": "..", "cmd": "python stages/loop_schedule.py data/loop/schedule",
                          "deps": code_deps(root, "stages/loop_schedule.py"),
                          "params": ["base.seed", "loop", "train_generator", "classifier"],
                          "outs": [{"data/loop/schedule": {"cache": False}}]},
        "loop_reference": {"wdir": "..", "cmd": "python stages/loop_reference.py data/real/train data/real/test "
                                               "models/loop/reference",
                           "deps": [*code_deps(root, "stages/loop_reference.py"), "data/real/train", "data/real/test"],
                           "params": ["loop.measure.reference_epochs", "base.seed"],
                           "outs": ["models/loop/reference"]},
        "loop_sims_study": {"wdir": "..",
                            "cmd": "python stages/loop_sims_study.py data/loop/sims_study --reference "
                                   "models/loop/reference --train data/real/train --val data/real/val "
                                   "--metrics metrics/loop/sims_study.json --plot plots/loop/sims_study.json",
                            "deps": [*code_deps(root, "stages/loop_sims_study.py"), "models/generator",
                                     "models/loop/reference", "data/real/train", "data/real/val"],
                            "params": ["loop.sims_study", "loop.sims.images", "loop.sampler", "loop.train",
                                       "loop.measure", "base.seed", "loop.generator", "train_generator"],
                            "outs": ["data/loop/sims_study", {"plots/loop/sims_study.json": {"cache": False}},
                                     {"metrics/loop/sims_study.json": {"cache": False}}]},
        "loop_first": {
            "wdir": "..", "cmd": f"python stages/loop_first.py {' '.join(runs)} {common}",
            "deps": [*code_deps(root, "stages/loop_first.py"), *[f"data/loop/schedule/{r}-g1.json" for r in runs],
                     "models/loop/reference", "models/generator", *reals],
            "outs": [o for r in runs for o in outs(r, "1")]},
        "loop_generation": {"foreach": "${loop_generations}", "do": {
            "wdir": "..", "cmd": f"python stages/loop_generation.py ${{item.run}} ${{item.k}} {common}",
            "deps": [*gen_code, "data/loop/schedule/${item.run}-g${item.k}.json", "models/loop/reference", *reals,
                     "data/loop/${item.run}/g${item.prev}", "data/loop/${item.run}/g${item.prev}.side",
                     "models/loop/${item.run}/g${item.prev}"],
            "outs": outs("${item.run}", "${item.k}")}},
        "loop_metrics": {"foreach": runs, "do": {
            "wdir": "..",
            "cmd": "python stages/loop_metrics.py ${item} metrics/loop/${item} --metrics metrics/loop/${item}.json "
                   "--plot plots/loop/${item}.json",
            "deps": [*code_deps(root, "stages/loop_metrics.py"),
                     *[f"metrics/loop/${{item}}/g{k}.json" for k in range(1, top + 1)]],
            "outs": [{"plots/loop/${item}.json": {"cache": False}}, {"metrics/loop/${item}.json": {"cache": False}}]}},
        # the DVC metrics: the headline (fd per run); a compact line per run in metrics/loop/summary
        # (factory/measure/summary.py); the files above are plain outputs
        # reports/loop.html: the visual page (factory/measure/loop_page.py), a contact sheet per run and generation
        "loop_report": {"wdir": "..", "cmd": "python stages/loop_report.py metrics/loop --markdown reports/loop.md "
                                             "--summary metrics/loop/summary --headline metrics/loop/headline.json "
                                             "--html reports/loop.html --data data/loop",
                        "deps": [*code_deps(root, "stages/loop_report.py"),
                                 *[f"metrics/loop/{r}.json" for r in runs], "metrics/loop/sims_study.json",
                                 *[f"data/loop/{r}/g{k}" for r in runs for k in range(1, top + 1)]],
                        "params": ["loop.runs", "base.seed"],
                        "outs": [{"reports/loop.md": {"cache": False}}, {"metrics/loop/summary": {"cache": False}},
                                 {"reports/loop.html": {"cache": False}}],
                        "metrics": [{"metrics/loop/headline.json": {"cache": False}}]},
    }
    plots = [{f"loop_{m}": {"x": "generation", "y": {f"../plots/loop/{r}.json": m for r in runs},
                            "title": f"{m} by generation, one line per run"}} for m in PLOTTED]
    plots.append({"loop_sims_study_fd": {"x": "w", "y": {"../plots/loop/sims_study.json": "fd"},
                                         "title": "SIMS at generation 1: FD to real val against w"}})
    doc = {"vars": [{"loop_generations": gens}], "stages": stages, "plots": plots}
    return HEADER + yaml.safe_dump(doc, sort_keys=False, width=120, default_flow_style=None)


def write(params: Params, path: Path | str = Path("loop/dvc.yaml"), root: Path = Path(".")) -> bool:
    """Write ``path``; True if its content changed."""
    path = Path(path)
    text = render(params, root)
    if path.is_file() and path.read_text() == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return True
