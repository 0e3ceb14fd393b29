"""Every import in the package, lazy ones inside functions included, runs down the layers below:
a shared piece lives under all of its users, so nothing needs an import hidden from a cycle."""

import ast
from pathlib import Path

import resnet_edge

PACKAGE = Path(resnet_edge.__file__).parent

# lowest first; a module may import from its own layer or any layer before it
LAYERS = [
    ["resnet_edge", "errors", "epoch", "outputs", "strictjson", "quiet", "metrics", "parity.gates", "runtime.cpu",
     "runtime.regression", "runtime.power", "deploy.archive", "deploy.signing"],
    ["artifacts", "data", "console", "pictures"],
    ["zoo"],
    ["runtime.gpu", "runtime.ort", "runtime.providers", "runtime.trt_rules", "runtime.trt_plan", "runtime.trt_runner", "runtime.trt_engine",
     "runtime.timing", "runtime.latency"],
    ["export"],
    ["backends", "bench", "calibration", "train"],
    ["parity", "verdict"],
    ["deploy"],
    ["pipeline"],
    ["cli", "pytest_plugin", "api"],
]


def layer_of(module: str) -> int:
    """The layer of the most specific entry naming the module or a package above it."""
    best, depth = None, -1
    for index, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and name.count(".") > depth:
                best, depth = index, name.count(".")
    assert best is not None, f"{module} is in no layer; add it to LAYERS"
    return best


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts) or "resnet_edge"


def is_module(name: str) -> bool:
    path = PACKAGE.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def imports_in(source: str, here: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, module) for every resnet_edge import in `source`, wherever it sits."""
    package = [] if here == "resnet_edge" else here.split(".")
    if not is_package:
        package = package[:-1]
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            base = package[:len(package) - (node.level - 1)]
        elif (node.module or "").split(".")[0] == "resnet_edge":
            base = []
            node.module = node.module.removeprefix("resnet_edge").lstrip(".") or None
        else:
            continue
        target = ".".join(base + ([node.module] if node.module else []))
        # from . import a, b: each name that is a module counts as that module
        found += [(node.lineno, f"{target}.{a.name}".lstrip(".")) for a in node.names
                  if is_module(f"{target}.{a.name}".lstrip("."))] or [(node.lineno, target or "resnet_edge")]
    return found


def imports_of(path: Path) -> list[tuple[int, str]]:
    return imports_in(path.read_text(), module_name(path), path.name == "__init__.py")


def test_no_import_runs_upward():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        here = module_name(path)
        for line, target in imports_of(path):
            if layer_of(target) > layer_of(here):
                upward.append(f"{path.relative_to(PACKAGE)}:{line} {here} imports {target}")
    assert not upward, "imports running upward:\n" + "\n".join(upward)


def test_layer_check_sees_lazy_imports():
    """The walk must find an import inside a function body, or the check above proves nothing."""
    found = {target for _, target in imports_of(PACKAGE / "bench.py")}
    assert {"export", "backends"} <= found
    lazy = "def f():\n    from .parity.run import run_parity\n"
    assert imports_in(lazy, "bench", False) == [(2, "parity.run")]
    assert layer_of("parity.run") > layer_of("bench")
    assert imports_in("from .. import metrics\n", "deploy.verify_bundle", False) == [(1, "metrics")]
    assert imports_in("from ..runtime import ort\n", "parity.run", False) == [(1, "runtime.ort")]
    assert imports_in("from resnet_edge.parity import gates\n", "cli", False) == [(1, "parity.gates")]


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import circle among the modules of `graph` (module -> modules it imports), each once."""
    found, seen = [], set()

    def visit(node, path):
        for nxt in sorted(graph.get(node, ())):
            if nxt in path:
                cycle = path[path.index(nxt):]
                key = frozenset(cycle)
                if key not in seen:
                    seen.add(key)
                    found.append(cycle + [nxt])
            elif len(path) < 12:
                visit(nxt, path + [nxt])
    for start in sorted(graph):
        visit(start, [start])
    return found


def test_no_module_imports_one_that_imports_it_back():
    """parity/report.py and parity/html.py imported each other (within one layer, which the
    layer check allows): a shared piece goes below both instead."""
    graph = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        here = module_name(path)
        # a package's __init__ re-exporting its own modules is not a circle of ideas
        graph[here] = {t for _, t in imports_of(path) if t != here and not here.startswith(t + ".")
                       and not (path.name == "__init__.py" and t.startswith(here + "."))}
    assert not _cycles(graph), _cycles(graph)
    assert _cycles({"a": {"b"}, "b": {"a"}}) == [["a", "b", "a"]]  # the check sees a circle



def target_imports(source: str, here: str) -> list[str]:
    """The other deployment targets a target module's `source` imports (base.py is every target's)."""
    family = "deploy.targets."
    return [f"{here}:{line} imports {target}" for line, target in imports_in(source, here, False)
            if target.startswith(family) and target not in (f"{family}base", here)]


def test_no_target_module_imports_another_target():
    """Adding a target touches its own module and the registry (targets/__init__.py) only:
    a target leaning on another would change when that one does."""
    modules = [p for p in sorted((PACKAGE / "deploy" / "targets").glob("*.py"))
               if p.name not in ("__init__.py", "base.py")]
    assert {p.stem for p in modules} >= {"engine", "triton", "deepstream"}
    leaning = [line for p in modules for line in target_imports(p.read_text(), module_name(p))]
    assert not leaning, "target modules importing other targets:\n" + "\n".join(leaning)
    # and the check sees one that does
    assert target_imports("from .base import Target\nfrom .triton import TRITON\n",
                          "deploy.targets.leaning") == ["deploy.targets.leaning:2 imports deploy.targets.triton"]


def test_a_long_module_says_why_at_its_top():
    """One room per idea: a module past about 400 lines says at its top why it stays one."""
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = path.read_text()
        doc = ast.get_docstring(ast.parse(source)) or ""
        if source.count("\n") > 400 and "Over 400 lines" not in doc:
            long.append(f"{path.relative_to(PACKAGE)}: {source.count(chr(10))} lines")
    assert not long, "long modules without a reason at their top:\n" + "\n".join(long)



def test_folders_import_each_other_one_way_only():
    """The layout shows the layering: folders (and top-level modules) import one another one way
    only, so a folder sits wholly below or above another. runtime/ held backends and bench,
    which import export/, while export/ imports runtime/ort.py: both ways."""
    def unit(module: str) -> str:
        return module.split(".")[0]
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        here = unit(module_name(path))
        for _, target in imports_of(path):
            if unit(target) not in (here, "resnet_edge"):
                graph.setdefault(here, set()).add(unit(target))
    assert "export" in graph.get("backends", set())  # the walk sees folder-crossing imports
    assert not _cycles(graph), _cycles(graph)
    assert _cycles({"runtime": {"export"}, "export": {"runtime"}})  # and would see the old one
