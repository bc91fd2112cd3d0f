"""Evaluation (issue 6): --evaluate on checkpoints from short real training runs, videos of the best game, clear
errors, and the evaluator process, loss CSV, plot panel and TensorBoard scalars of a training run."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import pytest
from helpers import local_trainer
from PIL import Image

from a3c import cli
from a3c.config import build_config
from a3c.envs import make_env
from a3c.evaluate import load_trained, play_game
from a3c.metrics import read_csv, side_paths

PONG = "PongNoFrameskip-v4"


def train_briefly(tmp_path: Path, env_name: str, frames: int, **changes: object):
    """A real (serial) training run of `frames` emulator frames; returns its config."""
    cfg = build_config(
        {
            "env_name": env_name,
            "serial": True,
            "max_frames": frames,
            "checkpoint_dir": str(tmp_path / "ck"),
            "plot_dir": str(tmp_path / "pl"),
            **changes,
        }
    )
    assert local_trainer(cfg).run() == 0
    return cfg


@pytest.fixture(scope="module")
def cartpole_run(tmp_path_factory: pytest.TempPathFactory):
    return train_briefly(tmp_path_factory.mktemp("cartpole"), "CartPole-v1", 3000)


def dirs(cfg) -> list[str]:
    return ["--checkpoint-dir", cfg.checkpoint_dir, "--plot-dir", cfg.plot_dir]


def test_evaluate_prints_each_game_and_writes_json(cartpole_run, capsys):
    """--evaluate --episodes 3: three whole games, a summary, and the same in <game>-eval.json."""
    status = cli.main(["--env-name", "CartPole-v1", "--evaluate", "--episodes", "3", *dirs(cartpole_run)])
    out = capsys.readouterr().out
    assert status == 0
    assert out.count("game ") >= 3 and "3 games: mean" in out
    summary = json.loads((Path(cartpole_run.checkpoint_dir) / "CartPole-v1-eval.json").read_text())
    scores = [g["score"] for g in summary["games_played"]]
    assert summary["games"] == 3 and summary["mean"] == pytest.approx(sum(scores) / 3)
    assert summary["max"] == max(scores) and summary["min"] == min(scores)
    assert [g["agent_steps"] for g in summary["games_played"]] == scores  # CartPole: 1 point per step, whole games


@pytest.fixture(scope="module")
def pong_run(tmp_path_factory: pytest.TempPathFactory):
    return train_briefly(tmp_path_factory.mktemp("pong"), PONG, 2000)


def test_evaluate_pong_records_the_best_game_as_gif(pong_run, tmp_path: Path, capsys):
    """A short real Pong run, then --record .gif: the best game replayed exactly, every third frame at 5/100 s."""
    gif = tmp_path / "pong.gif"
    args = ["--env-name", PONG, "--evaluate", "--episodes", "2", "--ep-length", "60", "--record", str(gif)]
    assert cli.main([*args, *dirs(pong_run)]) == 0
    assert "2 games: mean" in capsys.readouterr().out
    summary = json.loads((Path(pong_run.checkpoint_dir) / f"{PONG}-eval.json").read_text())
    best = max(summary["games_played"], key=lambda g: g["score"])
    assert summary["video"] == {"path": str(gif), "seed": best["seed"], "score": best["score"]}
    with Image.open(gif) as image:
        assert image.size == (160, 210 + 14)  # the full-colour frame and the overlay strip
        assert image.info["duration"] == 50  # 3 frames of 1/60 s
        assert image.n_frames >= 60 * 4 // 3  # 60 agent steps of 4 emulator frames, every third kept


def test_greedy_games_replay_exactly(cartpole_run):
    """The same model and seed replay the same game, so the recorded game is the one that was scored."""
    model, cfg = load_trained(cartpole_run, cartpole_run.checkpoint_path)
    env = make_env(cfg, seed=0, training=False)
    first = [play_game(model, env, seed=s, greedy=False) for s in (7, 8)]
    again = [play_game(model, env, seed=s, greedy=False) for s in (7, 8)]
    assert first == again


def test_evaluate_pong_records_mp4_at_60_fps(pong_run, tmp_path: Path, capsys):
    """--record .mp4: every emulator frame in colour at the game's 60 frames/s."""
    cfg = pong_run
    mp4 = tmp_path / "pong.mp4"
    args = ["--env-name", PONG, "--evaluate", "--episodes", "1", "--ep-length", "150", "--record", str(mp4)]
    assert cli.main([*args, *dirs(cfg)]) == 0
    assert "1 games: mean" in capsys.readouterr().out
    video = cv2.VideoCapture(str(mp4))
    frames = int(video.get(cv2.CAP_PROP_FRAME_COUNT))
    ok, frame = video.read()
    assert ok and frame.shape == (210 + 14, 160, 3)
    assert video.get(cv2.CAP_PROP_FPS) == pytest.approx(60)
    assert frames >= 150 * 4  # every emulator frame of 150 agent steps (frame skip 4), plus the no-op start
    video.release()
    assert not list(tmp_path.glob("*.tmp*"))


def test_evaluate_without_a_checkpoint_is_a_clear_error(tmp_path: Path, capsys):
    """No checkpoint: one line saying to train first, exit 2 (never a random agent)."""
    status = cli.main(["--env-name", "CartPole-v1", "--evaluate", "--checkpoint-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert status == 2 and "no checkpoint at" in err and "train first" in err and "Traceback" not in err


def test_evaluate_checkpoint_of_another_game_is_a_clear_error(cartpole_run, capsys):
    """A CartPole checkpoint evaluated as Acrobot: one line naming the game it was trained on, exit 2."""
    args = ["--env-name", "Acrobot-v1", "--evaluate", "--checkpoint", str(cartpole_run.checkpoint_path)]
    assert cli.main(args) == 2
    assert "was trained on CartPole-v1" in capsys.readouterr().err


@pytest.mark.parametrize("record", ["out.avi", "."])
def test_record_needs_a_gif_or_mp4_file(cartpole_run, record: str, capsys):
    assert cli.main(["--env-name", "CartPole-v1", "--evaluate", "--record", record, *dirs(cartpole_run)]) == 2
    assert "--record" in capsys.readouterr().err


def test_record_without_evaluate_is_a_clear_error(capsys):
    assert cli.main(["--env-name", "CartPole-v1", "--record", "x.gif"]) == 2
    assert "go with --evaluate" in capsys.readouterr().err


@pytest.mark.multiprocess
def test_training_with_evaluator_losses_and_tensorboard(tmp_path: Path):
    """--eval-interval and --tensorboard: evaluation rows and loss rows in their CSVs, a 4-panel plot, and
    TensorBoard scalars for scores, losses, entropy, frames/s and the learning rate."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = build_config(
        {
            "env_name": "CartPole-v1",
            "n_workers": 1,
            "max_seconds": 14.0,
            "eval_interval_s": 2.0,
            "eval_episodes": 2,
            "tensorboard": True,
            "tensorboard_dir": str(tmp_path / "runs"),
            "checkpoint_dir": str(tmp_path / "ck"),
            "plot_dir": str(tmp_path / "pl"),
        }
    )
    assert local_trainer(cfg).run() == 0
    loss_csv, eval_csv = side_paths(cfg.csv_path)
    evals, losses = read_csv(eval_csv), read_csv(loss_csv)
    assert len(evals["mean"]) >= 1 and all(g == 2 for g in evals["games"])
    assert len(losses["entropy"]) >= 1 and all(0 < e <= 0.7 for e in losses["entropy"])  # ln 2 = 0.693
    assert all(s == 0 for s in losses["staleness"])  # one worker: no other update lands between sync and step
    assert cfg.plot_path.exists()
    (run_dir,) = (tmp_path / "runs").iterdir()
    events = EventAccumulator(str(run_dir))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    expected = {"game/score", "game/avg100", "train/entropy", "train/value_loss", "train/policy_loss"}
    assert expected | {"perf/frames_per_s", "train/lr", "eval/mean"} <= tags


def test_checkpoint_older_than_a_setting_is_evaluated_with_its_default(cartpole_run, tmp_path: Path):
    """A checkpoint saved before fc_layer / crop_* existed was trained without them: their values from before they
    existed apply (fc layer on, no crop), not today's defaults, the game config's or the flags'."""
    import torch

    from a3c.checkpoint import load_checkpoint, save_checkpoint

    payload = load_checkpoint(cartpole_run.checkpoint_path)
    for key in ("fc_layer", "crop_top", "crop_bottom"):
        del payload["config"][key]
    del payload["model_spec"]["fc_layer"]
    old = tmp_path / "CartPole-v1.pt"
    save_checkpoint(payload, old)
    model, cfg = load_trained(cartpole_run.replace(fc_layer=False, crop_top=7, crop_bottom=3), old)
    assert (cfg.fc_layer, cfg.crop_top, cfg.crop_bottom) == (True, 0, 0)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), payload["model"].values(), strict=True))
