"""The layout's rules, checked on the source: plugins meet only through the core's public faces,
the core's modules import no loop, and no module grows past one sitting's reading."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "core" / "rqf"
PLUGINS = sorted(p for p in (ROOT / "plugins").iterdir() if (p / "pyproject.toml").exists())
# what a plugin may import of the core: its faces (rqf.testing in tests and testing helpers)
FACES = {"rqf", "rqf.codes", "rqf.ranking"}
MAX_LINES = 450


def _imports(path: Path) -> list[tuple[str, int]]:
    """(module, line) of every import in a file, functions' included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.module, node.lineno))
    return found


def _packages() -> dict[str, Path]:
    return {pkg.name: pkg for plugin in PLUGINS for pkg in plugin.glob("rqf_*")
            if pkg.is_dir() and not pkg.name.endswith(".egg-info")}


def test_plugins_import_no_other_plugin_and_only_the_cores_faces():
    packages = _packages()
    problems = []
    for name, pkg in packages.items():
        for path in pkg.rglob("*.py"):
            allowed = FACES | ({"rqf.testing"} if path.name == "testing.py" else set())
            for module, line in _imports(path):
                top = module.split(".")[0]
                where = f"{path.relative_to(ROOT)}:{line}"
                if top in packages and top != name:
                    problems.append(f"{where} imports another plugin, {module}")
                if top == "rqf" and module not in allowed:
                    problems.append(f"{where} imports {module}, not a face of the core")
    assert problems == []


def test_the_cores_modules_import_no_loop_at_import_time():
    graph: dict[str, set[str]] = {}
    for path in CORE.rglob("*.py"):
        parts = path.relative_to(CORE.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        tree = ast.parse(path.read_text())
        deps = set()
        for node in tree.body:  # module level only: an import inside a function runs later
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rqf"):
                deps.add(node.module)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("rqf"))
        graph[module] = {d for d in deps if d != module}
    state: dict[str, int] = {}

    def visit(module: str, trail: list[str]) -> list[str] | None:
        state[module] = 1
        for dep in sorted(graph.get(module, ())):
            parent = module.rsplit(".", 1)[0]
            if dep == parent or dep not in graph:  # a package's own face, or outside the core
                continue
            if state.get(dep) == 1:
                return trail + [module, dep]
            if dep not in state and (loop := visit(dep, trail + [module])):
                return loop
        state[module] = 2
        return None

    loops = [loop for m in sorted(graph) if m not in state and (loop := visit(m, []))]
    assert loops == []


def test_no_module_of_the_core_or_a_plugin_is_over_450_lines():
    long = {str(p.relative_to(ROOT)): n for root in (CORE, *PLUGINS) for p in root.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_each_face_lists_its_names_in_a_literal_all():
    for face in ("__init__.py", "codes/__init__.py", "ranking/__init__.py"):
        tree = ast.parse((CORE / face).read_text())
        [value] = [node.value for node in tree.body if isinstance(node, ast.Assign)
                   and any(getattr(t, "id", "") == "__all__" for t in node.targets)]
        names = ast.literal_eval(value)
        assert names and len(names) == len(set(names)), face
