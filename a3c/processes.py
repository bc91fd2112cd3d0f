"""What the trainer shares with its child processes, and what every child (a worker, the evaluator) does around
its work: threads, signals, logging, and its last words on failure.

A child may be killed (SIGKILL, the OOM killer) at any instruction, so nothing here is a lock that a dying process
can take with it, nor anything that another process could then wait on forever:
- the frame, update and skipped-update counters are one row per process, written only by that process and summed
  by whoever reads them (no lock at all);
- the stop signal is one shared byte;
- the optimizer's step lock is an flock(2), which the kernel drops when its holder dies;
- records travel on a pipe of each child's own (a3c.fleet), so no write lock is shared between writers.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fcntl
import logging
import multiprocessing
import os
import signal
import time
import traceback
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import cv2
import numpy as np
import torch

from a3c.messages import WorkerFailure
from a3c.model import ActorCritic

EVALUATOR_RANK = -1
LOCK_POLL_S = 0.0005  # how often a waiter with a deadline tries the step lock again


class Counts(NamedTuple):
    """A run's totals: emulator frames, shared-optimizer updates applied, and updates skipped as non-finite."""

    frames: int
    updates: int
    skipped_updates: int


class Counters:
    """The run's counts as one int64 table in shared memory, a row per process: row 0 is the owner's (the trainer's
    counts from before this session, or what a cluster host adds for the other hosts), row rank + 1 a worker's. Each
    row has one writer, so a writer killed half-way through an addition leaves its own row one addition short and
    nothing locked; a reader sums the rows (aligned 8-byte loads, never torn)."""

    def __init__(self, table: torch.Tensor):
        self.table = table  # int64 [rows, 3]: frames, updates, skipped updates

    @classmethod
    def create(cls, max_rank: int, start: Counts) -> Counters:
        table = torch.zeros(max_rank + 2, len(Counts._fields), dtype=torch.int64).share_memory_()
        table[0] = torch.tensor(start)
        return cls(table)

    def row(self, rank: int) -> np.ndarray:
        """The row that rank (or -1: the owner) writes, as a numpy view of the shared table [3]."""
        return self.table.numpy()[rank + 1]

    def totals(self) -> Counts:
        return Counts(*(int(x) for x in self.table.numpy().sum(axis=0)))

    def frames(self) -> int:
        return int(self.table.numpy()[:, 0].sum())

    def updates(self) -> int:
        return int(self.table.numpy()[:, 1].sum())


class StopFlag:
    """The run's stop signal: one shared byte that every loop reads, with no lock behind it."""

    def __init__(self, byte: torch.Tensor):
        self.byte = byte

    @classmethod
    def create(cls) -> StopFlag:
        return cls(torch.zeros(1, dtype=torch.uint8).share_memory_())

    def set(self) -> None:
        self.byte[0] = 1

    def is_set(self) -> bool:
        return bool(self.byte.numpy()[0])

    def wait(self, timeout_s: float, poll_s: float = 0.1) -> bool:
        """Sleep until the flag is set or timeout_s has passed; True if it is set."""
        deadline = time.monotonic() + timeout_s
        while not self.is_set() and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(poll_s, left))
        return self.is_set()


class StepLock:
    """The lock around the shared optimizer's step (and the trainer's check and rollback of the shared model).

    An flock(2) on a file of the run's own: the kernel drops it when the process holding it dies, so a worker killed
    inside its step leaves it free, and no one needs to know who held it. flock excludes other open files of the same
    file, not other users of one, so each process opens the file itself (on first use) rather than inheriting an fd,
    and two threads of one process must not both use it. The owner makes the file (fleet.new_step_lock).
    """

    def __init__(self, path: str, owned_fd: int | None = None):
        self.path = path
        self._owned_fd = owned_fd  # the owner's handle that keeps an unlinked file alive
        self._fd: int | None = None
        self._pid: int | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"])

    def _file(self) -> int:
        if self._pid != os.getpid():
            self._fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
            self._pid = os.getpid()
        return self._fd

    def open(self) -> None:
        """Open this process's handle now (a child does it at start, while its owner is sure to be alive)."""
        self._file()

    @contextlib.contextmanager
    def held(self, timeout_s: float | None = None) -> Iterator[bool]:
        """Hold the lock for the with-block, which gets True. Without timeout_s, wait as long as it takes: every
        holder is a live process inside a bounded step. With it, give up after timeout_s (the block gets False) by
        trying again every LOCK_POLL_S, which a trainer that must not stall uses."""
        fd = self._file()
        if timeout_s is None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        else:
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        yield False
                        return
                    time.sleep(LOCK_POLL_S)
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def close(self) -> None:
        """The owner's end: close its handles (and remove a named file)."""
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
            self._fd = None
        if self._owned_fd is not None:
            os.close(self._owned_fd)
            self._owned_fd = None
        elif not self.path.startswith("/proc/"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)


@dataclass
class SharedState:
    """Everything the trainer (or a cluster host) shares with its children (made by fleet.share_state); all of it
    pickles to a child of the fork server.

    The model's parameters and the optimizer's statistics are in shared memory. Workers read the weights and hand
    over gradients without a lock (Hogwild, as in the paper); step_lock serializes the optimizer's step itself (with
    cfg.lock_step) and the trainer's check and rollback of the shared model. counters are the run's counts, stop the
    signal every loop checks.
    """

    model: ActorCritic
    optimizer: torch.optim.Optimizer
    counters: Counters
    stop: StopFlag
    step_lock: StepLock

    def close(self) -> None:
        self.step_lock.close()


class Outbox(Protocol):
    """Where a worker or the evaluator sends its records (a3c.messages) for the trainer."""

    def send(self, record: Any) -> None: ...


class LocalOutbox:
    """The records of a worker that runs in the trainer's own process (serial mode), kept for the trainer to take."""

    def __init__(self) -> None:
        self.records: deque[Any] = deque()

    def send(self, record: Any) -> None:
        self.records.append(record)


def configure_logging() -> None:
    """Diagnostics of a child go to stderr with its process name; its results go to the trainer, never to print."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(processName)s %(levelname)s %(message)s")


def trainer_alive() -> bool:
    """False once the trainer that started this process has died, so an orphan stops instead of running on. Asks
    multiprocessing's sentinel for the parent, not os.getppid(): a child of the fork server has the server as its
    parent, and the trainer may outlive a killed server. True in the trainer itself (serial mode)."""
    parent = multiprocessing.parent_process()
    return parent is None or parent.is_alive()


def name_process(name: str) -> None:
    """Show name (at most 15 bytes) as this process's name in ps and top, where the OS lets us (Linux prctl)."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return
    with contextlib.suppress(OSError, AttributeError):
        pr_set_name = 15
        ctypes.CDLL(libc_name, use_errno=True).prctl(pr_set_name, name.encode()[:15], 0, 0, 0)


@contextlib.contextmanager
def child_process(rank: int, outbox: Outbox) -> Iterator[None]:
    """What every child (workers, and the evaluator as EVALUATOR_RANK) does around its work: a name in ps, one
    intra-op thread, Ctrl-C left to the trainer, and any exception sent to it as a WorkerFailure before exiting with
    status 1. A trainer that is gone (its end of the pipe closed) ends the child quietly."""
    configure_logging()
    name_process("a3c:evaluator" if rank == EVALUATOR_RANK else f"a3c:worker-{rank}")
    torch.set_num_threads(1)  # one intra-op thread per process: the workers already use every core
    cv2.setNumThreads(1)  # the same for OpenCV's resize, whose pool would otherwise wake a thread per core
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the trainer, which stops us through the flag
    try:
        yield
    except KeyboardInterrupt:
        pass  # Ctrl-C reaches the whole process group; the trainer decides what happens
    except BrokenPipeError:
        raise SystemExit(1) from None  # the trainer is gone; nobody reads what we would say
    except BaseException:
        with contextlib.suppress(OSError):
            outbox.send(WorkerFailure(rank, traceback.format_exc()))
        raise SystemExit(1) from None
