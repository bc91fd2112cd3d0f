"""What the trainer shares with its child processes, and what every child (a worker, the evaluator) does around
its work: threads, signals, logging, and its last words on failure."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import signal
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.queues import Queue
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event, Lock
from typing import Any

import cv2
import torch

from a3c.messages import WorkerFailure
from a3c.model import ActorCritic

NOBODY = -1


@dataclass
class StepLock:
    """The lock around the shared optimizer's step, with the rank that holds it: a worker killed inside its step
    (SIGKILL, the OOM killer) would otherwise leave every other worker waiting for it forever. The trainer releases
    the lock on behalf of a dead holder (release_for)."""

    lock: Lock
    holder: ctypes.c_int  # a RawValue: written only by whoever holds the lock

    @contextlib.contextmanager
    def held_by(self, rank: int, keep_waiting: Callable[[], bool] = lambda: True) -> Iterator[bool]:
        """Hold the lock for the with-block, which gets True; or False, without the lock, once keep_waiting()
        (asked twice a second while the lock is taken) says to stop waiting: the run is ending, or the trainer is
        gone, and no one must wait forever on a holder that died."""
        while not self.lock.acquire(timeout=0.5):
            if not keep_waiting():
                yield False
                return
        self.holder.value = rank
        try:
            yield True
        finally:
            self.holder.value = NOBODY
            self.lock.release()

    def release_for(self, rank: int) -> bool:
        """Release the lock if rank (a process that has died) holds it; True if it did."""
        if rank == NOBODY or self.holder.value != rank:
            return False
        self.holder.value = NOBODY
        self.lock.release()
        return True


@dataclass
class SharedState:
    """Everything the trainer shares with its workers; all of it pickles to a child of the fork server.

    frames, updates and skipped_updates are int64 multiprocessing Values, added to once per rollout; stop is the
    Event every loop checks; results carries the records of a3c.messages to the trainer, the only writer of files.
    The model's parameters and the optimizer's statistics are in shared memory. Workers read the weights and hand
    over gradients without a lock (Hogwild, as in the paper); step_lock serializes the optimizer's step itself
    (with cfg.lock_step) and the trainer's rollback of damaged weights.
    """

    model: ActorCritic
    optimizer: torch.optim.Optimizer
    frames: Synchronized[int]
    updates: Synchronized[int]
    skipped_updates: Synchronized[int]
    stop: Event
    results: Queue
    step_lock: StepLock

    @classmethod
    def create(
        cls,
        ctx: Any,
        model: ActorCritic,
        optimizer: torch.optim.Optimizer,
        frames: int = 0,
        updates: int = 0,
        skipped_updates: int = 0,
    ) -> SharedState:
        """The shared handles for a model and optimizer already in shared memory, made from ctx (the spawn or
        fork-server context the children come from), the counters starting at the given values."""
        return cls(
            model=model,
            optimizer=optimizer,
            frames=ctx.Value("q", frames),
            updates=ctx.Value("q", updates),
            skipped_updates=ctx.Value("q", skipped_updates),
            stop=ctx.Event(),
            results=ctx.Queue(),
            step_lock=StepLock(ctx.Lock(), ctx.RawValue("i", NOBODY)),
        )


def configure_logging() -> None:
    """Diagnostics of a child go to stderr with its process name; its results go to the trainer, never to print."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(processName)s %(levelname)s %(message)s")


def trainer_alive() -> bool:
    """False once the trainer that started this process has died, so an orphan stops instead of running on. Asks
    multiprocessing's sentinel for the parent, not os.getppid(): a child of the fork server has the server as its
    parent, and the server lives as long as any of its children does. True in the trainer itself (serial mode)."""
    parent = multiprocessing.parent_process()
    return parent is None or parent.is_alive()


@contextlib.contextmanager
def child_process(rank: int, shared: SharedState) -> Iterator[None]:
    """What every child (workers, and the evaluator as rank -1) does around its work: one intra-op thread, Ctrl-C
    left to the trainer, any exception sent to it as a WorkerFailure before exiting with status 1, and at the end the
    results queue flushed, or abandoned if the trainer is gone."""
    configure_logging()
    torch.set_num_threads(1)  # one intra-op thread per process: the workers already use every core
    cv2.setNumThreads(1)  # the same for OpenCV's resize, whose pool would otherwise wake a thread per core
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the trainer, which stops us through the event
    try:
        yield
    except KeyboardInterrupt:
        pass  # Ctrl-C reaches the whole process group; the trainer decides what happens
    except BaseException:
        shared.results.put(WorkerFailure(rank, traceback.format_exc()))
        raise SystemExit(1) from None
    finally:
        if not trainer_alive():
            # Nobody reads the queue any more: exit without waiting for its feeder to flush into a full pipe.
            shared.results.cancel_join_thread()
        # Let the queue's feeder thread flush what we put, so the trainer sees our last records.
        time.sleep(0.05)
