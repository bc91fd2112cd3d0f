"""make_env on real ALE games and CartPole: observation format, reward clipping, FIRE on reset, life-loss flags;
AtariGame step for step against the stack of gymnasium wrappers (make_reference_env)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from reference_env import CroppedPreprocessing, FireOnReset, LifeLoss, make_reference_env

from a3c.atari import AtariGame
from a3c.config import Config, ConfigError
from a3c.envs import check_env_id, env_spaces, frames_per_step, make_env


def wrapper_chain(env: gym.Env) -> list[type]:
    """The env's wrapper classes from the outside in."""
    chain = []
    while True:
        chain.append(type(env))
        if not hasattr(env, "env"):
            return chain
        env = env.env


@pytest.mark.parametrize("env_name", ["PongNoFrameskip-v4", "ALE/Pong-v5"])
def test_atari_pong_obs_and_actions(env_name: str):
    """Both Pong ids give uint8 [4, 84, 84] stacked frames (the paper's input) and 6 actions, on reset and after
    steps."""
    env = make_env(Config(env_name=env_name, frame_size=84, frame_stack=4), seed=1)
    try:
        assert env.observation_space.shape == (4, 84, 84) and env.observation_space.dtype == np.uint8
        assert env.action_space.n == 6
        obs, _ = env.reset(seed=1)
        for action in (0, 2, 3, 1):
            obs, reward, terminated, truncated, info = env.step(action)
        obs = np.asarray(obs)
        assert obs.shape == (4, 84, 84) and obs.dtype == np.uint8
        assert obs.max() > 0  # real frames, not blank
        assert reward in (-1.0, 0.0, 1.0) and not (terminated or truncated)
        assert frames_per_step(Config(env_name=env_name)) == 4
    finally:
        env.close()


@pytest.mark.parametrize("frame_skip", [4, 8])
def test_frame_skip_repeats_each_action(frame_skip: int):
    """--frame-skip k: each agent step runs k emulator frames, and the frame count the trainer keeps says k."""
    cfg = Config(env_name="PongNoFrameskip-v4", frame_skip=frame_skip, noop_max=0)
    env = make_env(cfg, seed=1)
    try:
        env.reset(seed=1)
        ale = env.unwrapped.ale
        start = ale.getEpisodeFrameNumber()
        for _ in range(5):
            env.step(0)
        assert ale.getEpisodeFrameNumber() - start == 5 * frame_skip
        assert frames_per_step(cfg) == frame_skip
    finally:
        env.close()


def play(env: gym.Env, actions: list[int], seed: int) -> tuple[list[float], list[np.ndarray], dict]:
    """Reset with seed and play the actions; rewards, observations and the last info."""
    env.reset(seed=seed)
    rewards, observations, info = [], [], {}
    for action in actions:
        obs, reward, terminated, truncated, info = env.step(action)
        rewards.append(float(reward))
        observations.append(np.asarray(obs))
        if terminated or truncated:
            break
    return rewards, observations, info


def test_rewards_clipped_when_training_episode_score_unclipped():
    """Training rewards are sign(reward); info['episode']['r'] is the real score; evaluation rewards are unclipped."""
    # Space Invaders pays 5-30 points per invader, so clipping is visible; the time limit ends the game quickly.
    cfg = Config(env_name="SpaceInvadersNoFrameskip-v4", ep_length=300)
    actions = [int(a) for a in np.random.default_rng(0).integers(0, 6, size=300)]
    train_env, eval_env = make_env(cfg, seed=0, training=True), make_env(cfg, seed=0, training=False)
    try:
        train_rewards, train_obs, train_info = play(train_env, actions, seed=0)
        eval_rewards, eval_obs, eval_info = play(eval_env, actions, seed=0)
    finally:
        train_env.close()
        eval_env.close()
    assert len(train_rewards) == len(eval_rewards) == 300  # truncated by ep_length at the 300th step
    assert all(np.array_equal(a, b) for a, b in zip(train_obs, eval_obs, strict=True))  # same game, step by step
    assert max(eval_rewards) > 1  # the real rewards are not already in {-1, 0, 1}
    assert train_rewards == [float(np.sign(r)) for r in eval_rewards]
    real_score = sum(eval_rewards)
    assert train_info["episode"]["r"] == pytest.approx(real_score)
    assert eval_info["episode"]["r"] == pytest.approx(real_score)
    assert train_info["episode"]["l"] == 300
    assert sum(train_rewards) < real_score


def test_no_clipping_when_disabled():
    """clip_rewards=False keeps real rewards even when training."""
    cfg = Config(env_name="SpaceInvadersNoFrameskip-v4", ep_length=150, clip_rewards=False)
    actions = [int(a) for a in np.random.default_rng(0).integers(0, 6, size=150)]
    env = make_env(cfg, seed=0, training=True)
    try:
        rewards, _, _ = play(env, actions, seed=0)
    finally:
        env.close()
    assert max(rewards) > 1


@pytest.mark.parametrize("make", [make_env, make_reference_env])
def test_breakout_fires_on_reset_and_flags_lost_lives(make):
    """Breakout presses FIRE after reset and lost lives; losing a life sets info['life_lost'] while the game goes on."""
    env = make(Config(env_name="BreakoutNoFrameskip-v4"), seed=3)
    try:
        if make is make_reference_env:
            chain = wrapper_chain(env)
            assert FireOnReset in chain and LifeLoss in chain
            assert chain.index(LifeLoss) < chain.index(FireOnReset)  # LifeLoss sees the lives after the FIRE press
        else:
            assert isinstance(env, AtariGame) and env.fire_on_reset
        _, info = env.reset(seed=3)
        assert info["lives"] == 5 and info["life_lost"] is False
        rng = np.random.default_rng(3)
        lives, lost_at = 5, []
        for step in range(1000):
            _, _, terminated, truncated, info = env.step(int(rng.integers(4)))
            assert info["life_lost"] == (info["lives"] < lives)
            if info["life_lost"]:
                lost_at.append(step)
                if info["lives"] > 0:
                    assert not (terminated or truncated)  # a lost life does not end the game
            lives = info["lives"]
            if terminated or truncated:
                break
        assert len(lost_at) >= 2
    finally:
        env.close()


@pytest.mark.parametrize(
    ("cfg", "seed", "steps"),
    [
        # Pong as trained: no-op starts, cropped 42x42 single frames, FIRE after reset; whole games end it
        (Config(env_name="PongNoFrameskip-v4", frame_size=42, frame_stack=1, crop_top=34, crop_bottom=16), 1, 2500),
        # lives, FIRE after each lost life, the four-frame stack
        (Config(env_name="BreakoutNoFrameskip-v4"), 3, 2500),
        # v5's sticky actions, another frame skip and stack, the time limit
        (Config(env_name="ALE/Pong-v5", frame_stack=2, frame_skip=3, ep_length=400), 2, 1000),
        # rewards above 1, clipped when training
        (Config(env_name="SpaceInvadersNoFrameskip-v4", ep_length=300), 0, 700),
    ],
    ids=["pong", "breakout", "pong-v5", "space-invaders"],
)
@pytest.mark.slow
def test_atari_game_plays_the_reference_stack_step_for_step(cfg: Config, seed: int, steps: int):
    """make_env's AtariGame and gymnasium's wrappers (make_reference_env) give the same observations, rewards,
    ends, lives and episode records for the same seed and actions, across several games and resets."""
    game, reference = make_env(cfg, seed=seed), make_reference_env(cfg, seed=seed)
    try:
        assert isinstance(game, AtariGame) and game.observation_space == reference.observation_space
        (obs, info), (ref_obs, ref_info) = game.reset(seed=seed), reference.reset(seed=seed)
        np.testing.assert_array_equal(obs, ref_obs)
        assert info["lives"] == ref_info["lives"]
        rng = np.random.default_rng(seed)
        games = 0
        for step in range(steps):
            action = int(rng.integers(game.action_space.n))
            obs, reward, terminated, truncated, info = game.step(action)
            ref_obs, ref_reward, ref_terminated, ref_truncated, ref_info = reference.step(action)
            np.testing.assert_array_equal(obs, ref_obs, err_msg=f"step {step}")
            assert (reward, terminated, truncated) == (ref_reward, ref_terminated, ref_truncated), step
            assert (info["lives"], info["life_lost"]) == (ref_info["lives"], ref_info["life_lost"]), step
            assert ("episode" in info) == ("episode" in ref_info), step
            if terminated or truncated:
                games += 1
                assert info["episode"]["r"] == ref_info["episode"]["r"]
                assert info["episode"]["l"] == ref_info["episode"]["l"]
                (obs, _), (ref_obs, _) = game.reset(), reference.reset()
                np.testing.assert_array_equal(obs, ref_obs)
        assert games >= 1
    finally:
        game.close()
        reference.close()


def test_cartpole_is_a_plain_vector_env():
    """CartPole-v1 keeps float observations (4,) and 2 actions, with none of the Atari wrappers."""
    cfg = Config(env_name="CartPole-v1")
    env = make_env(cfg, seed=0)
    try:
        obs, _ = env.reset(seed=0)
        assert env.observation_space.shape == (4,) and np.asarray(obs).dtype == np.float32
        assert env.action_space.n == 2
        chain = wrapper_chain(env)
        assert FireOnReset not in chain and LifeLoss not in chain
        assert gym.wrappers.RecordEpisodeStatistics in chain
    finally:
        env.close()
    assert env_spaces(cfg) == ((4,), 2)
    assert frames_per_step(cfg) == 1


def test_ep_length_truncates_and_records_the_episode():
    """ep_length caps an episode (truncated, not terminated) and the episode record still arrives."""
    env = make_env(Config(env_name="CartPole-v1", ep_length=5), seed=0)
    try:
        env.reset(seed=0)
        terminated = truncated = False
        for step in range(5):
            _, _, terminated, truncated, info = env.step(step % 2)
        assert truncated and not terminated
        assert info["episode"]["l"] == 5
    finally:
        env.close()


def test_env_spaces_of_pong():
    """env_spaces reports the observation shape and action count: the default single 42x42 frame, or the paper's
    stack of four 84x84 frames."""
    assert env_spaces(Config(env_name="PongNoFrameskip-v4")) == ((1, 42, 42), 6)
    assert env_spaces(Config(env_name="PongNoFrameskip-v4", frame_size=84, frame_stack=4)) == ((4, 84, 84), 6)


def test_env_spaces_refuses_continuous_actions():
    """A continuous-action game is a ConfigError saying A3C here needs discrete actions."""
    with pytest.raises(ConfigError, match="needs discrete actions"):
        env_spaces(Config(env_name="Pendulum-v1"))


def test_check_env_id():
    """Known ids pass; an unknown id is a ConfigError suggesting close ids, or examples when none is close."""
    check_env_id("PongNoFrameskip-v4")
    check_env_id("ALE/Pong-v5")
    with pytest.raises(ConfigError, match=r"unknown environment id 'Pongg-v4'; did you mean .*Pong"):
        check_env_id("Pongg-v4")
    with pytest.raises(ConfigError, match="e.g. PongNoFrameskip-v4"):
        check_env_id("Zzzzzzzzzzzzz-v0")


def test_crop_cuts_rows_before_resizing():
    """--crop-top/--crop-bottom resize only the kept rows of the pooled screen; no crop equals AtariPreprocessing."""

    cfg = Config(env_name="PongNoFrameskip-v4", frame_size=42, frame_stack=1, noop_max=0)
    plain = make_reference_env(cfg, seed=1)
    cropped = make_reference_env(cfg.replace(crop_top=34, crop_bottom=16), seed=1)
    try:
        (plain_obs, _), (cropped_obs, _) = plain.reset(seed=1), cropped.reset(seed=1)
        for _ in range(40):
            plain_obs = plain.step(0)[0]
            cropped_obs = cropped.step(0)[0]
        layer = cropped
        while not isinstance(layer, CroppedPreprocessing):
            layer = layer.env
        screen = layer.obs_buffer[0]  # the pooled 210x160 screen behind the last observation
        import cv2

        expected = cv2.resize(screen[34:194], (42, 42), interpolation=cv2.INTER_AREA)
        np.testing.assert_array_equal(np.asarray(cropped_obs)[0], expected)
        np.testing.assert_array_equal(
            np.asarray(plain_obs)[0], cv2.resize(screen, (42, 42), interpolation=cv2.INTER_AREA)
        )
        assert not np.array_equal(np.asarray(plain_obs), np.asarray(cropped_obs))
    finally:
        plain.close()
        cropped.close()


def test_crop_leaving_too_few_rows_is_a_config_error():
    with pytest.raises(ConfigError, match="crop_top and crop_bottom"):
        Config(crop_top=150, crop_bottom=60).validate()
