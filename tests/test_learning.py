"""The algorithm's guard: A3C with 2 real workers must learn CartPole-v1 within a fixed frame budget."""

from __future__ import annotations

from a3c.config import build_config
from a3c.metrics import read_csv
from a3c.trainer import Trainer


def test_two_workers_learn_cartpole_to_195(tmp_path):
    """2 spawned workers reach a 100-game average of 195 within 600k frames (typically ~170k, about 40 s)."""
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
    trainer = Trainer(cfg)
    status = trainer.run()
    assert status == 0
    columns = read_csv(cfg.csv_path)
    best = max(avg for i, avg in enumerate(columns["avg100"]) if i >= 99)
    assert best >= 195.0, (
        f"CartPole not learned: best 100-game average {best:.1f} after {columns['frames'][-1]:,.0f} frames"
    )
    assert trainer.stop_reason.startswith("reached the target")
