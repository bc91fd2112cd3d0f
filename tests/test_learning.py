"""The algorithm's guard (A3C with 2 real workers must learn CartPole-v1 within a fixed frame budget), and the
learning benchmark's summary."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import local_trainer

from a3c.config import build_config
from a3c.metrics import read_csv


@pytest.mark.learning
def test_two_workers_learn_cartpole_to_195(tmp_path):
    """2 spawned workers reach a 100-game average of 195 within 600k frames (typically ~170k, about 40 s idle).
    Through the default learner, the tape, only: test_learners.py holds the autograd learner to the same weights
    update for update, and trains a network only autograd can learn end to end."""
    cfg = build_config(
        {
            "env_name": "CartPole-v1",
            "n_workers": 2,
            "seed": 3,
            "target_reward": 195.0,
            "max_frames": 600_000,
            "max_seconds": 240.0,
            "checkpoint_dir": str(tmp_path / "checkpoints"),
            "plot_dir": str(tmp_path / "plots"),
        }
    )
    trainer = local_trainer(cfg)
    status = trainer.run()
    assert status == 0
    columns = read_csv(cfg.csv_path)
    best = max(avg for i, avg in enumerate(columns["avg100"]) if i >= 99)
    assert best >= 195.0, (
        f"CartPole not learned: best 100-game average {best:.1f} after {columns['frames'][-1]:,.0f} frames"
    )
    assert trainer.stop_reason.startswith("reached the target")


@pytest.mark.learning
def test_learning_benchmark_summary_names_its_run(tmp_path):
    """benchmarks/learning.py's last line is a JSON summary that says which run it was: the settings that shape
    learning (frame skip included), the milestones of the game and the frames actually run."""
    root = Path(__file__).resolve().parent.parent
    out_dir = tmp_path / "run"
    argv = [sys.executable, str(root / "benchmarks" / "learning.py"), "--env-name", "CartPole-v1", "--n-workers", "1"]
    argv += ["--max-frames", "2000", "--gamma", "0.95", "--out-dir", str(out_dir)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=240, cwd=root)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary == json.loads((out_dir / "learning.json").read_text(encoding="utf-8"))
    assert summary["env_name"] == "CartPole-v1" and summary["exit_status"] == 0
    assert summary["frames"] >= 2000 and summary["games"] > 0
    assert list(summary["milestones"]) == ["50", "100", "150", "195"]
    assert summary["settings"]["gamma"] == 0.95
    assert {"frame_skip", "noop_max", "clip_rewards", "rollout_len", "entropy_coef"} <= set(summary["settings"])
