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
    before training, and its features vary with the screen; so does h, with no LSTM gate shut."""
    features = load_benchmark("features")
    cfg = build_config({"env_name": "PongNoFrameskip-v4"})
    torch.manual_seed(0)
    model, _ = build_model(cfg, *env_spaces(cfg))
    obs = features.random_observations(cfg, steps=50, seed=0)
    report, spread = features.layer_health(model.trunk, model.trunk_input(obs))
    assert [row["dead"] for row in report] == [0.0] * 4
    assert spread > 0
    shut, h_spread = features.lstm_health(model.lstm, model.features(obs).detach())
    assert set(shut.values()) == {0.0}
    assert h_spread > 0


def test_lstm_gates_shut_are_the_ones_closed_on_every_step():
    """Output-gate units held shut by their bias are counted, open ones are not, and h stops varying once every
    output gate is shut."""
    features = load_benchmark("features")
    torch.manual_seed(0)
    lstm = nn.LSTM(6, 8)
    x = torch.randn(40, 6)
    shut, spread = features.lstm_health(lstm, x)
    assert shut == {"input": 0.0, "forget": 0.0, "output": 0.0}
    assert spread > 0.01
    with torch.no_grad():
        lstm.bias_ih_l0[3 * 8 : 3 * 8 + 2] = -20.0  # torch's gate order i, f, g, o: two output gates shut
    shut, _ = features.lstm_health(lstm, x)
    assert shut == {"input": 0.0, "forget": 0.0, "output": 0.25}
    with torch.no_grad():
        lstm.bias_ih_l0[3 * 8 :] = -20.0
    shut, spread = features.lstm_health(lstm, x)
    assert shut["output"] == 1.0
    assert spread < 1e-6
