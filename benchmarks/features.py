"""Whether a trained network still sees the screen: dead units and the spread of its features, from a checkpoint.

    python benchmarks/features.py checkpoints/BreakoutNoFrameskip-v4.pt
    python benchmarks/features.py run-a/BreakoutNoFrameskip-v4.pt run-b/BreakoutNoFrameskip-v4.pt --steps 1000

Plays the checkpoint's game with random actions through the trainer's own stack (make_env, the checkpoint's
network and frame settings) and passes those observations through its conv trunk. For every layer followed by a
ReLU or ELU it reports the share of units (a channel of a conv layer, a unit of an fc layer) that are dead: never
above zero (ReLU) or never above -0.99 (ELU, saturated) on any observation. Dead units pass no gradient, so they
stay dead unless the layers below them move. It also reports the spread of the trunk's output over the
observations (the standard deviation of each feature, averaged over features): near zero, every screen looks
alike to the LSTM and the policy cannot tell them apart. A policy stuck at uniform with most units dead has lost
its features, not its exploration (docs/results.md, Breakout with 16 workers).

Then the LSTM, stepped through the same observations in order: for its input, forget and output gates, the share
of units whose gate stays shut (below 0.05) on every observation, and the spread of h over the observations. With
the output gate shut h is near zero whatever the screen, so the heads see nothing and pass back no gradient: the
small net's way of losing the screen, where its ELUs stay alive. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from a3c.checkpoint import load_checkpoint  # noqa: E402
from a3c.config import build_config  # noqa: E402
from a3c.envs import make_env  # noqa: E402
from a3c.evaluate import load_trained  # noqa: E402

# Below this an ELU's output is within 1% of its floor of -1, where its slope is too.
ELU_FLOOR = -0.99
# A gate below this lets through under 5% of what it guards, and its sigmoid's slope is under 0.05.
GATE_SHUT = 0.05


def random_observations(cfg, steps: int, seed: int) -> torch.Tensor:
    """`steps` observations of random play, as the workers see them."""
    env = make_env(cfg, seed=seed)
    obs, _ = env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    seen = []
    for _ in range(steps):
        obs, _, terminated, truncated, _ = env.step(int(rng.integers(env.action_space.n)))
        seen.append(np.asarray(obs))
        if terminated or truncated:
            obs, _ = env.reset()
    env.close()
    return torch.from_numpy(np.stack(seen))


def layer_health(trunk: nn.Module, x: torch.Tensor) -> tuple[list[dict], float]:
    """Per activation layer: its units and the share dead; and the trunk output's mean spread over observations."""
    layers = [m for m in trunk.modules() if not isinstance(m, nn.Sequential)]
    report = []
    with torch.no_grad():
        for k, layer in enumerate(layers):
            x = layer(x)
            if isinstance(layer, (nn.ReLU, nn.ELU)):
                floor = 0.0 if isinstance(layer, nn.ReLU) else ELU_FLOOR
                # A conv unit is a channel: alive if it fires anywhere on any observation.
                peak = x.amax(dim=(0, 2, 3)) if x.dim() == 4 else x.amax(dim=0)
                report.append(
                    {
                        "layer": f"{k - 1}: {type(layers[k - 1]).__name__}",
                        "units": int(peak.numel()),
                        "dead": round(float((peak <= floor).float().mean()), 4),
                    }
                )
        spread = float(x.flatten(1).std(dim=0).mean())
    return report, spread


def lstm_health(lstm: nn.LSTM, x: torch.Tensor) -> tuple[dict[str, float], float]:
    """The LSTM stepped from a zero state through trunk outputs x [N, input] in order, the state carried across the
    few new games among them: per gate (input, forget, output; torch's order is i, f, g, o), the share of units
    shut on every step; and h's mean spread over the steps."""
    w_ih, w_hh = lstm.weight_ih_l0, lstm.weight_hh_l0
    bias = lstm.bias_ih_l0 + lstm.bias_hh_l0
    h = x.new_zeros(1, lstm.hidden_size)
    c = x.new_zeros(1, lstm.hidden_size)
    gates, hs = [], []
    with torch.no_grad():
        for t in range(x.shape[0]):
            pre = x[t : t + 1] @ w_ih.T + h @ w_hh.T + bias
            i, f, g, o = pre.chunk(4, dim=1)  # one step of nn.LSTM, from the pre-activations kept for the report
            c = f.sigmoid() * c + i.sigmoid() * g.tanh()
            h = o.sigmoid() * c.tanh()
            gates.append(pre)
            hs.append(h)
        i, f, _, o = torch.cat(gates).chunk(4, dim=1)
        shut = {
            name: round(float((gate.sigmoid().amax(dim=0) < GATE_SHUT).float().mean()), 4)
            for name, gate in (("input", i), ("forget", f), ("output", o))
        }
        spread = float(torch.cat(hs).std(dim=0).mean())
    return shut, spread


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", help="checkpoint files (.pt) saved by main.py")
    parser.add_argument("--steps", type=int, default=600, help="observations of random play to look at")
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args()

    results = {}
    for path in args.checkpoints:
        payload = load_checkpoint(path)
        model, cfg = load_trained(build_config({"env_name": payload["env_name"]}), path)
        if not model.is_image:
            raise SystemExit(f"features.py: {path} is not a network of frames (no conv trunk to look at)")
        obs = random_observations(cfg, args.steps, args.seed)
        report, spread = layer_health(model.trunk, model.trunk_input(obs))
        with torch.no_grad():
            shut, h_spread = lstm_health(model.lstm, model.features(obs))
        frames = int(payload["counters"]["frames"])
        print(f"{path}: {cfg.env_name}, {frames:,} frames, --arch {cfg.arch}")
        for row in report:
            print(f"  {row['layer']:<16} {row['units']:>6} units  {row['dead']:>6.1%} dead")
        print(f"  features' spread over {args.steps} observations: {spread:.4f}")
        print("  LSTM gates shut on every observation: " + ", ".join(f"{k} {v:.1%}" for k, v in shut.items()))
        print(f"  LSTM output's (h) spread: {h_spread:.4f}")
        results[path] = {
            "frames": frames,
            "layers": report,
            "feature_spread": round(spread, 5),
            "lstm_gates_shut": shut,
            "h_spread": round(h_spread, 5),
        }
    print(json.dumps({"steps": args.steps, "seed": args.seed, "checkpoints": results}))


if __name__ == "__main__":
    main()
