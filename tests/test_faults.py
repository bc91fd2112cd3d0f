"""Faults (issue 5): Ctrl-C and SIGTERM, dying workers, a dying parent, non-finite updates, a saver killed at
random moments, and a full disk. Each runs the real thing: main.py in a subprocess, real signals, real limits."""

from __future__ import annotations

import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import torch
from helpers import (
    HAS_PROC,
    REPO_ROOT,
    assert_no_survivors,
    local_trainer,
    read_log,
    run_main,
    start_main,
    wait_for,
    worker_pids,
)

from a3c import trainer as trainer_module
from a3c.checkpoint import load_checkpoint, save_checkpoint
from a3c.config import build_config
from a3c.trainer import EXIT_FAILED

pytestmark = pytest.mark.skipif(not HAS_PROC, reason="needs /proc to find the run's processes")

CARTPOLE = "CartPole-v1"


def cartpole_args(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "--env-name", CARTPOLE, "--n-workers", "2", "--seed", "5",
        "--checkpoint-dir", str(tmp_path / "ck"), "--plot-dir", str(tmp_path / "pl"), *extra,
    ]  # fmt: skip


def games_recorded(tmp_path: Path) -> int:
    csv_path = tmp_path / "pl" / f"{CARTPOLE}.csv"
    return max(0, len(csv_path.read_text().splitlines()) - 1) if csv_path.exists() else 0


def start_training(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen, str, Path]:
    """main.py on CartPole with 2 workers, returned once both workers run and games are in the CSV (so frames
    count: the trainer writes a row per finished game, flushed; the progress line would take 10 s to come)."""
    marker, logs = uuid.uuid4().hex, tmp_path / "logs"
    proc = start_main(cartpole_args(tmp_path, *extra), marker, logs)
    wait_for(lambda: games_recorded(tmp_path) >= 2 or proc.poll() is not None, 120, "the first games in the CSV")
    assert proc.poll() is None, read_log(logs)[1][-3000:]
    wait_for(lambda: len(worker_pids(proc.pid)) == 2, 30, "two workers")
    return proc, marker, logs


def checkpoint_of(tmp_path: Path) -> Path:
    return tmp_path / "ck" / f"{CARTPOLE}.pt"


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 0)], ids=["ctrl-c", "sigterm"])
@pytest.mark.multiprocess
def test_interrupt_saves_and_exits_within_15_s(tmp_path: Path, signum: int, status: int):
    """Ctrl-C / SIGTERM: workers stopped, a final checkpoint and plot, exit 130 / 0 within 15 s, no process left."""
    proc, marker, logs = start_training(tmp_path)
    sent = time.monotonic()
    proc.send_signal(signum)
    assert proc.wait(timeout=15) == status, read_log(logs)[1][-3000:]
    assert time.monotonic() - sent < 15
    out, err = read_log(logs)
    assert "Traceback" not in err
    assert "a3c: stopped:" in out and ("interrupted (Ctrl-C)" in out if signum == signal.SIGINT else "SIGTERM" in out)
    payload = load_checkpoint(checkpoint_of(tmp_path))
    assert payload["counters"]["frames"] > 0
    assert (tmp_path / "pl" / f"{CARTPOLE}.png").exists()
    assert_no_survivors(marker)


@pytest.mark.multiprocess
def test_second_ctrl_c_quits_at_once_and_keeps_the_last_checkpoint(tmp_path: Path):
    """Two Ctrl-C in a row: exit 130 at once, one line instead of a traceback, the checkpoint on disk still loads."""
    proc, marker, logs = start_training(tmp_path, "--save-interval", "0.5")
    wait_for(checkpoint_of(tmp_path).exists, 30, "a periodic checkpoint")
    proc.send_signal(signal.SIGINT)
    # Two signals before the handler runs are delivered as one, so the second goes once the first was taken.
    wait_for(lambda: "a3c: stopping" in read_log(logs)[1], 10, "the first Ctrl-C to be taken", poll_s=0.005)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=15) == 130
    _, err = read_log(logs)
    assert "Traceback" not in err and "stopped at once by Ctrl-C" in err, read_log(logs)
    load_checkpoint(checkpoint_of(tmp_path))
    assert_no_survivors(marker)


@pytest.mark.multiprocess
def test_killed_worker_is_replaced_and_training_goes_on(tmp_path: Path):
    """SIGKILL a worker: the parent logs which one and how it died, spawns a replacement, and frames keep counting."""
    proc, marker, logs = start_training(tmp_path, "--save-interval", "0.5")
    victim = worker_pids(proc.pid)[0]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: "died (exit code -9)" in read_log(logs)[1], 10, "the parent to notice the dead worker")
    wait_for(lambda: len(set(worker_pids(proc.pid)) - {victim}) == 2, 30, "a replacement worker")
    wait_for(checkpoint_of(tmp_path).exists, 30, "a periodic checkpoint")
    frames_then = load_checkpoint(checkpoint_of(tmp_path))["counters"]["frames"]
    time.sleep(3)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0
    assert load_checkpoint(checkpoint_of(tmp_path))["counters"]["frames"] > frames_then
    assert_no_survivors(marker)


@pytest.mark.multiprocess
def test_worker_that_keeps_crashing_ends_the_run(tmp_path: Path):
    """An env that raises: each death is logged with its traceback and replaced; the fifth ends the run, status 1."""
    marker = uuid.uuid4().hex
    args = cartpole_args(tmp_path)
    args[args.index(CARTPOLE)] = "faulty_envs:CrashingGame-v0"
    args[args.index("--n-workers") + 1] = "1"
    done = run_main(args, marker, timeout=180)
    assert done.returncode == EXIT_FAILED, done.stderr[-3000:]
    assert done.stderr.count("RuntimeError: simulated crash inside the game") == 5
    assert done.stderr.count("worker-0 died (exit code 1)") == 5
    assert "worker-0 died 5 times in 10 minutes" in done.stdout
    assert load_checkpoint(tmp_path / "ck" / "faulty_envs_CrashingGame-v0.pt")["counters"]["frames"] > 0
    assert_no_survivors(marker)


@pytest.mark.multiprocess
def test_workers_exit_when_the_parent_is_killed(tmp_path: Path):
    """SIGKILL the parent: its workers notice and exit within seconds instead of training on as orphans."""
    proc, marker, _ = start_training(tmp_path)
    workers = worker_pids(proc.pid)
    proc.kill()
    proc.wait()
    wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in workers), 10, "orphaned workers to exit")
    assert_no_survivors(marker)


def test_non_finite_updates_are_skipped_and_stop_the_run(tmp_path: Path):
    """NaN rewards: no update reaches the shared model, each is counted, and the run stops with status 1."""
    cfg = build_config(
        {
            "env_name": "faulty_envs:NanRewardGame-v0",
            "serial": True,
            "clip_rewards": False,
            "hidden_size": 16,
            "checkpoint_dir": str(tmp_path / "ck"),
            "plot_dir": str(tmp_path / "pl"),
        }
    )
    trainer = local_trainer(cfg)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    assert trainer.run() == EXIT_FAILED
    assert "non-finite" in trainer.stop_reason
    _, updates, skipped = trainer.fleet.shared.counters.totals()
    assert skipped >= 20 and updates == 0
    payload = load_checkpoint(tmp_path / "ck" / "faulty_envs_NanRewardGame-v0.pt")
    for name, weights in payload["model"].items():
        assert torch.equal(weights, before[name]), name  # the saved model is the last good one: untouched


def test_skips_from_damaged_shared_weights_roll_back_instead_of_ending_the_run(tmp_path: Path, monkeypatch):
    """NaN in the shared weights makes every update non-finite. When the skipped updates pile up before the
    periodic health check comes (a plot that takes seconds on a loaded machine), the trainer rolls back and goes
    on rather than ending the run for them."""
    monkeypatch.setattr(trainer_module, "HEALTH_INTERVAL_S", 1e9)
    cfg = build_config(
        {
            "env_name": CARTPOLE,
            "serial": True,
            "max_seconds": 6,
            "checkpoint_dir": str(tmp_path / "ck"),
            "plot_dir": str(tmp_path / "pl"),
        }
    )
    trainer = local_trainer(cfg)
    with torch.no_grad():
        next(trainer.model.parameters()).view(-1)[:3] = float("nan")
    assert trainer.run() == 0, trainer.stop_reason
    assert trainer.fleet.shared.counters.totals().skipped_updates >= 20 and trainer.health.rollbacks == 1
    assert trainer.health.damage_seen[0][1].startswith("non-finite weights")
    _, updates, skipped = trainer.fleet.shared.counters.totals()
    assert updates > skipped  # it learned again after the rollback


SAVER = """
import sys, torch
from a3c.checkpoint import FORMAT, VERSION, save_checkpoint
path, i = sys.argv[1], 0
while True:
    i += 1
    # ~8 MB per save, so a kill often lands inside a write; the counter says which save a file holds
    payload = {"format": FORMAT, "version": VERSION, "env_name": "Game", "model_spec": {},
               "optimizer": {"name": "adam", "state": {"state": {}, "param_groups": []}},
               "model": {"weights": torch.full((2_000_000,), float(i))}, "counters": {"i": i},
               "history": {"names": [], "columns": []}}
    save_checkpoint(payload, path)
    print(i, flush=True)
"""


@pytest.mark.multiprocess
def test_saver_killed_at_random_moments_always_leaves_a_loadable_checkpoint(tmp_path: Path):
    """SIGKILL a process that saves over and over, at 25 random moments: the checkpoint (and .prev) always load."""
    path = tmp_path / "game.pt"
    rng = random.Random(0)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    last_seen = 0
    for _ in range(25):
        saver = subprocess.Popen([sys.executable, "-c", SAVER, str(path)], stdout=subprocess.PIPE, env=env, text=True)
        if not path.exists():
            saver.stdout.readline()  # the very first save must complete before there is anything to keep
        time.sleep(rng.uniform(0.0, 0.6))
        saver.kill()
        saver.wait()
        saver.stdout.close()
        payload = load_checkpoint(path)
        i = payload["counters"]["i"]
        assert torch.equal(payload["model"]["weights"], torch.full((2_000_000,), float(i)))  # one whole save
        if path.with_name("game.pt.prev").exists():
            prev = load_checkpoint(path.with_name("game.pt.prev"))
            # Never newer than the checkpoint; the same save when the kill fell between linking .prev and the rename.
            assert prev["model"]["weights"][-1] == prev["counters"]["i"] <= i
        last_seen = max(last_seen, i)
    assert last_seen >= 1


FULL_DISK = """
import resource, signal, sys, torch
from a3c.checkpoint import save_checkpoint
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG, as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, 1_000_000))
try:
    save_checkpoint({"weights": torch.ones(2_000_000)}, sys.argv[1])
except OSError as error:
    print("OSError", error.errno)
"""


@pytest.mark.multiprocess
def test_full_disk_never_replaces_a_good_checkpoint(tmp_path: Path):
    """A save that cannot be written whole (file size limit: EFBIG, like ENOSPC) leaves the old checkpoint as it was."""
    path = tmp_path / "game.pt"
    save_checkpoint({"weights": torch.zeros(10)}, path)
    good = path.read_bytes()
    done = subprocess.run(
        [sys.executable, "-c", FULL_DISK, str(path)],
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout.startswith("OSError"), done.stderr[-2000:]
    assert path.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["game.pt"]  # no partial file, no .prev churn


def test_full_disk_during_training_is_reported_and_training_goes_on(tmp_path: Path, caplog):
    """Trainer.save on a failing disk logs the error, keeps the checkpoint, and does not stop the run."""
    cfg = build_config(
        {"env_name": CARTPOLE, "serial": True, "max_frames": 200, "hidden_size": 16,
         "checkpoint_dir": str(tmp_path / "ck"), "plot_dir": str(tmp_path / "pl")}
    )  # fmt: skip
    trainer = local_trainer(cfg)
    trainer.save()
    good = cfg.checkpoint_path.read_bytes()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (len(good) // 2, hard))
        trainer.save()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert "could not save" in caplog.text and "previous checkpoint is untouched" in caplog.text
    assert cfg.checkpoint_path.read_bytes() == good
    assert trainer.stop_reason is None


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mount") is None, reason="mounts a small tmpfs (needs root)")
@pytest.mark.slow
def test_a_full_disk_under_the_csv_costs_rows_never_the_final_checkpoint(tmp_path: Path, caplog):
    """The plots folder on a 16 KiB tmpfs: the CSV soon meets a real full disk (ENOSPC). The run says so once, trains
    on, and its final checkpoint holds every game; only the CSV lost rows."""
    plots = tmp_path / "pl"
    plots.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(plots)], check=True)
    try:
        cfg = build_config(
            {"env_name": CARTPOLE, "serial": True, "max_frames": 20_000, "hidden_size": 16, "save_interval_s": 1000,
             "checkpoint_dir": str(tmp_path / "ck"), "plot_dir": str(plots)}
        )  # fmt: skip
        trainer = local_trainer(cfg)
        assert trainer.run() == 0, trainer.stop_reason
        rows = len(cfg.csv_path.read_text().splitlines()) - 1
    finally:
        subprocess.run(["umount", "--lazy", str(plots)], check=True)  # lazy: even with a file still open
    payload = load_checkpoint(cfg.checkpoint_path)
    assert payload["counters"]["frames"] >= 20_000
    assert len(payload["history"]["columns"][0]) == trainer.metrics.games > rows + 100
    assert "could not write" in caplog.text and "No space left on device" in caplog.text


def test_a_save_writes_only_sound_statistics_while_a_step_outside_the_lock_damages_them(tmp_path: Path):
    """With --no-lock-step a worker steps without the lock, so it can damage the statistics while the trainer copies
    them. A thread that writes inf into an exp_avg_sq and takes it out again, at random moments and without the lock,
    while the trainer saves 30 times: every checkpoint written holds finite statistics, and some are written."""
    cfg = build_config(
        {"env_name": CARTPOLE, "serial": True, "lock_step": False, "hidden_size": 16, "save_interval_s": 1000,
         "checkpoint_dir": str(tmp_path / "ck"), "plot_dir": str(tmp_path / "pl")}
    )  # fmt: skip
    trainer = local_trainer(cfg)
    statistic = trainer.optimizer.state[trainer.optimizer.param_groups[0]["params"][0]]["exp_avg_sq"]
    done = threading.Event()

    def damage_now_and_then() -> None:
        rng = random.Random(0)
        while not done.is_set():
            statistic.view(-1)[0] = float("inf")
            time.sleep(rng.uniform(0.0, 0.001))
            statistic.view(-1)[0] = 0.0
            time.sleep(rng.uniform(0.0, 0.001))

    damager = threading.Thread(target=damage_now_and_then, daemon=True)
    damager.start()
    written = 0
    try:
        for _ in range(30):
            before = cfg.checkpoint_path.stat().st_mtime_ns if cfg.checkpoint_path.exists() else None
            trainer.save()
            if cfg.checkpoint_path.exists() and cfg.checkpoint_path.stat().st_mtime_ns != before:
                written += 1
                state = torch.load(cfg.checkpoint_path, weights_only=True)["optimizer"]["state"]["state"]
                tensors = [v for per_param in state.values() for v in per_param.values() if torch.is_tensor(v)]
                assert all(torch.isfinite(v).all() for v in tensors), "a checkpoint holds non-finite statistics"
    finally:
        done.set()
        damager.join()
        trainer.close()
    assert written > 0
