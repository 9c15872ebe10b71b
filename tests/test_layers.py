"""jtl's module map as a test: imports go down the layers, peers stay independent, no cycles.

Data flows one way (config -> data + model + optimizer -> trainer -> checkpoints/metrics ->
report). A module may import its own package, lower layers, and the shared utilities; two
units of the same layer (e.g. `data` and `models`) must not import each other. Function-local
imports count too: they are cycles all the same, only deferred.
"""

import ast
from pathlib import Path

JTL = Path(__file__).parent.parent / "jtl"

# Units (a module, or a package as a whole) by layer, lowest first.
LAYERS = [
    "runtime evaluation",  # utilities that know nothing of data, models or training
    "data models optim report",  # the report reads result rows only
    "config weights",  # config: the schema builds on the optimizer's defaults
    "interop transfer",  # interop writes orbax checkpoints; transfer holds the strategy registry
    "advisor run",  # before training (scores, the fitted advisor) and the trainer
    "study",  # grid, budget, sweep, run, results
    "commands",  # entry points: the CLI and quickstart
]
RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units.split()}


def _unit(module: str) -> str:
    return module.split(".")[1] if module.count(".") else ""


def _imports() -> dict[str, set[str]]:
    """jtl module -> the jtl modules it imports (anywhere in the file)."""
    out = {}
    for path in JTL.rglob("*.py"):
        name = ".".join(path.relative_to(JTL.parent).with_suffix("").parts)
        name = name.removesuffix(".__init__")
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("jtl.")}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("jtl"):
                # `from jtl.data import text`: the module jtl.data.text, not the package.
                deps |= {f"{node.module}.{a.name}" for a in node.names}
        out[name] = deps
    modules = set(out)

    def resolve(dep: str) -> str:
        while dep not in modules and "." in dep:
            dep = dep.rsplit(".", 1)[0]
        return dep

    return {m: {resolve(d) for d in deps} - {m} for m, deps in out.items()}


def test_design_md_holds_this_module_map():
    """One module map: docs/design.md's table is LAYERS, row for row (notes in parentheses)."""
    import re

    text = (JTL.parent / "docs" / "design.md").read_text()
    table = text.split("| layer | units |", 1)[1].split("\n\n", 1)[0]
    rows = re.findall(r"^\| (\d+) \| (.+) \|$", table, flags=re.M)
    plain = [re.sub(r"\([^)]*\)", "", units).replace(",", " ") for _, units in rows]
    documented = [set(units.split()) for units in plain]
    assert [int(n) for n, _ in rows] == list(range(len(LAYERS)))
    assert documented == [set(units.split()) for units in LAYERS], "docs/design.md != LAYERS"


def test_every_unit_has_a_layer():
    units = {_unit(m) for m in _imports()} - {""}
    assert units == set(RANK), f"unplaced: {units - set(RANK)}; gone: {set(RANK) - units}"


def test_imports_go_down_the_layers():
    bad = []
    for module, deps in _imports().items():
        unit = _unit(module)
        for dep in deps:
            other = _unit(dep)
            if not unit or other == unit:
                continue
            if RANK[other] > RANK[unit] or (RANK[other] == RANK[unit] and RANK[unit] > 0):
                bad.append(f"{module} -> {dep}")
    assert not bad, "imports against the layers:\n" + "\n".join(sorted(bad))


def test_no_import_cycles():
    edges = _imports()
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for d in sorted(edges.get(m, ())):
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(d) :] + [d]))
            if d not in state:
                visit(d)
        path.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)


def test_summary_schema_refuses_what_it_does_not_declare():
    """summary.json's contract: required fields, declared types, no undeclared field."""
    import pytest

    from jtl.evaluation import run_summary
    from tests.helpers import fake_summary

    assert run_summary.check(fake_summary()) == fake_summary()
    assert run_summary.check(fake_summary(test_accuracy=None, diverged=True))
    with pytest.raises(run_summary.SummaryError, match="missing dataset"):
        run_summary.check({k: v for k, v in fake_summary().items() if k != "dataset"})
    with pytest.raises(run_summary.SummaryError, match="undeclared field acc"):
        run_summary.check(fake_summary(acc=0.3))
    with pytest.raises(run_summary.SummaryError, match="seed='0' is not"):
        run_summary.check(fake_summary(seed="0"))
    with pytest.raises(run_summary.SummaryError, match="converged=1 is not"):
        run_summary.check(fake_summary(converged=1))
