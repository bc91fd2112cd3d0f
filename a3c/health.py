"""The health of a shared model: the last sound snapshot of its weights and optimizer statistics, the check for
damage, the rollback, and the rule on updates skipped as non-finite. The trainer keeps one for the model it saves; each
cluster host keeps one for its host-local model."""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import nn

from a3c.shared_optim import find_damage, statistics

SKIP_WINDOW_S = 30.0  # non-finite updates: more skipped than applied in this window, and at least
MIN_SKIPPED_TO_STOP = 20  # this many, end the run
MAX_ROLLBACKS = 3  # rollbacks within ROLLBACK_WINDOW_S that end the run: the damage keeps coming back
ROLLBACK_WINDOW_S = 600.0
LOCK_WAIT_S = 30.0  # the longest a check waits for the step lock before it tries again later


class Snapshot(NamedTuple):
    """The shared weights and optimizer statistics at a moment they were sound, and the frame count then."""

    frames: int
    tensors: list[torch.Tensor]


Lock = Callable[[float], contextlib.AbstractContextManager[bool]]  # held(timeout_s) -> True once held, False if not


class Health:
    """Watches one shared model and its optimizer. lock(timeout_s) holds whatever keeps steps off the model while it
    is confirmed, copied or rolled back (the step lock, or nothing where no process steps it); frames() is the run's
    frame count; say(line) tells the user."""

    def __init__(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, lock: Lock, frames: Callable[[], int],
        say: Callable[[str], None], rollbacks_before: int = 0,
    ):  # fmt: skip
        self.model, self.optimizer, self.lock, self.frames, self.say = model, optimizer, lock, frames, say
        self.rollbacks_before = rollbacks_before
        self.rollback_times: deque[float] = deque()
        self.damage_seen: list[tuple[int, str]] = []  # (frames, what) of each rollback in this session
        self.update_window: deque[tuple[float, int, int]] = deque()  # (time, updates, skipped updates)
        self.failure: str | None = None  # why the run must end, once the damage keeps coming back
        self.snapshot = self.take_snapshot()

    @property
    def rollbacks(self) -> int:
        """Rollbacks over the whole run, resumes included."""
        return self.rollbacks_before + len(self.damage_seen)

    def tensors(self) -> list[torch.Tensor]:
        """The shared weights and every optimizer statistic (step counts too), in a fixed order."""
        return [p.detach() for p in self.model.parameters()] + statistics(self.optimizer)

    def take_snapshot(self) -> Snapshot:
        self.snapshot = Snapshot(self.frames(), [t.clone() for t in self.tensors()])
        return self.snapshot

    def check(self) -> bool:
        """True if the weights and statistics are sound; if not, roll them back and return False.

        The first look goes without the lock, so it may read a step half-way. Damage is confirmed under the lock,
        with no step under way (with --lock-step, the default), and only then rolled back; what the first look saw
        is kept in the message when the two differ (a damaged statistic beside sound weights is not what a bad
        step leaves)."""
        seen = find_damage(self.model, self.optimizer)
        if seen is None:
            return True
        with self.lock(LOCK_WAIT_S) as held:
            if not held:
                self.say(f"{seen}, but the step lock stayed taken for {LOCK_WAIT_S:.0f} s; trying again later")
                return False
            damage = find_damage(self.model, self.optimizer)
            if damage is None:
                self.say(f"a look without the step lock saw {seen}; under the lock all is sound: nothing rolled back")
                return True
            self.roll_back(damage if damage == seen else f"{damage} (first seen without the lock: {seen})")
        return False

    def keep_or_roll_back(self) -> bool:
        """With the lock held: the sound state becomes the snapshot a later rollback returns to, or damage is rolled
        back. False if it was rolled back."""
        damage = find_damage(self.model, self.optimizer)
        if damage is None:
            self.take_snapshot()
            return True
        self.roll_back(damage)
        return False

    def roll_back(self, damage: str) -> None:
        """With the lock held: put back the last sound snapshot, say so in one line, and go on; once that keeps
        happening, set failure."""
        with torch.no_grad():
            for tensor, saved in zip(self.tensors(), self.snapshot.tensors, strict=True):
                tensor.copy_(saved)
        now = time.monotonic()
        self.rollback_times.append(now)
        while now - self.rollback_times[0] > ROLLBACK_WINDOW_S:
            self.rollback_times.popleft()
        frames = self.frames()
        self.damage_seen.append((frames, damage))
        self.say(
            f"{damage} at {frames:,} frames; rolled back to the weights and optimizer statistics of "
            f"{self.snapshot.frames:,} frames and going on (rollback {self.rollbacks})"
        )
        if len(self.rollback_times) >= MAX_ROLLBACKS:
            self.failure = (
                f"the shared model was damaged {len(self.rollback_times)} times in {ROLLBACK_WINDOW_S / 60:.0f} "
                f"minutes ({damage}); it holds the weights of {self.snapshot.frames:,} frames (try a lower --lr)"
            )

    def skipped_too_many(self, now: float, updates: int, skipped: int) -> str | None:
        """Why the run must end when most recent updates came out non-finite (the model would only stand still), or
        None. Unless the weights themselves are what is damaged: then every worker's loss is non-finite until a
        rollback, so roll back now and count afresh, whenever the periodic check would otherwise have come."""
        window = self.update_window
        window.append((now, updates, skipped))
        while now - window[0][0] > SKIP_WINDOW_S:
            window.popleft()
        _, updates_then, skipped_then = window[0]
        new_skipped, applied = skipped - skipped_then, updates - updates_then
        if new_skipped < MIN_SKIPPED_TO_STOP or new_skipped <= applied:
            return None
        if not self.check():
            window.clear()
            return None
        return (
            f"{new_skipped} of the last {new_skipped + applied} updates had a non-finite loss or gradient and were "
            "skipped; the model holds the last good weights (try a lower --lr or --max-grad-norm)"
        )
