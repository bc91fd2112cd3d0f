"""The layering docs/architecture.md describes, held by parsing every module's imports (lazy ones included):
each a3c module may import only the modules its row names, the maths knows no games and no processes, the worker
reaches no module that writes files, nothing imports the CLI, only the CLI imports the trainer, and only the cluster
imports Ray. No module has an exception of its own."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "a3c"

MATHS = {"a3c.losses", "a3c.model", "a3c.shared_optim", "a3c.learners"}  # and a3c.learners.*
FILE_WRITERS = {"a3c.metrics", "a3c.checkpoint", "a3c.plotting", "a3c.evaluate", "a3c.trainer", "a3c.run_files"}

# Each module and the a3c modules it may import: the direction is config -> games and maths -> messages and
# processes -> worker and evaluator -> trainer -> cli. A new module gets a row here and in docs/architecture.md.
ALLOWED: dict[str, set[str]] = {
    "a3c": set(),
    "a3c.config": set(),
    "a3c.messages": set(),
    "a3c.losses": set(),
    "a3c.model": {"a3c.config"},
    "a3c.shared_optim": {"a3c.config"},
    "a3c.atari": {"a3c.config"},
    "a3c.envs": {"a3c.config", "a3c.atari"},
    "a3c.checkpoint": {"a3c.config", "a3c.shared_optim"},
    "a3c.metrics": {"a3c.config", "a3c.messages"},
    "a3c.plotting": {"a3c.metrics"},
    "a3c.learners.base": {"a3c.config", "a3c.losses", "a3c.model"},
    "a3c.learners.autograd": {"a3c.config", "a3c.losses", "a3c.model", "a3c.learners.base"},
    "a3c.learners.tape": {"a3c.config", "a3c.losses", "a3c.model", "a3c.learners.base"},
    "a3c.learners.check": {
        "a3c.config",
        "a3c.model",
        "a3c.learners.base",
        "a3c.learners.autograd",
        "a3c.learners.tape",
    },
    "a3c.learners": {"a3c.learners.base", "a3c.learners.check"},
    "a3c.processes": {"a3c.messages", "a3c.model"},
    "a3c.worker": {
        "a3c.config",
        "a3c.envs",
        "a3c.learners",
        "a3c.losses",
        "a3c.messages",
        "a3c.model",
        "a3c.processes",
        "a3c.shared_optim",
    },
    "a3c.evaluate": {
        "a3c.checkpoint",
        "a3c.config",
        "a3c.envs",
        "a3c.messages",
        "a3c.metrics",
        "a3c.model",
        "a3c.processes",
    },
    "a3c.run_files": {"a3c.config"},
    "a3c.health": {"a3c.shared_optim"},
    "a3c.fleet": {"a3c.config", "a3c.evaluate", "a3c.model", "a3c.processes", "a3c.worker"},
    "a3c.trainer": {
        "a3c.checkpoint",
        "a3c.config",
        "a3c.envs",
        "a3c.fleet",
        "a3c.health",
        "a3c.learners",
        "a3c.messages",
        "a3c.metrics",
        "a3c.model",
        "a3c.plotting",
        "a3c.processes",
        "a3c.run_files",
        "a3c.shared_optim",
    },
    "a3c.cluster": {
        "a3c.config",
        "a3c.envs",
        "a3c.fleet",
        "a3c.health",
        "a3c.messages",
        "a3c.model",
        "a3c.processes",
        "a3c.shared_optim",
    },
    "a3c.cli": {
        "a3c.checkpoint",
        "a3c.config",
        "a3c.model",
        "a3c.evaluate",
        "a3c.run_files",
        "a3c.fleet",
        "a3c.trainer",
        "a3c.cluster",
    },
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports_of(module: str) -> tuple[set[str], set[str]]:
    """(the a3c modules, the top-level outside packages) that module imports anywhere in its body."""
    ours: set[str] = set()
    outside: set[str] = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from a3c import trainer` imports the submodule a3c.trainer
            names = [f"{node.module}.{alias.name}" for alias in node.names if f"{node.module}.{alias.name}" in MODULES]
            names = names or [node.module]
        else:
            assert not isinstance(node, ast.ImportFrom) or node.level == 0, f"{module}: use absolute imports"
            continue
        for name in names:
            if name == "a3c" or name.startswith("a3c."):
                ours.add(name)
            else:
                outside.add(name.split(".")[0])
    return ours, outside


def reachable(module: str) -> set[str]:
    """Every a3c module that importing module loads (itself excluded)."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        for name in imports_of(todo.pop())[0]:
            if name not in seen:
                seen.add(name)
                todo.append(name)
    return seen - {module}


def is_maths(module: str) -> bool:
    return module in MATHS or module.startswith("a3c.learners.")


def test_every_module_has_a_row():
    assert set(MODULES) == set(ALLOWED), "give each new module a row in ALLOWED and in docs/architecture.md"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_follow_the_layers(module: str):
    forbidden = imports_of(module)[0] - ALLOWED.get(module, set())
    assert not forbidden, f"{module} imports {sorted(forbidden)}, which docs/architecture.md does not allow"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if is_maths(m)))
def test_the_maths_knows_no_games_and_no_processes(module: str):
    loaded = {m for m in reachable(module) if not is_maths(m)} - {"a3c.config"}
    assert not loaded, f"{module} loads {sorted(loaded)}: the maths takes tensors, not games or processes"
    games_and_processes = {"gymnasium", "ale_py", "cv2", "multiprocessing", "signal", "subprocess"}
    outside = imports_of(module)[1] & games_and_processes
    assert not outside, f"{module} imports {sorted(outside)}: the maths takes tensors, not games or processes"


def test_the_worker_reaches_no_module_that_writes_files():
    writers = reachable("a3c.worker") & FILE_WRITERS
    assert not writers, f"a3c.worker loads {sorted(writers)}: only the trainer writes files"
    for module in reachable("a3c.worker") | {"a3c.worker"}:
        outside = imports_of(module)[1] & {"csv", "json", "matplotlib", "PIL", "shutil", "tempfile"}
        assert not outside, f"{module} (loaded by the worker) imports {sorted(outside)}: only the trainer writes files"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_nothing_imports_the_cli(module: str):
    assert "a3c.cli" not in imports_of(module)[0], f"{module} imports a3c.cli: the CLI sits on top of everything"


def test_only_the_cli_imports_the_trainer():
    importers = sorted(m for m in MODULES if "a3c.trainer" in imports_of(m)[0])
    assert importers == ["a3c.cli"], f"{importers} import a3c.trainer; only a3c.cli may: a fleet is given to it"


def test_nothing_subclasses_the_trainer():
    """The trainer drives whatever fleet it is given; no module makes a trainer of its own by overriding it."""
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                bases = {getattr(base, "id", getattr(base, "attr", "")) for base in node.bases}
                assert "Trainer" not in bases, f"{module}.{node.name} subclasses Trainer"


def test_only_the_cluster_imports_ray():
    importers = sorted(m for m in MODULES if "ray" in imports_of(m)[1])
    assert importers == ["a3c.cluster"], f"{importers} import ray; a local run must never load it"
