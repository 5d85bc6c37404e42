"""Data flows one way: lower layers never import higher ones, and nothing imports the trainer or the CLI.

Layers, low to high (a module may import its own layer and below):
  0 the nouns and the text protocol; 1 pure math, settings and the run folder's files; 2 the outside world
  (sandbox, models, data, generation); 3 episodes; 4 evaluation, the update, builders and what a run leaves
  behind; 5 the loop; 6 entry points.
A module's layer is that of the longest dotted prefix listed below (``generation.engine.decode`` -> ``generation``).
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "gtpo"

LAYERS = {
    "__init__": 0,
    "types": 0,
    "tools": 0,
    "config": 1,
    "method": 1,  # rewards, shaping, advantages, credit, losses: pure
    "model.head_logprobs": 1,
    "eval.stats": 1,
    "run.metrics": 1,
    "run.checkpoint": 1,
    "sandbox": 2,
    "data": 2,
    "prepare": 2,  # real parts as model folders, built from package-registry files
    "model": 2,
    "generation": 2,
    "training.batch": 2,
    "tasks": 2,
    "envs": 2,  # environments: the math tool episode, GEM games, user classes
    "distributed": 2,
    "rollout": 3,
    "tiny": 2,  # the shipped models: where they are, their config and tokenizer
    "tiny.build": 4,  # the rebuild pipeline trains and measures through the rollout
    "eval": 4,
    "components": 4,
    "training": 4,
    "run": 4,  # what a run prints and leaves behind: console, report, stop signals, HF export
    "demo": 4,
    "integrations": 4,
    "trainer": 5,
    "compare": 5,
    "eval.cli": 6,
    "cli": 6,
    "__main__": 6,
}
ENTRY_POINTS = {"trainer", "cli", "__main__", "eval.cli"}
MAY_IMPORT_ENTRY_POINTS = {"cli", "__main__", "compare", "eval.cli"}


def _layer_key(module: str) -> str | None:
    """The longest listed dotted prefix of ``module`` (relative to ``gtpo``)."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        key = ".".join(parts[:n])
        if key in LAYERS:
            return key
    return None


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "gtpo":
                found.update(alias.name for alias in node.names)
            elif node.module.startswith("gtpo."):
                found.add(node.module.removeprefix("gtpo."))
        elif isinstance(node, ast.Import):
            found.update(a.name.removeprefix("gtpo.") for a in node.names if a.name.startswith("gtpo."))
    return found


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts)


def _sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_every_module_has_a_layer():
    missing = sorted(m for m in map(_module, _sources()) if _layer_key(m) is None)
    assert not missing, f"add to LAYERS: {missing}"


def test_no_module_imports_a_higher_layer_or_an_entry_point():
    problems = []
    for path in _sources():
        owner = _layer_key(_module(path))
        for imported in _imports(path):
            key = _layer_key(imported)
            if key is None or key == owner:
                continue
            if LAYERS[key] > LAYERS[owner]:
                where = f"{path.relative_to(PACKAGE)} (layer {LAYERS[owner]})"
                problems.append(f"{where} imports {imported} ({LAYERS[key]})")
            elif key in ENTRY_POINTS and owner not in MAY_IMPORT_ENTRY_POINTS:
                problems.append(f"{path.relative_to(PACKAGE)} imports entry point {imported}")
    assert not problems, "\n".join(problems)


def test_no_import_cycle_between_modules():
    """Module-level imports only (those inside functions are deferred on purpose and cannot deadlock a start)."""
    modules = {_module(p): p for p in _sources()}
    graph = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("gtpo"):
                base = node.module.removeprefix("gtpo").removeprefix(".")
                for alias in node.names:
                    target = f"{base}.{alias.name}" if base else alias.name
                    deps.add(target if target in modules else base)
        graph[name] = {d for d in deps if d in modules and d != name and not name.startswith(d + ".")}
    cycles = []

    def visit(node: str, stack: list[str], done: set[str]) -> None:
        if node in stack:
            cycles.append(" -> ".join([*stack[stack.index(node) :], node]))
            return
        if node in done:
            return
        for dep in sorted(graph.get(node, ())):
            visit(dep, [*stack, node], done)
        done.add(node)

    done: set[str] = set()
    for name in sorted(graph):
        visit(name, [], done)
    assert not cycles, "\n".join(cycles)
