"""Data flows one way: lower layers never import higher ones, and nothing imports the trainer or the CLI.

Layers, low to high (a module may import its own layer and below):
  0 the nouns and the text protocol; 1 pure math and small utilities; 2 the outside world (sandbox, models,
  data, grading); 3 episodes and credit; 4 evaluation and components; 5 the loop; 6 entry points.
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "gtpo"

LAYERS = {
    "types": 0,
    "tools": 0,
    "advantages": 1,
    "losses": 1,
    "head_logprobs": 1,
    "rewards": 1,
    "similarity": 1,
    "eval_stats": 1,
    "config": 1,
    "problem_stream": 1,
    "metrics": 1,
    "checkpoint": 1,
    "sandbox": 2,
    "grading": 2,
    "data": 2,
    "prepare": 2,  # real parts as model folders, built from package-registry files
    "policy": 2,
    "generate": 2,
    "generate_vllm": 2,
    "engine": 2,
    "batch": 2,
    "tasks": 2,
    "tiny": 4,  # the rebuild pipeline trains and measures through the rollout
    "distributed": 2,
    "rollout": 3,
    "credit": 3,
    "groups": 3,
    "evaluate": 4,
    "eval_report": 4,
    "components": 4,
    "update": 4,
    "run": 4,  # what a run prints and leaves behind: console, report, stop signals, HF export
    "demo": 4,
    "integrations": 4,
    "trainer": 5,
    "compare": 5,
    "eval_cli": 6,
    "cli": 6,
    "__main__": 6,
    "__init__": 0,
}
ENTRY_POINTS = {"trainer", "cli", "__main__", "eval_cli"}


def _top(module: str) -> str:
    return module.split(".")[1] if module.startswith("gtpo.") else ""


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "gtpo":
                found.update(alias.name for alias in node.names)
            elif node.module.startswith("gtpo."):
                found.add(_top(node.module))
        elif isinstance(node, ast.Import):
            found.update(_top(alias.name) for alias in node.names if alias.name.startswith("gtpo."))
    return found - {""}


def _owner(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0]


def test_every_module_has_a_layer():
    owners = {_owner(p) for p in PACKAGE.rglob("*.py")}
    assert owners <= set(LAYERS), f"add to LAYERS: {sorted(owners - set(LAYERS))}"


def test_no_module_imports_a_higher_layer_or_an_entry_point():
    problems = []
    for path in PACKAGE.rglob("*.py"):
        owner = _owner(path)
        for imported in _imports(path):
            if imported == owner:
                continue
            if LAYERS.get(imported, 99) > LAYERS[owner]:
                problems.append(f"{path.relative_to(PACKAGE)} (layer {LAYERS[owner]}) imports {imported}")
            elif imported in ENTRY_POINTS and owner not in {"cli", "__main__", "compare", "eval_cli"}:
                problems.append(f"{path.relative_to(PACKAGE)} imports entry point {imported}")
    assert not problems, "\n".join(problems)
