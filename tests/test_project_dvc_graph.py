"""dvc.yaml, the one definition of the stage graph: every stage's deps cover the code it runs, and its
params are the ones that code reads.

DVC does not follow imports, so a stage whose deps miss a module it imports would not re-run when
that module changes, and a run's outputs would no longer match its code. Each stage's module is
followed through its ``pipeline`` imports (statically), and every module reached must sit under one
of the stage's deps. The same code's ``params.<section>[.<key>]`` reads must be subscribed to, and
every subscription read; a stage subscribes to ``common``, its own section and the shared ``source`` and
``train``, and to another stage's keys only where :data:`SHARED_BY_DESIGN` (and a comment in dvc.yaml)
says why, so that tweaking one stage never re-runs another.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from pipeline.project import built_stages, declared_options, declared_paths, dvc_stages, in_dependency_order
from pipeline.stages import STAGES, get_stage

ROOT = Path(__file__).resolve().parents[1]
# the stage table: every stage imports it, none depends on what it says
EXEMPT = {"pipeline/stages/__init__.py"}
# sections any stage may subscribe to: common (the CLI sets every stage's log level from it), source (how
# images are read) and train (the loop of finetune and baseline)
SHARED = {"common", "source", "train"}
# keys of another stage's section a stage reads by design (each has its reason beside it in dvc.yaml)
SHARED_BY_DESIGN = {
    "ingest": {"validate.max_pixels"},
    "shift": {"validate.max_pixels", "validate.stats_max_side", "validate.min_side", "validate.max_side",
              "validate.accepted_modes", "validate.severity"},
    "baseline": {"curve"},  # its own: the curve's draws, a section apart from the scratch recipe they all follow
    "card": {"evaluate.confidence"},
    "promote": {"freeze.probe_cs"},
}


def _module_file(module: str) -> Path | None:
    for candidate in (ROOT / (module.replace(".", "/") + ".py"), ROOT / module.replace(".", "/") / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pipeline"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names if _module_file(f"{node.module}.{a.name}"))
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("pipeline"))
    return found


def _is_marker(path: Path) -> bool:
    """A package ``__init__.py`` holding only its docstring (and assignments like ``__version__``): no code."""
    body = ast.parse(path.read_text()).body
    return path.name == "__init__.py" and all(isinstance(node, (ast.Expr, ast.Assign)) for node in body)


def _code_of(module: str) -> set[str]:
    """Every pipeline source file a module imports, transitively (package __init__ files included)."""
    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = _module_file(name)
        if path is None:
            continue
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        todo += _imported(path)
    files = (_module_file(m) for m in seen)
    return {str(f.relative_to(ROOT)) for f in files if f is not None and not _is_marker(f)}


def _params_read(files: set[str]) -> set[str]:
    """The ``params.<section>`` and ``params.<section>.<key>`` reads in these files (``validate_`` as ``validate``)."""
    reads = set()
    for path in files:
        for node in ast.walk(ast.parse((ROOT / path).read_text())):
            chain = []
            while isinstance(node, ast.Attribute):
                chain.insert(0, node.attr)
                node = node.value
            if isinstance(node, ast.Name) and node.id == "params" and chain:
                reads.add(".".join([chain[0].removesuffix("_")] + chain[1:2]))
    return reads


def _covers(entry: str, read: str) -> bool:
    """A subscription and a read meet: the same key, or one is the section of the other (a section handed to
    a helper as a whole reads some of its keys)."""
    return entry == read or read.startswith(entry + ".") or entry.startswith(read + ".")


@pytest.mark.parametrize("stage", [spec.name for spec in STAGES])
def test_stage_params_are_what_its_code_reads(stage):
    listed = declared_paths(ROOT, stage, "params")
    reads = _params_read(_code_of(get_stage(stage).module))
    unlisted = sorted(r for r in reads if not any(_covers(entry, r) for entry in listed))
    assert not unlisted, f"dvc.yaml stage {stage}: its code reads params {unlisted} it does not subscribe to"
    unread = [entry for entry in listed if entry != "common" and not any(_covers(entry, r) for r in reads)]
    assert not unread, f"dvc.yaml stage {stage}: subscribes to params {unread} its code never reads"


@pytest.mark.parametrize("stage", [spec.name for spec in STAGES])
def test_no_stage_subscribes_to_another_stages_section(stage):
    foreign = [entry for entry in declared_paths(ROOT, stage, "params")
               if entry.split(".")[0] not in SHARED | {stage} and entry not in SHARED_BY_DESIGN.get(stage, set())]
    assert not foreign, (f"dvc.yaml stage {stage}: subscribes to {foreign} of another stage's section; move the "
                         "keys to a section both read, or say why they are shared in SHARED_BY_DESIGN and dvc.yaml")


@pytest.mark.parametrize("stage", [spec.name for spec in STAGES])
def test_stage_deps_cover_every_module_it_imports(stage):
    deps = declared_paths(ROOT, stage, "deps")
    missing = [f for f in sorted(_code_of(get_stage(stage).module) - EXEMPT)
               if not any(f == d or f.startswith(d.rstrip("/") + "/") for d in deps)]
    assert not missing, f"dvc.yaml stage {stage}: deps miss {missing}"


def test_every_stage_is_declared_with_its_own_command():
    assert built_stages(ROOT) == [spec.name for spec in STAGES] == list(dvc_stages(ROOT))
    for spec in STAGES:
        assert dvc_stages(ROOT)[spec.name]["cmd"].startswith(f"tlops {spec.name} ")
        assert f"pipeline/stages/{spec.name}.py" in declared_paths(ROOT, spec.name, "deps")
        assert declared_options(ROOT, spec.name)  # paths come from the command line


def test_the_scratch_side_depends_on_the_architecture_alone():
    """A change of selection, freezing or fine-tuning that keeps the architecture retrains no scratch model: the
    baseline stage (the baseline and the curve's runs) reads none of their outputs but select's architecture.json,
    and none of their params."""
    upstream = {path for stage in ("select", "freeze", "finetune") for kind in ("outs", "metrics", "plots")
                for path in declared_paths(ROOT, stage, kind)} - {"results/select/architecture.json"}
    deps = set(declared_paths(ROOT, "baseline", "deps"))
    assert "results/select/architecture.json" in deps and not deps & upstream, deps & upstream
    params = {entry.split(".")[0] for entry in declared_paths(ROOT, "baseline", "params")}
    assert not params & {"select", "freeze", "finetune"}, params


def test_each_stage_comes_after_the_stages_it_depends_on(tmp_path):
    """The retrain flow runs dvc.yaml's stages in its order and has DVC check each alone (pipeline/project.py:
    in_dependency_order); a dvc.yaml edited out of order is seen, and the flow leaves the graph walk to DVC."""
    assert in_dependency_order(ROOT)
    stages = dvc_stages(ROOT)
    reordered = {name: stages[name] for name in ("validate", "ingest", *[s for s in stages if s not in
                                                                          ("validate", "ingest")])}
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": reordered}, sort_keys=False))
    assert not in_dependency_order(tmp_path)
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"validate": stages["validate"]}}, sort_keys=False))
    assert in_dependency_order(tmp_path)  # an input no stage of the file makes: a user's file, not an order
