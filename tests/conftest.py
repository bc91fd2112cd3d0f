"""Shared fixtures: small configs whose outputs go under tmp_path, never the real checkpoints/ or plots/."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from a3c.config import Config

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tests run tiny tensors on a shared 2-core machine: one intra-op thread avoids oversubscription stalls."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_cfg(tmp_path: Path) -> Config:
    """A valid Config for CartPole-v1 with checkpoint_dir and plot_dir under tmp_path."""
    return Config(
        env_name="CartPole-v1",
        n_workers=1,
        rollout_len=5,
        hidden_size=32,
        save_interval_s=1000.0,
        checkpoint_dir=str(tmp_path / "checkpoints"),
        plot_dir=str(tmp_path / "plots"),
    ).validate()
