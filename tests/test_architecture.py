"""The package's shape, checked from the code itself so it cannot drift.

- layers: ``core`` < ``config`` < ``data`` < ``generate`` < ``curate`` < ``train`` < ``measure`` < ``loops`` < ``share`` < ``cli``;
  a module imports only from its own layer or lower ones, so there is no import cycle between phases;
- no import cycle between modules either, and no module over 500 lines;
- every DVC stage declares, as deps, every file of ``factory/`` that its script imports, directly or
  through what those import, at any depth (a phase folder as a dep covers every file in it).
"""

from __future__ import annotations

import functools
from pathlib import Path

import yaml

from factory.core import code

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "factory"
LAYERS = ("core", "config", "data", "generate", "curate", "train", "measure", "loops", "share", "cli")
MAX_LINES = 500


def module_file(name: str) -> Path | None:
    return code.module_file(ROOT, name)


def imports_of(path: Path) -> set[str]:
    return code.imports_of(ROOT, path)


@functools.cache
def graph() -> dict[str, set[str]]:
    return code.import_graph(ROOT)


closure = code.closure


def layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


def test_lower_layers_never_import_higher_ones():
    bad = []
    for mod, deps in graph().items():
        me = layer(mod)
        for d in deps:
            if me is not None and layer(d) is not None and layer(d) > me:
                bad.append(f"{mod} -> {d}")
    assert not bad, "imports against the layer order " + " < ".join(LAYERS) + ":\n" + "\n".join(sorted(bad))


def test_no_import_cycle():
    g = graph()
    # packages' __init__ files re-export their submodules; an edge into one's own package is not a cycle
    edges = {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in g.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(edges.get(m, ())):
            if state.get(d) == 1:
                cycles.append(" -> ".join(path[path.index(d):] + [d]))
            elif d not in state:
                visit(d, path + [d])
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_no_module_over_500_lines():
    long = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def stage_scripts(dvc_yaml: Path) -> dict[str, tuple[Path, list[str]]]:
    """stage name -> (its script, its deps), for every stage (and foreach template) of a dvc.yaml."""
    stages = yaml.safe_load(dvc_yaml.read_text())["stages"]
    out = {}
    for name, st in stages.items():
        body = st.get("do", st)
        script = next((w for w in body["cmd"].split() if w.endswith(".py")), None)
        assert script is not None, f"stage {name}: no python script in its cmd {body['cmd']!r}"
        wdir = (dvc_yaml.parent / body.get("wdir", ".")).resolve()
        # deps as paths from the repository root (a pipeline in a subfolder writes them from its own wdir)
        deps = [str((wdir / str(d)).resolve().relative_to(ROOT)) if (wdir / str(d)).resolve().is_relative_to(ROOT)
                else str(d) for d in body.get("deps", []) if "${" not in str(d)]
        out[name] = ((wdir / script).resolve(), deps)
    return out


def undeclared(script: Path, deps: list[str], root: Path) -> list[str]:
    g = graph()
    needed = closure(imports_of(script), g)
    files = sorted(str(f.relative_to(ROOT)) for m in needed if (f := module_file(m)) is not None)
    declared = [d.rstrip("/") for d in deps]
    rel = str(script.relative_to(root))
    missing = [f for f in files if not any(f == d or f.startswith(d + "/") for d in declared)]
    if rel not in declared:
        missing.append(rel)
    return missing


def test_every_stage_declares_the_code_it_imports():
    missing = {}
    for dvc_yaml in (ROOT / "dvc.yaml", ROOT / "loop" / "dvc.yaml", ROOT / "examples" / "imagenette" / "dvc.yaml"):
        for name, (script, deps) in stage_scripts(dvc_yaml).items():
            m = undeclared(script, deps, ROOT)
            if m:
                missing[f"{dvc_yaml.relative_to(ROOT)}:{name}"] = m
    assert not missing, "stages whose deps miss code they import:\n" + "\n".join(
        f"  {name}: {', '.join(files)}" for name, files in missing.items())


def test_the_deps_check_catches_a_missing_file(tmp_path):
    """The check above can fail: a stage that declares only its script misses what the script imports."""
    script = ROOT / "stages" / "curate.py"
    missing = undeclared(script, ["stages/curate.py"], ROOT)
    assert "factory/curate/filter.py" in missing and "factory/core/errors.py" in missing
