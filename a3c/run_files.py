"""The files of one run (checkpoint, CSVs, plot) and who may write them: a lock that one run at a time holds, and
the rule that a new run never writes over an earlier one (Sample Factory's --restart_behavior is the model).

Without --use-trained, a run that finds its game's checkpoint or CSV refuses before it writes anything: it goes on
with --use-trained, or --start-over moves the earlier run's files into a folder of their own, where they still
form a whole run that --checkpoint-dir and --plot-dir can point at.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path

from a3c.config import Config, ConfigError


def check_writable(directory: str | Path) -> None:
    """Fail before training if checkpoints or plots could not be written there."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".write-test-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as error:
        raise ConfigError(
            f"cannot write to {directory} ({error.strerror or error}); choose another directory"
        ) from None


def run_file_names(cfg: Config) -> dict[Path, list[str]]:
    """The names of a run's files, by the folder they go in: <game>.pt and its .prev in checkpoint_dir, the CSVs
    and the plot in plot_dir (one folder when both are the same)."""
    name = cfg.run_name
    names: dict[Path, list[str]] = {}
    names.setdefault(Path(cfg.checkpoint_dir).resolve(), []).extend([f"{name}.pt", f"{name}.pt.prev"])
    names.setdefault(Path(cfg.plot_dir).resolve(), []).extend(
        [f"{name}.csv", f"{name}-losses.csv", f"{name}-eval.csv", f"{name}.png"]
    )
    return names


def existing_run_files(cfg: Config) -> list[Path]:
    return [
        folder / name for folder, names in run_file_names(cfg).items() for name in names if (folder / name).exists()
    ]


class RunLock:
    """An flock on a hidden file beside the run's files (.<game>.lock in each of its folders), held for as long as
    the run goes on. The kernel drops it when the run's process dies, however it dies, so a lock is never left
    behind; the file itself stays (removing it would let two runs lock two different files)."""

    def __init__(self, cfg: Config, create: bool = True):
        """Lock the run's files (ConfigError if another run holds them). With create=False, only where a lock file
        exists already, and only to ask: the locks are let go at once (check_no_live_run)."""
        self.fds: list[int] = []
        try:
            for folder in run_file_names(cfg):
                if create:
                    folder.mkdir(parents=True, exist_ok=True)
                self._lock(lock_path(folder, cfg), cfg, create)
        except BaseException:
            self.release()
            raise

    def _lock(self, path: Path, cfg: Config, create: bool) -> None:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if create else 0), 0o644)
        except OSError as error:
            if not create:
                return  # no run has ever held it (or the folder cannot exist: the trainer's own check says so)
            raise ConfigError(f"cannot write to {path.parent} ({error.strerror}); choose another directory") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise ConfigError(
                f"another run ({holder}) is training {cfg.env_name} with {path.parent}: wait for it to end or stop "
                "it, or give this run its own --checkpoint-dir and --plot-dir"
            ) from None
        if create:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}".encode(), 0)
        self.fds.append(fd)

    def release(self) -> None:
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)  # closing the file drops its flock
        self.fds = []


def lock_path(folder: Path, cfg: Config) -> Path:
    return folder / f".{cfg.run_name}.lock"


def check_no_live_run(cfg: Config) -> None:
    """ConfigError if another run holds the run's files now; creates nothing."""
    RunLock(cfg, create=False).release()


def move_aside(cfg: Config) -> list[Path]:
    """Move the run's files that exist into <folder>/<game>.<date-time>/ in each of their folders; return the new
    folders."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    moved = []
    for folder, names in run_file_names(cfg).items():
        present = [name for name in names if (folder / name).exists()]
        if not present:
            continue
        target = folder / f"{cfg.run_name}.{stamp}"
        suffix = 1
        while target.exists():
            suffix += 1
            target = folder / f"{cfg.run_name}.{stamp}-{suffix}"
        target.mkdir()
        for name in present:
            os.replace(folder / name, target / name)
        moved.append(target)
    return moved


def check_no_earlier_run(cfg: Config) -> list[Path]:
    """The run's files that exist; ConfigError if there are any and neither --use-trained nor --start-over says what
    to do with them. With --use-trained, the checkpoint must be there."""
    if cfg.use_trained:
        if not cfg.checkpoint_path.exists():
            raise ConfigError(
                f"no checkpoint at {cfg.checkpoint_path}: train once without --use-trained, or pass --checkpoint-dir"
            )
        return []
    existing = existing_run_files(cfg)
    if existing and not cfg.start_over:
        shown = " and ".join(str(path) for path in existing[:2]) + (" ..." if len(existing) > 2 else "")
        raise ConfigError(
            f"{shown} hold an earlier run of {cfg.env_name}: --use-trained goes on with it, --start-over moves it "
            f"aside to {Path(cfg.checkpoint_dir) / (cfg.run_name + '.<date-time>')} and starts afresh"
        )
    return existing


def claim_run_files(cfg: Config) -> RunLock:
    """Lock the run's files for this run, and make sure it overwrites nothing: without cfg.use_trained, earlier
    files are refused (ConfigError), or moved aside with cfg.start_over. Returns the lock to release at the end."""
    # First without taking the lock, so that a refusal leaves not even a lock file behind: another run that holds
    # the files is named first (its files are no earlier run), then the files themselves.
    check_no_live_run(cfg)
    check_no_earlier_run(cfg)
    lock = RunLock(cfg)
    try:
        existing = check_no_earlier_run(cfg)  # again under the lock: another run may have begun meanwhile
        if existing:
            folders = ", ".join(f"{folder}/" for folder in move_aside(cfg))
            print(f"a3c: --start-over: moved the earlier run of {cfg.env_name} aside to {folders}", flush=True)
    except BaseException:
        lock.release()
        raise
    return lock
