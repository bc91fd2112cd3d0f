"""make_env: the one environment stack, used by training, evaluation and the benchmarks alike; make_reference_env:
the same built from gymnasium's wrappers, which it is tested against."""

from __future__ import annotations

import difflib
import importlib
import time
from collections.abc import Callable
from typing import Any

import cv2
import gymnasium as gym
import numpy as np
from gymnasium.wrappers import (
    AtariPreprocessing,
    FrameStackObservation,
    RecordEpisodeStatistics,
    TimeLimit,
    TransformReward,
)

from a3c.config import Config, ConfigError

_registered = False


def register_ale() -> None:
    """Make the ALE ids (PongNoFrameskip-v4, ALE/Pong-v5, ...) known to gymnasium; the ROMs ship in ale-py."""
    global _registered
    if not _registered:
        import ale_py

        gym.register_envs(ale_py)
        # Each emulator would print ALE's two-line banner: one pair per worker and evaluator. Errors still show.
        ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)
        _registered = True


def _registered_id(env_name: str) -> str:
    """The registry id of env_name; 'package.module:Game-v0' first imports the module that registers Game-v0
    (gymnasium's own syntax, which gym.make also understands, in every worker process)."""
    register_ale()
    module, _, env_id = env_name.rpartition(":")
    if module:
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise ConfigError(f"cannot import {module!r} for {env_name!r}: {error}") from None
    return env_id


def is_atari(env_name: str) -> bool:
    """True for ids whose entry point is the ALE."""
    spec = gym.spec(_registered_id(env_name))
    return "ale_py" in str(spec.entry_point)


def check_env_id(env_name: str) -> None:
    """Raise ConfigError for an unknown id, suggesting the close ones."""
    env_id = _registered_id(env_name)
    if env_id in gym.envs.registry:
        return
    close = difflib.get_close_matches(env_id, list(gym.envs.registry), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else "; e.g. PongNoFrameskip-v4, ALE/Breakout-v5, CartPole-v1"
    raise ConfigError(f"unknown environment id {env_name!r}{hint}")


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


def _needs_fire(env: gym.Env) -> bool:
    meanings = env.unwrapped.get_action_meanings()
    return len(meanings) >= 3 and meanings[1] == "FIRE"


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


class RecordFrames(gym.Wrapper):
    """Hand every frame the game renders (full colour, every emulator frame) to sink(frame: uint8 [H, W, 3]).

    Sits directly on the base env, under the frame skipping, so a video runs at the game's own frame rate.
    """

    def __init__(self, env: gym.Env, sink: Callable[[np.ndarray], None]) -> None:
        super().__init__(env)
        self.sink = sink

    def reset(self, **kwargs: Any) -> tuple[Any, dict]:
        result = self.env.reset(**kwargs)
        self.sink(self.env.render())
        return result

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        result = self.env.step(action)
        self.sink(self.env.render())
        return result


class AtariGame(gym.Env):
    """make_reference_env's Atari stack in one object that drives the emulator itself: the same game, frame for frame.

    No-op starts, the frame skip with a max over the last two screens, crop and resize (AtariPreprocessing); FIRE
    after reset and after a lost life (FireOnReset); info["life_lost"] (LifeLoss); the ep_length time limit;
    info["episode"] with the real score; the sign of the reward when training; the frame stack. Through gymnasium's
    wrappers each agent step is seven wrapper calls and, per emulator frame, the base env's step with its info dict:
    about a fifth of the stack's time for Pong (399 against 315 us per step), 7% of a training step. Tested step
    for step against make_reference_env. info holds "lives" and "life_lost", and "episode" when a game ends.
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
        self.action_ids = list(self.game._action_set)  # what AtariEnv.step maps an action index to
        self.action_space = self.game.action_space
        self.metadata = self.game.metadata
        self.render_mode = render_mode
        self.frame_sink = frame_sink
        self.frame_skip, self.noop_max, self.ep_length = cfg.frame_skip, cfg.noop_max, cfg.ep_length
        self.clip_rewards = training and cfg.clip_rewards
        self.fire_on_reset = _needs_fire(self.game)
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


def make_env(
    cfg: Config,
    seed: int,
    training: bool = True,
    render_mode: str | None = None,
    frame_sink: Callable[[np.ndarray], None] | None = None,
) -> gym.Env:
    """Build one environment (not yet reset: the caller resets it with its seed): Atari ids get the paper's
    preprocessing in one AtariGame, others (CartPole) come as they are; training, evaluation and the benchmarks
    all use it.

    Atari observations are uint8 [frame_stack, frame_size, frame_size]. Rewards are clipped to their sign only
    when training and cfg.clip_rewards; info["episode"]["r"] is always the real score of a whole game.
    frame_sink, if given, receives every rendered colour frame (for videos; implies render_mode rgb_array).
    """
    if frame_sink is not None:
        render_mode = "rgb_array"
    if is_atari(cfg.env_name):
        env: gym.Env = AtariGame(cfg, training, render_mode, frame_sink)
    else:
        env = gym.make(cfg.env_name, render_mode=render_mode)
        if frame_sink is not None:
            env = RecordFrames(env, frame_sink)
        env = _episode_wrappers(env, cfg, training)
    env.action_space.seed(seed)
    return env


def _episode_wrappers(env: gym.Env, cfg: Config, training: bool) -> gym.Env:
    """The time limit, the real score in info["episode"], and the reward's sign when training."""
    if cfg.ep_length > 0:
        env = TimeLimit(env, max_episode_steps=cfg.ep_length)
    env = RecordEpisodeStatistics(env)
    if training and cfg.clip_rewards:
        env = TransformReward(env, lambda r: float(np.sign(r)))
    return env


def make_reference_env(
    cfg: Config,
    seed: int,
    training: bool = True,
    render_mode: str | None = None,
    frame_sink: Callable[[np.ndarray], None] | None = None,
) -> gym.Env:
    """make_env's Atari stack built from gymnasium's own wrappers: the reference AtariGame is tested against, and
    the throughput benchmark's ceiling (the emulator behind gymnasium's AtariPreprocessing). Training and
    evaluation use make_env; ids that are not Atari get make_env's env."""
    if not is_atari(cfg.env_name):
        return make_env(cfg, seed, training, render_mode, frame_sink)
    if frame_sink is not None:
        render_mode = "rgb_array"
    # Frame skipping is AtariPreprocessing's job (max over the last two frames), so the base env must not skip.
    # AtariPreprocessing reads the screen itself; the base env's own observation of every frame is thrown away, and
    # grayscale is its cheapest (RGB: 10 us more).
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
    if _needs_fire(env):
        env = FireOnReset(env)
    env = LifeLoss(env)
    env = FrameStackObservation(_episode_wrappers(env, cfg, training), cfg.frame_stack)
    env.action_space.seed(seed)
    return env


def frames_per_step(cfg: Config) -> int:
    """Emulator frames behind one agent step: the frame skip for Atari, 1 otherwise."""
    return cfg.frame_skip if is_atari(cfg.env_name) else 1


def env_spaces(cfg: Config) -> tuple[tuple[int, ...], int]:
    """(observation shape, number of actions) of the configured game; raises ConfigError for unusable games."""
    try:
        env = make_env(cfg, seed=cfg.seed, training=False)
    except ConfigError:
        raise
    except Exception as error:  # a broken or misconfigured third-party env: say which, in one line
        raise ConfigError(f"cannot create {cfg.env_name}: {type(error).__name__}: {error}") from None
    try:
        if not isinstance(env.action_space, gym.spaces.Discrete):
            raise ConfigError(
                f"{cfg.env_name} has a {type(env.action_space).__name__} action space; A3C here needs discrete actions"
            )
        shape = tuple(env.observation_space.shape or ())
        if len(shape) not in (1, 3):
            raise ConfigError(f"{cfg.env_name} has observations of shape {shape}; expected a vector or stacked frames")
        return shape, int(env.action_space.n)
    finally:
        env.close()
