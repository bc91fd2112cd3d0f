"""Helpers for tests that run the real command line in a subprocess and look for its processes in /proc."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def local_trainer(cfg):
    """A Trainer on this machine's fleet, as the CLI builds one for a local run."""
    from a3c.fleet import LocalFleet
    from a3c.trainer import Trainer

    return Trainer(cfg, LocalFleet(cfg))


def load_benchmark(name: str):
    """benchmarks/<name>.py as a module (benchmarks/ is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TESTS_DIR = Path(__file__).resolve().parent
HAS_PROC = Path("/proc/self/environ").exists()


def processes_with_marker(marker: str) -> list[int]:
    """PIDs of live processes whose environment carries A3C_TEST_MARKER=marker (the run and its children)."""
    needle = f"A3C_TEST_MARKER={marker}".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            environ = Path("/proc", entry, "environ").read_bytes()
            state = Path("/proc", entry, "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:  # gone, or not ours
            continue
        if needle in environ.split(b"\0") and state != "Z":  # a zombie has exited; only its parent's wait is due
            pids.append(int(entry))
    return pids


def assert_no_survivors(marker: str, grace_s: float = 10.0) -> None:
    """No worker (nor resource tracker) of the finished run is still alive after a short grace period."""
    deadline = time.monotonic() + grace_s
    while (alive := processes_with_marker(marker)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive, f"processes of the finished run still alive: {alive}"


def main_env(marker: str) -> dict[str, str]:
    """Environment for a main.py subprocess: tagged with the marker, tests/ importable (for faulty_envs)."""
    path = os.pathsep.join(p for p in (str(TESTS_DIR), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "A3C_TEST_MARKER": marker, "PYTHONPATH": path}


def run_main(args: list[str], marker: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """Run main.py to completion."""
    return subprocess.run(
        [sys.executable, "main.py", *args],
        cwd=REPO_ROOT,
        env=main_env(marker),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_main(args: list[str], marker: str, log_dir: Path) -> subprocess.Popen:
    """Start main.py in the background, its stdout and stderr going to files in log_dir (read with read_log)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [sys.executable, "main.py", *args],
        cwd=REPO_ROOT,
        env=main_env(marker),
        stdout=open(log_dir / "stdout", "w"),  # noqa: SIM115 - the child owns the file
        stderr=open(log_dir / "stderr", "w"),  # noqa: SIM115
        text=True,
    )


def read_log(log_dir: Path) -> tuple[str, str]:
    return (log_dir / "stdout").read_text(), (log_dir / "stderr").read_text()


def wait_for(condition, timeout: float, what: str, poll_s: float = 0.1) -> None:
    """Poll condition() until it is true; fail naming `what` after timeout seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(poll_s)


def _live_children(parent: int) -> list[tuple[int, bytes]]:
    """(pid, cmdline) of parent's live children."""
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path("/proc", entry, "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = Path("/proc", entry, "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat[1]) == parent and stat[0] != "Z":
            children.append((int(entry), cmdline))
    return children


def worker_pids(parent: int) -> list[int]:
    """Live workers (and evaluator) of the trainer with pid parent: the children of its fork server, which is the
    trainer's child (the resource tracker is another)."""
    servers = [pid for pid, cmdline in _live_children(parent) if b"multiprocessing.forkserver" in cmdline]
    return sorted(pid for server in servers for pid, _ in _live_children(server))
