"""The workers a trainer drives (a fleet), and the group of child processes on this machine that every fleet is made
of: the workers (and the evaluator) around one shared model, forked from a fork server, watched, started again when
they die, drained of their records, and stopped. LocalFleet is one group; a cluster's RayFleet runs one on each
host (a3c/cluster.py).

Every child gets a pipe of its own for its records, so no lock is shared between writers, and a child killed
half-way through a record leaves a pipe whose end the group sees (EOF) rather than a stream the others would
corrupt. Deaths are seen through a pidfd where the OS has one (Linux 5.3+): it tells whether that very process
has exited even when the fork server that forked it was killed, which multiprocessing's own sentinel cannot (it
reports every child of a dead server as dead).
"""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any, NamedTuple, Protocol

import torch.multiprocessing as mp
from torch.optim import Optimizer

from a3c.config import Config
from a3c.evaluate import run_evaluator
from a3c.model import ActorCritic
from a3c.processes import EVALUATOR_RANK, Counters, Counts, LocalOutbox, SharedState, StepLock, StopFlag
from a3c.worker import Worker, run_worker

MAX_WORKER_DEATHS = 5  # deaths of one rank within DEATH_WINDOW_S after which it is not started again
DEATH_WINDOW_S = 600.0
STOP_WAIT_S = 10.0  # how long stop() lets the children finish their rollout before it kills them
KILL_WAIT_S = 5.0
EXIT_CODE_WAIT_S = 0.5  # how long to wait for the fork server to report a dead child's exit code
MAX_RECORDS_PER_READ = 1000  # a child that floods its pipe must not keep the group from its other duties


class GroupReport(NamedTuple):
    """What a poll found: the children's records (a3c.messages), lines for the log about the children themselves,
    and the ranks that died MAX_WORKER_DEATHS times within DEATH_WINDOW_S and are not started again."""

    records: list[Any]
    lines: list[str]
    gave_up: list[int]


def new_step_lock() -> StepLock:
    """A step lock on a file of its own. On Linux the file is unlinked at once and each process opens it through
    /proc/<owner>/fd, so a killed owner leaves nothing on disk; elsewhere it is a temp file that close() removes."""
    fd, path = tempfile.mkstemp(prefix="a3c-step-", suffix=".lock")
    if os.path.isdir(f"/proc/{os.getpid()}/fd"):
        os.unlink(path)
        return StepLock(f"/proc/{os.getpid()}/fd/{fd}", owned_fd=fd)
    os.close(fd)
    return StepLock(path)


def share_state(model: ActorCritic, optimizer: Optimizer, max_rank: int, start: Counts | None = None) -> SharedState:
    """The shared handles for a model and optimizer already in shared memory, with a counter row for each rank up to
    max_rank, the counts starting at start (zero without)."""
    counters = Counters.create(max_rank, start or Counts(0, 0, 0))
    return SharedState(model, optimizer, counters, StopFlag.create(), new_step_lock())


def child_name(rank: int) -> str:
    return "the evaluator" if rank == EVALUATOR_RANK else f"worker-{rank}"


def count_death(deaths: dict[int, deque[float]], rank: int, now: float) -> int:
    """Record a death of rank at time now; return its deaths within the last DEATH_WINDOW_S (this one included)."""
    times = deaths.setdefault(rank, deque())
    times.append(now)
    while now - times[0] > DEATH_WINDOW_S:
        times.popleft()
    return len(times)


def open_pidfd(pid: int) -> int | None:
    """A pidfd for pid, readable once that process has exited; None where the OS has none, or it is gone already."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


@dataclass
class Child:
    """One child process: its Process, the read end of its pipe, and its pidfd (None: use the Process)."""

    rank: int
    process: Any
    reader: Connection | None
    pidfd: int | None

    @property
    def death_handle(self) -> int:
        """What becomes readable when the child exits."""
        return self.pidfd if self.pidfd is not None else self.process.sentinel

    def exited(self) -> bool:
        if self.pidfd is None:
            return not self.process.is_alive()
        return bool(wait([self.pidfd], 0))

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, OSError):
            if self.pidfd is not None:
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            else:
                self.process.kill()

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
            self.reader = None
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


class WorkerGroup:
    """Workers of the given ranks (and the evaluator, with evaluator=True) on shared: started by start(), watched
    and started again by poll(), stopped by stop(). A rank that dies MAX_WORKER_DEATHS times within DEATH_WINDOW_S
    is not started again; poll() reports it and the caller decides what that means for the run."""

    def __init__(self, cfg: Config, shared: SharedState, ranks: list[int], evaluator: bool = False):
        # The fork server inherits this before numpy loads: its OpenBLAS (the LSTM step's product) would otherwise
        # start a thread per core in every worker, on cores the other workers already use.
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
        self.cfg, self.shared = cfg, shared
        # Children are forked from a fork server that has imported the worker's modules once (torch above all):
        # their pages stay shared, so a worker's own memory is what it allocates (docs/benchmarks.md has the
        # figures), and 16 workers start without 16 imports of torch. The server is a fresh process, started before
        # any thread or CUDA context of ours, so forking from it is safe.
        self.ctx = mp.get_context("forkserver")
        self.ctx.set_forkserver_preload(["a3c.worker", "a3c.evaluate"])
        self.ranks = list(ranks) + ([EVALUATOR_RANK] if evaluator else [])
        self.children: dict[int, Child] = {}
        self.to_start: list[int] = []
        self.deaths: dict[int, deque[float]] = {}
        self.lines: list[str] = []
        self.gave_up: list[int] = []
        self.stopping = False

    @property
    def workers(self) -> int:
        return sum(rank != EVALUATOR_RANK for rank in self.ranks)

    def start(self) -> None:
        for rank in self.ranks:
            self._start(rank)

    def _start(self, rank: int) -> None:
        target = run_evaluator if rank == EVALUATOR_RANK else run_worker
        reader, writer = self.ctx.Pipe(duplex=False)
        name = "evaluator" if rank == EVALUATOR_RANK else f"worker-{rank}"
        process = self.ctx.Process(target=target, args=(rank, self.cfg, self.shared, writer), name=name, daemon=True)
        try:
            process.start()
        except (OSError, EOFError) as error:  # the fork server died under us: the next try starts a new one
            reader.close()
            if rank not in self.to_start:
                self.to_start.append(rank)
            self.lines.append(f"could not start {child_name(rank)} ({type(error).__name__}: {error}); trying again")
            return
        finally:
            writer.close()  # the child's end: only the child may hold it, so that its death closes the pipe
        if rank in self.to_start:
            self.to_start.remove(rank)
        self.children[rank] = Child(rank, process, reader, open_pidfd(process.pid))

    def poll(self, timeout_s: float) -> GroupReport:
        """The records that arrive within timeout_s (all that wait, once the first is there); dead children are
        buried, their last records taken, and started again unless their rank keeps dying."""
        if not self.stopping:
            for rank in list(self.to_start):
                self._start(rank)
        handles: dict[Any, Child] = {}
        for child in self.children.values():
            if child.reader is not None:
                handles[child.reader] = child
            handles[child.death_handle] = child
        records: list[Any] = []
        if handles:
            for handle in wait(list(handles), timeout_s):
                child = handles[handle]
                if handle is child.reader:
                    records += self._read(child)
        elif timeout_s > 0:
            time.sleep(timeout_s)
        for child in list(self.children.values()):
            if child.exited():
                records += self._read(child, to_the_end=True)
                self._bury(child)
        lines, self.lines = self.lines, []
        gave_up, self.gave_up = self.gave_up, []
        return GroupReport(records, lines, gave_up)

    def _read(self, child: Child, to_the_end: bool = False) -> list[Any]:
        """What the child has sent; to_the_end (it has exited): everything up to the pipe's end."""
        records: list[Any] = []
        reader = child.reader
        while reader is not None and (to_the_end or len(records) < MAX_RECORDS_PER_READ):
            try:
                if not reader.poll():
                    break
                records.append(reader.recv())
            except (EOFError, OSError):  # the child is gone; a record it was half-way through is lost with it
                reader.close()
                child.reader = reader = None
        return records

    def _bury(self, child: Child) -> None:
        child.process.join(EXIT_CODE_WAIT_S)  # the exit code, which the fork server reports once it has reaped it
        code = child.process.exitcode
        child.close()
        del self.children[child.rank]
        if self.stopping or self.shared.stop.is_set():  # it finished as told, or had no time to before its end
            return
        name = child_name(child.rank)
        deaths = count_death(self.deaths, child.rank, time.monotonic())
        died = f"{name} died (exit code {code if code is not None else 'unknown'})"
        if deaths >= MAX_WORKER_DEATHS:
            self.gave_up.append(child.rank)
            self.lines += [died, f"{name} died {deaths} times in {DEATH_WINDOW_S / 60:.0f} minutes; not started again"]
            return
        self.lines.append(f"{died}; started again")
        self._start(child.rank)

    def stop(self, wait_s: float = STOP_WAIT_S) -> list[Any]:
        """Set the stop flag, take the children's last records while they finish their rollout, kill any left
        after wait_s, and return the records."""
        self.stopping = True
        self.shared.stop.set()
        records: list[Any] = []
        deadline = time.monotonic() + wait_s
        while self.children and time.monotonic() < deadline:
            records += self.poll(0.1).records  # a child blocked on a full pipe can only finish once we read it
        for child in self.children.values():
            child.kill()
        deadline = time.monotonic() + KILL_WAIT_S
        while self.children and time.monotonic() < deadline:
            records += self.poll(0.1).records
        for child in self.children.values():  # not gone even after SIGKILL (an uninterruptible sleep): let it be
            child.close()
        self.children.clear()
        return records


class FleetReport(NamedTuple):
    """What a fleet's poll found: its workers' records (a3c.messages, frames counted over the whole fleet), lines for
    the user about the workers themselves, and why the run must end (None while it may go on)."""

    records: list[Any]
    lines: list[str]
    failure: str | None


class Fleet(Protocol):
    """The workers a Trainer drives, wherever they run: this machine's (LocalFleet) or a Ray cluster's hosts
    (cluster.RayFleet). The trainer knows nothing else of them.

    Its size is known when it is made, before the run's config is final: `sharing` is how many workers' steps reach
    one model (the lr follows it, config.settle_lr), `workers` how many there are in all. prepare() is given the model
    and optimizer the trainer built (and maybe resumed), and the counts to go on from; start() starts the workers."""

    sharing: int
    workers: int

    def prepare(self, cfg: Config, model: ActorCritic, optimizer: Optimizer, start: Counts) -> None: ...

    def start(self) -> None: ...

    def poll(self, timeout_s: float) -> FleetReport:
        """The records that arrive within timeout_s, what became of the workers, and why the run must end."""
        ...

    def counts(self) -> Counts: ...

    def lock(self, timeout_s: float) -> contextlib.AbstractContextManager[bool]:
        """Keeps the workers' steps off the trainer's model while it is checked, copied or rolled back."""
        ...

    def pull(self, statistics: bool) -> None:
        """Bring the trainer's model (and with statistics, its optimizer) up to date, before a check or a save."""
        ...

    def push(self) -> None:
        """Give the workers the trainer's model after a rollback."""
        ...

    def stop(self) -> list[Any]:
        """Stop every worker; their last records."""
        ...

    def close(self) -> None: ...


class LocalFleet:
    """Workers on this machine around one model in shared memory: a WorkerGroup of cfg.n_workers processes, or with
    cfg.serial one worker inside the trainer's own process (deterministic, for debugging), and the evaluator beside
    either when cfg.eval_interval_s > 0."""

    def __init__(self, cfg: Config):
        self.serial = cfg.serial
        self.workers = self.sharing = 1 if cfg.serial else cfg.n_workers
        self.shared: SharedState | None = None
        self.group: WorkerGroup | None = None
        self.serial_worker: Worker | None = None
        self.outbox = LocalOutbox()  # the serial worker's records

    def prepare(self, cfg: Config, model: ActorCritic, optimizer: Optimizer, start: Counts) -> None:
        model.share_memory()
        self.cfg = cfg
        self.shared = share_state(model, optimizer, max_rank=self.workers - 1, start=start)
        ranks = [] if self.serial else list(range(self.workers))
        self.group = WorkerGroup(cfg, self.shared, ranks, evaluator=cfg.eval_interval_s > 0)

    def start(self) -> None:
        if self.serial:
            self.serial_worker = Worker(0, self.cfg, self.shared, self.outbox)
        self.group.start()

    def poll(self, timeout_s: float) -> FleetReport:
        if self.serial_worker is not None:
            self.serial_worker.train_step()
            timeout_s = 0.0
        report = self.group.poll(timeout_s)
        records = report.records + self._serial_records()
        failure = next(
            (
                f"worker-{rank} died {len(self.group.deaths[rank])} times in {DEATH_WINDOW_S / 60:.0f} minutes"
                for rank in report.gave_up
                if rank != EVALUATOR_RANK  # an evaluator that keeps dying is left out; training goes on
            ),
            None,
        )
        return FleetReport(records, report.lines, failure)

    def counts(self) -> Counts:
        return self.shared.counters.totals()

    def lock(self, timeout_s: float) -> contextlib.AbstractContextManager[bool]:
        return self.shared.step_lock.held(timeout_s)

    def pull(self, statistics: bool) -> None:
        """Nothing to do: the trainer's model is the one the workers step."""

    def push(self) -> None:
        """Nothing to do: the trainer's model is the one the workers step."""

    def stop(self) -> list[Any]:
        records = self.group.stop() if self.group is not None else []
        if self.serial_worker is not None:
            self.serial_worker.close()
            self.serial_worker = None
        return records + self._serial_records()

    def _serial_records(self) -> list[Any]:
        records = list(self.outbox.records)
        self.outbox.records.clear()
        return records

    def close(self) -> None:
        if self.shared is not None:
            self.shared.close()
