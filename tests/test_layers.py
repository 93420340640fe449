"""The package's import graph, read with `ast`: layers only look back, stages stand alone,
no cycles, and the detector a miner loads pulls in no training code."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "roadwork_cache"

# The data flow, first to last; runtime/ sits beside every layer (it imports only itself).
LAYERS = (
    "readers",
    "synth",
    "views",
    "backbone",
    "store",
    "heads",
    "training",
    "inference",
    "reports",
    "stages",
    "cli",
)
RUNTIME = "runtime"
STAGE_CALLERS = {"roadwork_cache.stages.demo"}  # chains the commands, so it may call them


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(path: Path, known: set[str]) -> set[str]:
    """Every roadwork_cache module `path` imports, at any depth (function-local too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from pkg import sub` imports the module pkg.sub when there is one
            names = [
                f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                for a in node.names
            ]
        found.update(n for n in names if n == "roadwork_cache" or n.startswith("roadwork_cache."))
    return found


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None  # None: the package root (the facade)


def rank(module: str) -> int:
    layer = layer_of(module)
    if layer is None:
        return len(LAYERS)  # the root re-exports the detector: it sits above everything
    if layer == RUNTIME:
        return -1
    return LAYERS.index(layer)


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(path, set(mods)) for name, path in mods.items()}


def test_every_module_is_in_a_layer():
    strays = [m for m in modules() if layer_of(m) not in (*LAYERS, RUNTIME, None)]
    assert not strays, f"modules outside the layers {LAYERS} and runtime: {strays}"


def test_every_module_says_what_it_holds():
    """`ls roadwork_cache` shows the flow; each module's first line says its one job."""
    vague = {
        name: ast.get_docstring(ast.parse(path.read_text()))
        for name, path in modules().items()
        if path.name not in ("__init__.py", "__main__.py")
    }
    vague = {n: d for n, d in vague.items() if not d or len(d) < 20 or "TODO" in d}
    assert not vague, f"modules without a docstring that says what they hold: {vague}"


def test_layers_only_import_earlier_layers(graph):
    wrong = []
    for module, deps in graph.items():
        for dep in deps:
            if layer_of(module) == RUNTIME and layer_of(dep) != RUNTIME:
                wrong.append(f"{module} -> {dep} (runtime imports only runtime)")
            elif rank(dep) > rank(module):
                wrong.append(f"{module} -> {dep}")
    assert not wrong, "imports from a later layer:\n" + "\n".join(sorted(wrong))


def test_no_stage_imports_another_stage(graph):
    wrong = [
        f"{module} -> {dep}"
        for module, deps in graph.items()
        if layer_of(module) == "stages" and module not in STAGE_CALLERS
        for dep in deps
        if layer_of(dep) == "stages" and dep != "roadwork_cache.stages"
    ]
    assert not wrong, "stages importing stages:\n" + "\n".join(wrong)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return stack[stack.index(dep) :] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_package_has_no_import_cycle(graph):
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


DETECTOR_SCRIPT = """
import json, sys
from PIL import Image
from roadwork_cache import RoadworkDetector
run, ensemble = sys.argv[1], sys.argv[2]
answers = [RoadworkDetector.load(m, device="cpu")(Image.new("RGB", (224, 224), (90, 120, 60)))
           for m in (run, ensemble)]
banned = sorted(m for m in sys.modules if m.split(".")[0] in ("sklearn", "scipy")
                or m.startswith("roadwork_cache.training"))
print(json.dumps({"answers": answers, "banned": banned}))
"""


def test_the_detector_loads_without_training_code(tmp_path):
    from helpers import tiny_models

    run, ensemble = tiny_models(tmp_path)
    out = subprocess.run(
        [sys.executable, "-c", DETECTOR_SCRIPT, str(run), str(ensemble)],
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert all(0.0 <= p <= 1.0 for p in result["answers"])
    assert result["banned"] == [], f"the detector imported {result['banned']}"


def test_no_two_public_names_mean_two_things():
    """A public top-level function or class has one definition in the package."""
    where: dict[str, list[str]] = {}
    for name, path in modules().items():
        for node in ast.parse(path.read_text()).body:
            public = not node.name.startswith("_") if hasattr(node, "name") else False
            if isinstance(node, ast.FunctionDef | ast.ClassDef) and public:
                where.setdefault(node.name, []).append(name)
    twice = {n: m for n, m in where.items() if len(m) > 1}
    assert not twice, f"defined in several modules: {twice}"
