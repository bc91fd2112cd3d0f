"""AtariGame: the paper's Atari preprocessing in one object that drives the emulator through ALE's public calls.

It is the stack make_env builds for Atari ids. tests/reference_env.py builds the same stack from gymnasium's own
wrappers, and tests hold the two equal step for step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import cv2
import gymnasium as gym
import numpy as np

from a3c.config import Config


def needs_fire(game: gym.Env) -> bool:
    """True for games that wait for FIRE to serve (Breakout): their second action is FIRE."""
    meanings = game.unwrapped.get_action_meanings()
    return len(meanings) >= 3 and meanings[1] == "FIRE"


class AtariGame(gym.Env):
    """The Atari stack of make_env, frame for frame the same game as gymnasium's wrappers would give.

    No-op starts, the frame skip with a max over the last two screens, crop and resize (AtariPreprocessing); FIRE
    after reset and after a lost life; info["life_lost"] without ending the game; the ep_length time limit;
    info["episode"] with the real score; the sign of the reward when training; the frame stack. One object instead
    of seven wrappers because a wrapper call per agent step and the base env's info dict per emulator frame are a
    large share of a worker's time (docs/benchmarks.md has the figures). info holds "lives" and "life_lost", and
    "episode" when a game ends.
    """

    def __init__(
        self,
        cfg: Config,
        training: bool,
        render_mode: str | None = None,
        frame_sink: Callable[[np.ndarray], None] | None = None,
    ) -> None:
        # The base env loads the ROM, seeds the emulator and maps action indices; its step() is never called.
        # v5 ids keep their sticky actions (the emulator applies them): that is the v5 protocol.
        self.base_env = gym.make(cfg.env_name, frameskip=1, obs_type="grayscale", render_mode=render_mode)
        self.game = self.base_env.unwrapped
        self.ale = self.game.ale
        # What AtariEnv.step maps an action index to: the minimal set unless the id asks for all 18 actions.
        minimal = list(self.ale.getMinimalActionSet())
        full = self.game.action_space.n != len(minimal)
        self.action_ids = list(self.ale.getLegalActionSet()) if full else minimal
        self.action_space = self.game.action_space
        self.metadata = self.game.metadata
        self.render_mode = render_mode
        self.frame_sink = frame_sink
        self.frame_skip, self.noop_max, self.ep_length = cfg.frame_skip, cfg.noop_max, cfg.ep_length
        self.clip_rewards = training and cfg.clip_rewards
        self.fire_on_reset = needs_fire(self.game)
        height, width = self.ale.getScreenDims()
        self.screens = np.zeros((2, height, width), np.uint8)  # the last two frames of a step, pooled into [0]
        self.rows = slice(cfg.crop_top, height - cfg.crop_bottom)
        self.size = (cfg.frame_size, cfg.frame_size)
        self.observation_space = gym.spaces.Box(0, 255, (cfg.frame_stack, *self.size), np.uint8)
        self.frames = np.zeros(self.observation_space.shape, np.uint8)
        self.lives = 0
        self.episode_steps = 0
        self.episode_return = 0.0
        self.episode_start = time.perf_counter()

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        """Start a game (seeding the emulator if seed is given): no-ops, then FIRE where the game needs it."""
        obs = self._start(seed)
        if self.fire_on_reset:
            obs, _, terminated, truncated = self._act(1)
            if terminated or truncated:
                obs = self._start(seed)
        self.lives = self.ale.lives()
        self.episode_steps, self.episode_return = 0, 0.0
        self.episode_start = time.perf_counter()
        self.frames[:] = obs  # the first frame fills the stack, as FrameStackObservation pads with it
        return self.frames.copy(), {"lives": self.lives, "life_lost": False}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        """One agent step: frame_skip frames of the action; obs uint8 [frame_stack, frame_size, frame_size]."""
        obs, reward, terminated, truncated = self._act(action)
        lives = self.ale.lives()
        if self.fire_on_reset and lives < self.lives and not (terminated or truncated):
            obs, fire_reward, terminated, truncated = self._act(1)
            reward += fire_reward
            lives = self.ale.lives()
        info: dict[str, Any] = {"lives": lives, "life_lost": lives < self.lives}
        self.lives = lives
        self.episode_steps += 1
        self.episode_return += reward
        if self.ep_length > 0 and self.episode_steps >= self.ep_length:
            truncated = True
        if terminated or truncated:
            seconds = round(time.perf_counter() - self.episode_start, 6)
            info["episode"] = {"r": self.episode_return, "l": self.episode_steps, "t": seconds}
        if self.clip_rewards:
            reward = float(np.sign(reward))
        if len(self.frames) > 1:
            self.frames[:-1] = self.frames[1:]
        self.frames[-1] = obs
        return self.frames.copy(), reward, terminated, truncated, info

    def render(self) -> np.ndarray | None:
        return self.game.render()

    def close(self) -> None:
        self.base_env.close()

    def _start(self, seed: int | None) -> np.ndarray:
        """AtariPreprocessing.reset: a new game, then 1-noop_max no-op frames drawn from the game's own RNG."""
        self.game.reset(seed=seed)
        self._record()
        noops = self.game.np_random.integers(1, self.noop_max + 1) if self.noop_max > 0 else 0
        for _ in range(noops):
            self.ale.act(self.action_ids[0])
            self._record()
            if self.ale.game_over():
                self.game.reset(seed=seed)
                self._record()
        self.ale.getScreenGrayscale(self.screens[0])
        self.screens[1].fill(0)
        return self._observe()

    def _act(self, action: int) -> tuple[np.ndarray, float, bool, bool]:
        """AtariPreprocessing.step: (observation [H, W], summed reward, terminated, truncated)."""
        ale, action_id, skip = self.ale, self.action_ids[action], self.frame_skip
        reward, terminated, truncated = 0.0, False, False
        for t in range(skip):
            reward += ale.act(action_id)
            self._record()
            if ale.game_over():  # with the emulator's frame limit; told apart only here, once
                terminated, truncated = ale.game_over(with_truncation=False), ale.game_truncated()
                break
            if t == skip - 2:
                ale.getScreenGrayscale(self.screens[1])
            elif t == skip - 1:
                ale.getScreenGrayscale(self.screens[0])
        return self._observe(), reward, terminated, truncated

    def _observe(self) -> np.ndarray:
        if self.frame_skip > 1:
            np.maximum(self.screens[0], self.screens[1], out=self.screens[0])
        return cv2.resize(self.screens[0][self.rows], self.size, interpolation=cv2.INTER_AREA)

    def _record(self) -> None:
        if self.frame_sink is not None:
            self.frame_sink(self.ale.getScreenRGB())
