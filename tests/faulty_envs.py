"""Tiny gymnasium games that fail on purpose, for the fault tests. Importing this module registers them, so
`--env-name faulty_envs:CrashingGame-v0` works in every spawned worker (tests/ must be on the PYTHONPATH)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np


class _TinyGame(gym.Env):
    """A 4-float observation, 2 actions, 50-step games with reward 1 per step."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, render_mode: str | None = None):
        self.render_mode = render_mode

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.t = 0
        return self.np_random.uniform(-1, 1, 4).astype(np.float32), {}

    def step(self, action: int):
        self.t += 1
        obs = self.np_random.uniform(-1, 1, 4).astype(np.float32)
        return obs, self.reward(), self.t >= 50, False, {}

    def reward(self) -> float:
        return 1.0


class NanRewardGame(_TinyGame):
    """Every reward is NaN, so every loss is non-finite."""

    def reward(self) -> float:
        return float("nan")


class CrashingGame(_TinyGame):
    """Raises in step() after 30 steps, as a broken emulator or a bug in an env would."""

    def step(self, action: int):
        if self.t >= 30:
            raise RuntimeError("simulated crash inside the game")
        return super().step(action)


for _cls in (NanRewardGame, CrashingGame):
    _id = f"{_cls.__name__}-v0"
    if _id not in gym.envs.registry:
        gym.register(_id, entry_point=f"{__name__}:{_cls.__name__}")
