"""benchmarks/features.py: dead units and the features' spread are counted where they are known, on the trainer's own
frames."""

from __future__ import annotations

import torch
from helpers import load_benchmark
from torch import nn

from a3c.config import build_config
from a3c.envs import env_spaces
from a3c.model import build_model


def test_dead_units_are_the_ones_that_never_fire():
    """A conv channel whose bias keeps it below zero, and fc units pushed below ReLU's zero or ELU's floor, are dead;
    the others, and the spread of an output that varies, are counted as alive."""
    features = load_benchmark("features")
    torch.manual_seed(0)
    conv, fc = nn.Conv2d(1, 4, 3), nn.Linear(4 * 6 * 6, 8)
    trunk = nn.Sequential(nn.Sequential(conv, nn.ReLU(), nn.Flatten()), fc, nn.ELU())
    with torch.no_grad():
        conv.weight.abs_()
        conv.bias.copy_(torch.tensor([-100.0, 0.0, 0.0, 0.0]))  # channel 0 never fires: inputs are in [0, 1)
        fc.bias[:3] = -1e4  # three ELU units saturated at -1
    report, spread = features.layer_health(trunk, torch.rand(32, 1, 8, 8))
    assert [(row["units"], row["dead"]) for row in report] == [(4, 0.25), (8, 0.375)]
    assert spread > 0


def test_a_fresh_pong_net_seen_through_the_trainers_own_frames():
    """Observations of random play through make_env reach the small net's four ELU convolutions, none of them dead
    before training, and its features vary with the screen."""
    features = load_benchmark("features")
    cfg = build_config({"env_name": "PongNoFrameskip-v4"})
    torch.manual_seed(0)
    model, _ = build_model(cfg, *env_spaces(cfg))
    obs = features.random_observations(cfg, steps=50, seed=0)
    report, spread = features.layer_health(model.trunk, model.trunk_input(obs))
    assert [row["dead"] for row in report] == [0.0] * 4
    assert spread > 0
