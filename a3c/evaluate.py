"""Play whole games with a trained model: `--evaluate`, videos of the best game, and the evaluator process that
scores the shared model during training (--eval-interval)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import gymnasium as gym
import numpy as np
import torch
from PIL import Image

from a3c.checkpoint import CheckpointError, check_compatible, load_checkpoint, trained_network
from a3c.config import Config, ConfigError
from a3c.envs import env_spaces, is_atari, make_env
from a3c.messages import EvalResult
from a3c.metrics import summarize
from a3c.model import ActorCritic, build_model, sample_actions
from a3c.processes import Outbox, SharedState, child_process, trainer_alive

ATARI_FPS = 60  # the 2600 draws 60 frames a second (NTSC); ALE's render_fps metadata means something else
VIDEO_SUFFIXES = (".gif", ".mp4")
STOP_CHECK_STEPS = 100


class GameScore(NamedTuple):
    """One evaluation game: its real (unclipped) score, its length in agent steps, and the seed that replays it."""

    score: float
    agent_steps: int
    seed: int


def load_trained(cfg: Config, path: str | Path) -> tuple[ActorCritic, Config]:
    """The model saved at path, and cfg with the network and frame settings it was trained with.

    Raises CheckpointError when there is no checkpoint (an untrained agent is never evaluated silently), or when it
    belongs to another game or network."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(
            f"no checkpoint at {path}: train first (python main.py --env-name {cfg.env_name}) or pass --checkpoint"
        )
    payload = load_checkpoint(path)
    cfg = trained_network(cfg, payload)
    model, spec = build_model(cfg, *env_spaces(cfg))
    check_compatible(payload, cfg.env_name, spec, path)
    model.load_state_dict(payload["model"])
    return model, cfg


def play_game(
    model: ActorCritic,
    env: Any,
    seed: int,
    greedy: bool,
    on_step: Any = None,
    stopping: Callable[[], bool] | None = None,
) -> GameScore | None:
    """Play one whole game from env.reset(seed): the policy's most probable action if greedy, else a sample.

    The same model, env settings and seed replay the same game (the action sampler is seeded with it too).
    on_step(score_so_far), if given, is called after every agent step (the video overlay). stopping(), if given, is
    asked every STOP_CHECK_STEPS steps; None, with the game unfinished, once it says so (a game of Pong can take
    minutes, which an evaluator whose run has ended must not play out)."""
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    state = model.initial_state(1)
    score = 0.0
    steps = 0
    with torch.inference_mode():
        while True:
            steps += 1
            if stopping is not None and steps % STOP_CHECK_STEPS == 0 and stopping():
                return None
            out = model(torch.from_numpy(np.asarray(obs)).unsqueeze(0), state)
            state = out.state
            action = int(out.logits.argmax(-1)[0]) if greedy else int(sample_actions(out.logits, rng)[0])
            obs, reward, terminated, truncated, info = env.step(action)
            score += float(reward)
            if on_step is not None:
                on_step(score)
            if terminated or truncated:
                episode = info["episode"]
                return GameScore(float(episode["r"]), int(episode["l"]), seed)


class VideoRecorder:
    """Collects a game's colour frames with a one-line overlay (score, step) and writes them as .gif or .mp4."""

    def __init__(self, path: Path, fps: int):
        self.path, self.fps = path, fps
        self.score, self.steps = 0.0, 0
        self.frames: list[np.ndarray] = []
        self.writer: cv2.VideoWriter | None = None
        # A GIF stores delays in hundredths of a second, and browsers slow delays under 2/100 s to 1/10 s: keep
        # every k-th frame so that k frames last a whole number (>= 2) of hundredths, and it still plays in real time.
        self.gif_every = next(k for k in range(1, fps + 1) if (100 * k) % fps == 0 and 100 * k // fps >= 2)
        self.count = 0

    def on_step(self, score: float) -> None:
        self.score, self.steps = score, self.steps + 1

    def add(self, frame: np.ndarray) -> None:
        """Take one rendered frame uint8 [H, W, 3] (RGB)."""
        self.count += 1
        if self.path.suffix == ".gif" and (self.count - 1) % self.gif_every:
            return
        strip = np.zeros((14, frame.shape[1], 3), np.uint8)
        text = f"A3C  score {self.score:+g}  step {self.steps}"
        cv2.putText(strip, text, (3, 11), cv2.FONT_HERSHEY_PLAIN, 0.8, (255, 255, 255), 1, cv2.LINE_AA)
        image = np.concatenate([frame, strip])
        if self.path.suffix == ".gif":
            self.frames.append(image)  # a game of Pong is a few thousand small frames: memory is not a concern
            return
        if self.writer is None:
            fourcc = cv2.VideoWriter_fourcc(*"mp4v")
            self.writer = cv2.VideoWriter(str(self.tmp_path), fourcc, self.fps, (image.shape[1], image.shape[0]))
            if not self.writer.isOpened():
                raise OSError(f"cannot open an mp4 writer for {self.path}")
        self.writer.write(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))

    @property
    def tmp_path(self) -> Path:
        return self.path.with_name(f".{self.path.stem}.{os.getpid()}.tmp{self.path.suffix}")

    def close(self) -> None:
        """Write the file (through a temporary name, so a half-written video never has the real name)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            if self.path.suffix == ".gif":
                images = [Image.fromarray(f).quantize(colors=64, dither=Image.Dither.NONE) for f in self.frames]
                duration_ms = 1000 * self.gif_every / self.fps
                images[0].save(
                    self.tmp_path, save_all=True, append_images=images[1:], duration=duration_ms, loop=0, optimize=True
                )
            else:
                assert self.writer is not None
                self.writer.release()
            os.replace(self.tmp_path, self.path)
        finally:
            self.tmp_path.unlink(missing_ok=True)


def check_video_path(path: str | Path) -> Path:
    """A writable .gif or .mp4 path, or a ConfigError saying what is wrong."""
    path = Path(path)
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise ConfigError(f"--record {path}: the file must end in .gif or .mp4")
    if path.is_dir():
        raise ConfigError(f"--record {path} is a directory; give a file name ending in .gif or .mp4")
    return path


def game_fps(cfg: Config) -> int:
    """Frames per second of the game's own clock."""
    if is_atari(cfg.env_name):
        return ATARI_FPS
    env = make_env(cfg, seed=cfg.seed, training=False)
    try:
        return int(env.metadata.get("render_fps") or 30)
    finally:
        env.close()


def record_game(cfg: Config, model: ActorCritic, game: GameScore, greedy: bool, path: Path) -> GameScore:
    """Replay `game` (same seed, same policy) with every frame going to a video at path; returns the replay's score."""
    recorder = VideoRecorder(path, game_fps(cfg))
    try:
        env = make_env(cfg, seed=game.seed, training=False, frame_sink=recorder.add)
    except gym.error.DependencyNotInstalled as error:  # e.g. CartPole draws its frames with pygame
        raise ConfigError(f"cannot record {cfg.env_name}: {error}") from None
    try:
        replay = play_game(model, env, game.seed, greedy, on_step=recorder.on_step)
    finally:
        env.close()
    recorder.close()
    return replay


def evaluate_checkpoint(cfg: Config, checkpoint: str | Path, record: str | Path | None) -> dict[str, Any]:
    """Play cfg.eval_episodes whole games with the saved model, print each and a summary, write
    <checkpoint>-eval.json, and record the best game if asked. Returns the summary written."""
    episodes, greedy = cfg.eval_episodes, cfg.eval_greedy
    video = check_video_path(record) if record else None
    checkpoint = Path(checkpoint)
    model, cfg = load_trained(cfg, checkpoint)
    env = make_env(cfg, seed=cfg.seed, training=False)
    mode = "greedy" if greedy else "sampled"
    print(f"a3c: evaluating {checkpoint} on {cfg.env_name}: {episodes} whole game(s), {mode} actions", flush=True)
    games = []
    try:
        for i in range(episodes):
            game = play_game(model, env, seed=cfg.seed + i, greedy=greedy)
            games.append(game)
            print(f"game {i + 1:>3}/{episodes}: score {game.score:g}, {game.agent_steps} agent steps", flush=True)
    finally:
        env.close()
    stats = summarize([g.score for g in games])
    summary: dict[str, Any] = {
        "env_name": cfg.env_name,
        "checkpoint": str(checkpoint),
        "greedy": greedy,
        **stats,
        "games_played": [g._asdict() for g in games],
    }
    print(
        f"a3c: {stats['games']} games: mean {stats['mean']:.2f} +- {stats['std']:.2f}, "
        f"min {stats['min']:g}, max {stats['max']:g}",
        flush=True,
    )
    if video is not None:
        best = max(games, key=lambda g: g.score)
        replay = record_game(cfg, model, best, greedy, video)
        summary["video"] = {"path": str(video), "seed": best.seed, "score": replay.score}
        note = "" if replay.score == best.score else f" (the replay scored {replay.score:g})"
        print(f"a3c: recorded the best game (score {best.score:g}) to {video}{note}", flush=True)
    out = checkpoint.with_name(f"{checkpoint.stem}-eval.json")
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"a3c: wrote {out}", flush=True)
    return summary


# -- the evaluator process of a training run (--eval-interval) ----------------------------------------------------


def run_evaluator(rank: int, cfg: Config, shared: SharedState, outbox: Outbox) -> None:
    """Entry point of the evaluator process (rank is processes.EVALUATOR_RANK): every cfg.eval_interval_s, score a
    copy of the shared model on cfg.eval_episodes whole games and send an EvalResult to the trainer through outbox.
    Stops with the run or its parent, within a game too."""
    with child_process(rank, outbox):
        model, _ = build_model(cfg, shared.model.obs_shape, shared.model.num_actions)
        env = make_env(cfg, seed=cfg.seed + 10_000, training=False)
        round_ = 0

        def stopping() -> bool:
            return shared.stop.is_set() or not trainer_alive()

        while not shared.stop.wait(cfg.eval_interval_s) and trainer_alive():
            model.load_state_dict(shared.model.state_dict())
            frames = shared.counters.frames()
            scores = []
            for i in range(cfg.eval_episodes):
                seed = cfg.seed + 10_000 + round_ * cfg.eval_episodes + i
                game = play_game(model, env, seed, cfg.eval_greedy, stopping=stopping)
                if game is None:
                    return
                scores.append(game.score)
            outbox.send(EvalResult(frames, scores))
            round_ += 1
