"""How much of Breakout's ball survives the resize to the network's frame (issue #23's "42x42 ball" question).

    python benchmarks/breakout_ball.py                          # frame sizes 42 and 84, configs/breakout.toml's crop
    python benchmarks/breakout_ball.py --sizes 42,64,84 --steps 6000

Plays Breakout with random actions through the trainer's own Atari stack (make_env with the game's config and
each frame size). The ball is 2 x 4 screen pixels; between the bricks and the paddle, inside the walls, it
is the only thing on the screen. For every step with the ball there, it compares the brightest value the network
sees in that band with the ball's own value on the screen (the pooled screen the frame was made from): 1 means the
ball arrives at full contrast, 0 that it is gone. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from a3c.config import build_config  # noqa: E402
from a3c.envs import make_env  # noqa: E402

# Screen rows and columns (of 210 x 160) where only the ball moves: below the lowest bricks, above the paddle,
# inside the side walls.
BAND_ROWS = slice(97, 182)
BAND_COLS = slice(8, 152)


def ball_contrast(frame_size: int, steps: int, seed: int) -> list[float]:
    """For each step with the ball in the band: the network frame's peak in the band / the ball's screen value."""
    cfg = build_config({"env_name": "BreakoutNoFrameskip-v4", "frame_size": frame_size})
    game = make_env(cfg, seed, training=False)  # an AtariGame: its pooled screen is what the frame is made from
    rng = np.random.default_rng(seed)
    game.reset(seed=seed)
    height = game.screens.shape[1] - cfg.crop_top - cfg.crop_bottom
    scale_rows, scale_cols = frame_size / height, frame_size / game.screens.shape[2]
    # The band in the network's frame: only whole cells that lie inside it, so walls and bricks never count.
    rows = slice(
        int((BAND_ROWS.start - cfg.crop_top) * scale_rows) + 1, int((BAND_ROWS.stop - cfg.crop_top) * scale_rows)
    )
    cols = slice(int(BAND_COLS.start * scale_cols) + 1, int(BAND_COLS.stop * scale_cols))
    ratios = []
    for _ in range(steps):
        obs, _, terminated, truncated, _ = game.step(int(rng.integers(game.action_space.n)))
        if terminated or truncated:
            game.reset()
            continue
        screen_ball = int(game.screens[0][BAND_ROWS, BAND_COLS].max())
        if screen_ball > 0:
            ratios.append(float(obs[-1][rows, cols].max()) / screen_ball)
    game.close()
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="42,84", help="frame sizes to compare, comma-separated")
    parser.add_argument("--steps", type=int, default=4000, help="agent steps of random play per size")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    summary = {}
    for size in (int(s) for s in args.sizes.split(",")):
        ratios = np.array(ball_contrast(size, args.steps, args.seed))
        p10, median = np.percentile(ratios, [10, 50])
        summary[str(size)] = {
            "steps_with_ball": len(ratios),
            "median": round(float(median), 3),
            "p10": round(float(p10), 3),
            "lost": round(float((ratios == 0).mean()), 4),
        }
        print(
            f"{size}x{size}: ball at {median:.2f} of its screen value (median), {p10:.2f} (10th percentile), "
            f"gone in {100 * (ratios == 0).mean():.1f}% of {len(ratios)} steps"
        )
    print(json.dumps({"benchmark": "breakout_ball", "sizes": summary}))


if __name__ == "__main__":
    main()
