"""The reference Atari stack: make_env's preprocessing built from gymnasium's own wrappers.

Training never uses it. tests/test_envs.py holds a3c.atari.AtariGame equal to it step for step, and
benchmarks/throughput.py steps it for its ceiling (the emulator behind gymnasium's AtariPreprocessing).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import cv2
import gymnasium as gym
import numpy as np
from gymnasium.wrappers import AtariPreprocessing, FrameStackObservation

from a3c.atari import needs_fire
from a3c.config import Config
from a3c.envs import RecordFrames, add_episode_wrappers, is_atari, make_env


class FireOnReset(gym.Wrapper):
    """Press FIRE after reset and after each lost life, for games that wait for it (Breakout).

    Without it an untrained agent can idle for a whole time limit before it learns that FIRE serves.
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self._lives = 0

    def reset(self, **kwargs: Any) -> tuple[np.ndarray, dict]:
        obs, info = self.env.reset(**kwargs)
        obs, _, terminated, truncated, info = self.env.step(1)
        if terminated or truncated:
            obs, info = self.env.reset(**kwargs)
        self._lives = info.get("lives", 0)
        return obs, info

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        lives = info.get("lives", 0)
        if lives < self._lives and not (terminated or truncated):
            obs, fire_reward, terminated, truncated, info = self.env.step(1)
            reward += fire_reward
        self._lives = info.get("lives", 0)
        return obs, reward, terminated, truncated, info


class LifeLoss(gym.Wrapper):
    """Set info["life_lost"] when a life is lost, without ending the game.

    Unlike AtariPreprocessing's terminal_on_life_loss, the game goes on, so a reset never cuts a game short and
    every score the user sees is a whole game; the worker treats the flag as a terminal for learning only.
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self._lives = 0

    def reset(self, **kwargs: Any) -> tuple[np.ndarray, dict]:
        obs, info = self.env.reset(**kwargs)
        self._lives = info.get("lives", 0)
        info["life_lost"] = False
        return obs, info

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        lives = info.get("lives", 0)
        info["life_lost"] = lives < self._lives
        self._lives = lives
        return obs, reward, terminated, truncated, info


class CroppedPreprocessing(AtariPreprocessing):
    """AtariPreprocessing that cuts rows off the top and bottom of the screen before resizing.

    Pong's score and walls take a quarter of the 210 rows; without them the resized ball covers more of a pixel.
    Overrides the one method that builds the observation (gymnasium keeps the pooled screen in obs_buffer[0]).
    """

    def __init__(self, env: gym.Env, crop_top: int, crop_bottom: int, **kwargs: Any) -> None:
        super().__init__(env, **kwargs)
        self.rows = slice(crop_top, self.obs_buffer[0].shape[0] - crop_bottom)

    def _get_obs(self) -> np.ndarray:
        if self.frame_skip > 1:
            np.maximum(self.obs_buffer[0], self.obs_buffer[1], out=self.obs_buffer[0])
        screen = self.obs_buffer[0][self.rows]
        return cv2.resize(screen, self.screen_size, interpolation=cv2.INTER_AREA)


def make_reference_env(
    cfg: Config,
    seed: int,
    training: bool = True,
    render_mode: str | None = None,
    frame_sink: Callable[[np.ndarray], None] | None = None,
) -> gym.Env:
    """make_env's Atari stack built from gymnasium's own wrappers: the reference AtariGame is tested against, and
    the throughput benchmark's ceiling. Ids that are not Atari get make_env's env."""
    if not is_atari(cfg.env_name):
        return make_env(cfg, seed, training, render_mode, frame_sink)
    if frame_sink is not None:
        render_mode = "rgb_array"
    # Frame skipping is AtariPreprocessing's job (max over the last two frames), so the base env must not skip.
    # AtariPreprocessing reads the screen itself; the base env's own observation of every frame is thrown away, and
    # grayscale is the cheapest to throw away.
    env = gym.make(cfg.env_name, frameskip=1, obs_type="grayscale", render_mode=render_mode)
    if frame_sink is not None:
        env = RecordFrames(env, frame_sink)
    env = CroppedPreprocessing(
        env,
        crop_top=cfg.crop_top,
        crop_bottom=cfg.crop_bottom,
        noop_max=cfg.noop_max,
        frame_skip=cfg.frame_skip,
        screen_size=cfg.frame_size,
        terminal_on_life_loss=False,
        grayscale_obs=True,
        scale_obs=False,
    )
    if needs_fire(env):
        env = FireOnReset(env)
    env = LifeLoss(env)
    env = FrameStackObservation(add_episode_wrappers(env, cfg, training), cfg.frame_stack)
    env.action_space.seed(seed)
    return env
