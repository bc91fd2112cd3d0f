"""What the trainer shares with its child processes, and what every child (a worker, the evaluator) does around
its work: threads, signals, logging, and its last words on failure."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.queues import Queue
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event

import cv2
import torch

from a3c.messages import WorkerFailure
from a3c.model import ActorCritic


@dataclass
class SharedState:
    """Everything the trainer shares with its workers; all of it pickles under the spawn start method.

    frames, updates and skipped_updates are int64 multiprocessing Values, added to once per rollout; stop is the
    Event every loop checks; results carries the records of a3c.messages to the trainer, the only writer of files.
    The model's parameters and the optimizer's statistics are in shared memory and are updated by the workers
    without a lock (Hogwild), as in the paper.
    """

    model: ActorCritic
    optimizer: torch.optim.Optimizer
    frames: Synchronized[int]
    updates: Synchronized[int]
    skipped_updates: Synchronized[int]
    stop: Event
    results: Queue


def configure_logging() -> None:
    """Diagnostics of a child go to stderr with its process name; its results go to the trainer, never to print."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(processName)s %(levelname)s %(message)s")


@contextlib.contextmanager
def child_process(rank: int, shared: SharedState) -> Iterator[int]:
    """What every spawned child (workers, and the evaluator as rank -1) does around its work: one intra-op thread,
    Ctrl-C left to the trainer, any exception sent to it as a WorkerFailure before exiting with status 1, and at the
    end the results queue flushed, or abandoned if the trainer is gone. Yields the trainer's pid."""
    configure_logging()
    torch.set_num_threads(1)  # one intra-op thread per process: the workers already use every core
    cv2.setNumThreads(1)  # the same for OpenCV's resize, whose pool would otherwise wake a thread per core
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the trainer, which stops us through the event
    parent = os.getppid()
    try:
        yield parent
    except KeyboardInterrupt:
        pass  # Ctrl-C reaches the whole process group; the trainer decides what happens
    except BaseException:
        shared.results.put(WorkerFailure(rank, traceback.format_exc()))
        raise SystemExit(1) from None
    finally:
        if os.getppid() != parent:
            # Nobody reads the queue any more: exit without waiting for its feeder to flush into a full pipe.
            shared.results.cancel_join_thread()
        # Let the queue's feeder thread flush what we put, so the trainer sees our last records.
        time.sleep(0.05)
