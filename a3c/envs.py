"""make_env: the one environment stack, used by training, evaluation and the benchmarks alike (Atari ids get
a3c.atari.AtariGame, others come from gymnasium as they are); and the checks on an environment id."""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.wrappers import RecordEpisodeStatistics, TimeLimit, TransformReward

from a3c.atari import AtariGame
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
        env = add_episode_wrappers(env, cfg, training)
    env.action_space.seed(seed)
    return env


def add_episode_wrappers(env: gym.Env, cfg: Config, training: bool) -> gym.Env:
    """The time limit, the real score in info["episode"], and the reward's sign when training."""
    if cfg.ep_length > 0:
        env = TimeLimit(env, max_episode_steps=cfg.ep_length)
    env = RecordEpisodeStatistics(env)
    if training and cfg.clip_rewards:
        env = TransformReward(env, lambda r: float(np.sign(r)))
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
