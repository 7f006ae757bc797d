"""The package's layout: every module imports only from its own layer or the layers below, never gradio."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "kaldn"

# Lowest first. A module may import from its own layer (without cycles) and the layers below it.
LAYERS = [
    {"registry", "errors", "settings", "resize", "images", "metrics", "display", "maps",
     "workdirs", "expiring", "admission"},                                                  # foundations
    {"layers", "archs", "models", "checkpoint", "hub", "inference", "data"},               # models and weights
    {"cache", "gates", "train", "results", "cards", "evaluate", "release", "convert"},     # tools over models
    {"inputs", "choices", "comparison", "runs", "session_models", "finetune", "inspection"},  # the app's logic
    {"cli", "__main__", "__init__"},                                                       # entry points
]


def _layer(module: str) -> int:
    top = module.split(".")[0]
    return next(i for i, layer in enumerate(LAYERS) if top in layer)


def _imports() -> dict[str, set[str]]:
    graph = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts)
        package = list(parts[:-1])
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package[:len(package) - node.level + 1]
                deps.add(".".join(base + ([node.module] if node.module else [])) or "__init__")
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in ("gradio", "pandas"):
                deps.add("!" + node.module)
            elif isinstance(node, ast.Import):
                deps.update("!" + a.name for a in node.names if a.name.split(".")[0] in ("gradio", "pandas"))
        graph[module] = deps
    return graph


def test_every_module_has_a_layer_and_imports_no_ui_library():
    graph = _imports()
    for module, deps in graph.items():
        _layer(module)  # StopIteration: a new module needs a place in LAYERS
        assert not [d for d in deps if d.startswith("!")], f"{module} imports {deps}: the library never imports UI"


def test_no_module_imports_upward_or_in_a_cycle():
    graph = _imports()
    for module, deps in graph.items():
        for dep in deps:
            assert _layer(dep) <= _layer(module), f"{module} imports {dep}, a layer above it"

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, f"import cycle: {' -> '.join(path + (module,))}"
        for dep in graph[module]:
            if dep in graph and dep != "__init__":  # importing kaldn.x runs kaldn/__init__ first: not a cycle
                visit(dep, path + (module,))

    for module in graph:
        if module not in ("__init__", "__main__"):
            visit(module, ())
