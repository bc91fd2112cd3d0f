"""The records that cross the process boundary: what workers and the evaluator put on the results queue for the
trainer, the only process that writes files. Small NamedTuples, so they pickle cheaply and read plainly."""

from __future__ import annotations

from typing import NamedTuple


class GameResult(NamedTuple):
    """One finished game, as a worker reports it: real score (all lives, unclipped), length in agent steps,
    frames = the global emulator-frame count when it ended."""

    worker: int
    score: float
    length: int
    frames: int


class WorkerStats(NamedTuple):
    """Where a worker's time went since it started, in seconds, with the agent steps it took (for profiling), and
    its mean policy loss, value loss and policy entropy (per step) over the updates since its last report."""

    worker: int
    agent_steps: int
    seconds: dict[str, float]
    losses: dict[str, float]


class WorkerFailure(NamedTuple):
    """A child's last words: its rank (-1 for the evaluator) and the traceback of the exception that ended it."""

    worker: int
    traceback: str


class EvalResult(NamedTuple):
    """The evaluator's scores of the shared model after `frames` emulator frames."""

    frames: int
    scores: list[float]
