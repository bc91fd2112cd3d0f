"""The shared model under many workers: benchmarks/stress.py's CI-sized run (16 workers on 2 cores, a high update
rate, NaN written into the shared weights mid-run) keeps the weights and statistics sound and recovers; a worker
killed at any moment of the optimizer's step leaves the step lock free; a run whose damage keeps coming back ends."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from helpers import local_trainer

from a3c.checkpoint import load_checkpoint
from a3c.config import build_config
from a3c.fleet import new_step_lock
from a3c.health import MAX_ROLLBACKS
from a3c.processes import StepLock
from a3c.shared_optim import find_damage
from a3c.trainer import EXIT_FAILED

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.multiprocess
def test_sixteen_workers_keep_the_shared_model_sound_and_recover_from_poisoned_weights():
    """16 workers, 5-step rollouts: Adam's averages stay within their bound at every sample and no damage appears
    on its own; the NaN written 10 s in is rolled back once and training goes on to a sound model and status 0."""
    argv = [sys.executable, str(REPO_ROOT / "benchmarks" / "stress.py"), "--n-workers", "16", "--minutes", "0.4"]
    done = subprocess.run([*argv, "--poison-after", "10"], capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["exit_status"] == 0, (summary, done.stderr[-3000:])
    assert summary["poisoned_at_frames"] is not None
    assert summary["rollbacks"] == 1 and summary["damage"][0].startswith("non-finite weights"), summary["damage"]
    assert "rolled back to the weights and optimizer statistics" in done.stderr
    assert summary["damage_at_end"] is None
    assert summary["frames"] > summary["poisoned_at_frames"] and summary["updates"] > 500
    assert 0 < summary["peak_moment_ratio"] <= 1.01  # find_damage's slack for float32 rounding


def take_the_lock_over_and_over(step_lock: StepLock, turns: torch.Tensor) -> None:
    """Take and free the lock as fast as it goes, holding it for a moment each time, counting turns."""
    while True:
        with step_lock.held():
            turns += 1
            time.sleep(0.0002)


@pytest.mark.multiprocess
def test_the_step_lock_is_free_after_its_holder_is_killed_at_any_moment():
    """A child takes and frees the step lock over and over and is SIGKILLed at 30 random moments, inside the lock
    and out of it: each time the lock can be taken at once afterwards. While a live process holds it, a waiter with
    a deadline gives up instead of waiting forever."""
    ctx = mp.get_context("forkserver")  # the trainer's own way to start children: quick, torch imported once
    ctx.set_forkserver_preload(["a3c.worker", "a3c.evaluate"])
    step_lock = new_step_lock()
    rng = random.Random(0)
    try:
        for _ in range(30):
            child = start_once_it_has_the_lock(ctx, take_the_lock_over_and_over, step_lock)
            time.sleep(rng.uniform(0.0, 0.05))
            os.kill(child.pid, signal.SIGKILL)
            child.join()
            with step_lock.held(timeout_s=1.0) as held:
                assert held, "the lock stayed taken after its holder was killed"
        holder = start_once_it_has_the_lock(ctx, hold_for_a_minute, step_lock)
        with step_lock.held(timeout_s=0.3) as held:
            assert not held  # taken by a live process: the waiter gives up
        holder.kill()
        holder.join()
    finally:
        step_lock.close()


def hold_for_a_minute(step_lock: StepLock, turns: torch.Tensor) -> None:
    with step_lock.held():
        turns += 1
        time.sleep(60)


def start_once_it_has_the_lock(ctx, target, step_lock: StepLock):
    """A child running target(step_lock, turns), returned once it has held the lock at least once."""
    turns = torch.zeros((), dtype=torch.int64).share_memory_()
    child = ctx.Process(target=target, args=(step_lock, turns), daemon=True)
    child.start()
    deadline = time.monotonic() + 60
    while int(turns) == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert int(turns) > 0, "the child never took the lock"
    return child


@pytest.mark.slow
def test_damage_that_keeps_coming_back_ends_the_run_with_sound_weights(tmp_path: Path):
    """A serial CartPole run whose weights are poisoned again after each rollback: the MAX_ROLLBACKS-th ends it with
    status 1, saying so, and the checkpoint it leaves holds sound weights."""
    cfg = build_config(
        {
            "env_name": "CartPole-v1",
            "serial": True,
            "save_interval_s": 0.3,
            "max_seconds": 120,
            "checkpoint_dir": str(tmp_path / "ck"),
            "plot_dir": str(tmp_path / "pl"),
        }
    )
    trainer = local_trainer(cfg)
    weight = next(p for p in trainer.model.parameters() if p.dim() >= 2)
    done = threading.Event()

    def poison_after_each_rollback() -> None:
        poisoned = 0
        while not done.is_set() and poisoned < MAX_ROLLBACKS:
            if find_damage(trainer.model, trainer.optimizer) is None and trainer.fleet.shared.counters.frames() > 0:
                with torch.no_grad():
                    weight.view(-1)[0] = float("inf")
                poisoned += 1
            time.sleep(0.05)

    poisoner = threading.Thread(target=poison_after_each_rollback, daemon=True)
    poisoner.start()
    try:
        assert trainer.run() == EXIT_FAILED
    finally:
        done.set()
        poisoner.join()
    assert trainer.health.rollbacks == MAX_ROLLBACKS
    assert f"damaged {MAX_ROLLBACKS} times" in trainer.stop_reason
    payload = load_checkpoint(cfg.checkpoint_path)
    assert all(torch.isfinite(w).all() for w in payload["model"].values())
    assert payload["counters"]["rollbacks"] == MAX_ROLLBACKS
