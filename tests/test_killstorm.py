"""Kill storms (issue #37): a child killed at any instruction must leave nothing that another process waits for.

A whole run (benchmarks/killstorm.py) has its workers, evaluator and fork server SIGKILLed at random moments; and a
child that uses every channel a worker shares, as fast as it can, is SIGKILLed at random moments while another goes
on beside it."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.multiprocessing as mp
from helpers import HAS_PROC, REPO_ROOT

from a3c.config import build_config
from a3c.envs import env_spaces
from a3c.fleet import share_state
from a3c.messages import GameResult
from a3c.model import build_model
from a3c.processes import SharedState
from a3c.shared_optim import make_optimizer

pytestmark = pytest.mark.skipif(not HAS_PROC, reason="needs /proc to find the run's processes")


@pytest.mark.multiprocess
def test_a_storm_of_kills_leaves_no_hang_no_false_death_no_orphan_and_loadable_checkpoints():
    """60 SIGKILLs of random workers, evaluators and fork servers of real CartPole runs: each run goes on (deaths
    reported, games still coming) or ends by the death rule, Ctrl-C ends it within 15 s, a killed fork server is not
    taken for dead workers, nothing of the run is left, and every checkpoint loads."""
    argv = [sys.executable, str(REPO_ROOT / "benchmarks" / "killstorm.py"), "--target", "all", "--kills", "60"]
    argv += ["--kills-per-run", "10", "--max-delay", "0.4", "--seed", "1", "--patience", "20"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["kills"] == 60 and all(summary["kills_by_target"].values()), summary
    assert summary["failures"] == [], summary["failures"]
    assert summary["hangs"] == summary["false_deaths"] == summary["orphans"] == 0
    assert summary["unloadable_checkpoints"] == 0


def use_every_channel(rank: int, shared: SharedState, outbox) -> None:
    """What a worker does with what it shares, with nothing else in between: count frames, step under the step lock
    and count the update, look at the stop flag, send a record."""
    row = shared.counters.row(rank)
    shared.step_lock.open()
    while not shared.stop.is_set():
        row[0] += 4
        with shared.step_lock.held():
            row[1] += 1
        outbox.send(GameResult(rank, 1.0, 1, int(row[0])))


def start(ctx, rank: int, shared: SharedState):
    reader, writer = ctx.Pipe(duplex=False)
    child = ctx.Process(target=use_every_channel, args=(rank, shared, writer), daemon=True)
    child.start()
    writer.close()
    return child, reader


def drain(reader) -> int:
    """Records waiting on a child's pipe; -1 once its end is closed."""
    count = 0
    try:
        while reader.poll():
            reader.recv()
            count += 1
    except EOFError:
        return -1
    return count


@pytest.mark.multiprocess
def test_a_child_killed_at_any_moment_of_its_traffic_leaves_every_channel_working():
    """Child A uses every shared channel as fast as it goes and is SIGKILLed at 40 random moments (a new A each
    time); child B does the same throughout. After each kill, B's counts and records still come, the counters sum,
    the step lock is free within a second, and at the end the stop flag ends B."""
    cfg = build_config({"env_name": "CartPole-v1", "hidden_size": 16})
    model, _ = build_model(cfg, *env_spaces(cfg))
    shared = share_state(model.share_memory(), make_optimizer(cfg, model.parameters()), max_rank=1)
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["a3c.worker", "a3c.evaluate"])
    rng = random.Random(0)
    b, b_reader = start(ctx, 1, shared)
    try:
        for _ in range(40):
            a, a_reader = start(ctx, 0, shared)
            deadline = time.monotonic() + 30
            while shared.counters.row(0)[1] == 0 and time.monotonic() < deadline:
                drain(a_reader)
                time.sleep(0.001)
            time.sleep(rng.uniform(0.0, 0.03))
            os.kill(a.pid, signal.SIGKILL)
            a.join()
            while drain(a_reader) >= 0:  # its last records, then the end of its pipe
                pass
            a_reader.close()
            shared.counters.row(0)[:] = 0  # the next A starts its row afresh (the trainer gives each rank one row)
            b_updates = shared.counters.row(1)[1]
            received = 0
            deadline = time.monotonic() + 5
            while (received == 0 or shared.counters.row(1)[1] == b_updates) and time.monotonic() < deadline:
                received += drain(b_reader)
                time.sleep(0.001)
            assert received > 0 and shared.counters.row(1)[1] > b_updates, "B stalled after A was killed"
            assert shared.counters.updates() >= b_updates
            with shared.step_lock.held(timeout_s=1.0) as held:
                assert held, "the step lock stayed taken after A was killed"
        shared.stop.set()
        deadline = time.monotonic() + 5
        while b.is_alive() and time.monotonic() < deadline:
            drain(b_reader)
            time.sleep(0.01)
        assert not b.is_alive(), "B did not stop on the stop flag"
    finally:
        b.kill()
        b.join()
        shared.close()
    assert torch.isfinite(next(model.parameters())).all()
