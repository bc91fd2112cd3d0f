"""The trainer end to end: serial-mode determinism, the real CLI on Pong with 2 workers, resume, plots, clean exit."""

from __future__ import annotations

import math
import threading
import time
import uuid
from pathlib import Path

import pytest
import torch
from helpers import HAS_PROC, assert_no_survivors, local_trainer, run_main

from a3c import cli
from a3c.checkpoint import load_checkpoint, save_checkpoint
from a3c.config import Config, build_config
from a3c.envs import env_spaces
from a3c.metrics import COLUMNS, LOSS_COLUMNS, GameResult, Metrics, SideLog, read_csv
from a3c.model import build_model
from a3c.processes import StepLock

PONG = "PongNoFrameskip-v4"
HEADER = ",".join(COLUMNS)


def serial_cfg(tmp_path: Path, name: str, **changes: object) -> Config:
    """A serial-mode CartPole run writing under tmp_path/name."""
    overrides = {
        "env_name": "CartPole-v1",
        "serial": True,
        "seed": 3,
        "max_frames": 2000,
        "save_interval_s": 1000.0,
        "checkpoint_dir": str(tmp_path / name / "checkpoints"),
        "plot_dir": str(tmp_path / name / "plots"),
        **changes,
    }
    return build_config(overrides)


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [name for name in a if not torch.equal(a[name], b[name])]
    assert not different, f"weights differ: {different}"


def game_columns(payload: dict) -> dict[str, list]:
    """The checkpoint's game history without the wall-clock column."""
    history = payload["history"]
    return {n: c for n, c in zip(history["names"], history["columns"], strict=True) if n != "time_s"}


@pytest.mark.slow
def test_serial_runs_with_the_same_seed_are_identical(tmp_path: Path):
    """Two serial CartPole runs with the same seed end with identical weights (serial mode is the deterministic one)."""
    payloads = []
    for name in ("a", "b"):
        cfg = serial_cfg(tmp_path, name)
        assert local_trainer(cfg).run() == 0
        payloads.append(load_checkpoint(cfg.checkpoint_path))
    assert_same_weights(payloads[0]["model"], payloads[1]["model"])


@pytest.mark.slow
def test_serial_runs_are_identical_once_torch_is_seeded(tmp_path: Path):
    """With torch seeded before each Trainer, everything else in serial mode is deterministic: weights, counters, games."""
    payloads = []
    for name in ("a", "b"):
        cfg = serial_cfg(tmp_path, name)
        assert local_trainer(cfg).run() == 0
        payloads.append(load_checkpoint(cfg.checkpoint_path))
    a, b = payloads
    assert_same_weights(a["model"], b["model"])
    assert a["counters"]["frames"] == b["counters"]["frames"] >= 2000
    assert a["counters"]["updates"] == b["counters"]["updates"] > 0
    assert game_columns(a) == game_columns(b)
    assert a["counters"]["games"] > 0  # CartPole games are short: the histories compared above are not empty
    # Training changed the weights: the determinism is not that of a model that never moved.
    torch.manual_seed(3)
    fresh = local_trainer(serial_cfg(tmp_path, "c")).model.state_dict()
    assert any(not torch.equal(fresh[k], a["model"][k]) for k in fresh)


def test_lr_is_annealed_by_the_frame_count(tmp_path: Path):
    """With --lr-end the worker's steps use the annealed lr: past lr_anneal_frames it has reached lr_end."""
    cfg = serial_cfg(tmp_path, "anneal", lr=1e-3, lr_end=1e-4, lr_anneal_frames=1000)
    trainer = local_trainer(cfg)
    assert trainer.run() == 0
    assert trainer.fleet.shared.counters.frames() >= 2000
    assert [group["lr"] for group in trainer.optimizer.param_groups] == [pytest.approx(1e-4)]


def test_run_without_finished_games_still_draws_png(tmp_path: Path, capsys: pytest.CaptureFixture):
    """A run too short to finish a Pong game still writes the PNG its last line says it saved."""
    cfg = serial_cfg(tmp_path, "short", env_name=PONG, max_frames=160, rollout_len=20)
    assert local_trainer(cfg).run() == 0
    assert cfg.checkpoint_path.exists()
    assert cfg.csv_path.read_text().splitlines() == [HEADER]
    assert str(cfg.plot_path) in capsys.readouterr().out
    assert cfg.plot_path.exists()


def write_games(cfg: Config, scores: list[float]) -> None:
    """A per-game CSV as the trainer writes it."""
    metrics = Metrics(cfg.csv_path)
    metrics.open_csv()
    for i, score in enumerate(scores):
        metrics.add(GameResult(worker=i % 2, score=score, length=800, frames=3200 * (i + 1)), time_s=10.0 * (i + 1))
    metrics.close()


def test_a_resumed_loss_log_from_before_a_column_was_added_keeps_its_rows(tmp_path: Path):
    """Resuming a run whose losses CSV predates the staleness column keeps its rows up to the checkpoint's frames,
    with nan in the new column, and drops a row cut short."""
    path = tmp_path / "game-losses.csv"
    old = ["time_s,frames,worker,policy_loss,value_loss,entropy,updates", "5.0,1000,0,-1.5,2.0,1.38,4"]
    path.write_text("\n".join([*old, "9.0,3000,1,-1.0,1.0,1.30,5", "12.0,1800,0,-1."]) + "\n")
    log = SideLog(path, LOSS_COLUMNS)
    log.open(keep_up_to_frames=2000)
    log.add({"time_s": 20.0, "frames": 4000, "worker": 1, "policy_loss": -0.5, "value_loss": 0.5, "entropy": 1.2,
             "staleness": 1.5, "updates": 6})  # fmt: skip
    log.close()
    rows = read_csv(path)
    assert rows["frames"] == [1000.0, 4000.0] and rows["entropy"] == [1.38, 1.2]
    assert math.isnan(rows["staleness"][0]) and rows["staleness"][1] == 1.5


def cli_dirs(cfg: Config) -> list[str]:
    return ["--env-name", cfg.env_name, "--checkpoint-dir", cfg.checkpoint_dir, "--plot-dir", cfg.plot_dir]


def test_plot_flag_redraws_png_from_csv(tmp_path: Path, capsys: pytest.CaptureFixture):
    """`--plot` draws <game>.png from <game>.csv alone, without training or a checkpoint."""
    cfg = Config(env_name=PONG, checkpoint_dir=str(tmp_path / "ck"), plot_dir=str(tmp_path / "pl"))
    write_games(cfg, [-21.0, -20.0, -19.0])
    assert cli.main(["--plot", *cli_dirs(cfg)]) == 0
    assert cfg.plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"drew {cfg.plot_path}" in capsys.readouterr().out
    assert not cfg.checkpoint_path.exists()


def test_plot_flag_without_games_is_a_user_error(tmp_path: Path, capsys: pytest.CaptureFixture):
    """`--plot` with no CSV, or a CSV without games, exits 2 with one line saying why."""
    cfg = Config(env_name=PONG, checkpoint_dir=str(tmp_path / "ck"), plot_dir=str(tmp_path / "pl"))
    assert cli.main(["--plot", *cli_dirs(cfg)]) == 2
    assert "no training data at" in capsys.readouterr().err
    write_games(cfg, [])
    assert cli.main(["--plot", *cli_dirs(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds no finished games yet" in err[0]
    assert not cfg.plot_path.exists()


def write_mismatched_checkpoint(tmp_path: Path) -> Config:
    """A CartPole checkpoint with the right env and spec whose weights lack 'value.bias' (another model layout)."""
    cfg = build_config(
        {"env_name": "CartPole-v1", "checkpoint_dir": str(tmp_path / "ck"), "plot_dir": str(tmp_path / "pl")}
    )
    model, spec = build_model(cfg, *env_spaces(cfg))
    weights = model.state_dict()
    del weights["value.bias"]
    payload = {
        "format": "a3c-checkpoint",
        "version": 1,
        "env_name": cfg.env_name,
        "model_spec": spec,
        "model": weights,
        "optimizer": {"name": cfg.opt, "state": torch.optim.Adam(model.parameters()).state_dict()},
        "counters": {"frames": 0, "updates": 0, "skipped_updates": 0, "elapsed_s": 0.0, "games": 0},
        "history": Metrics(cfg.csv_path).state(),
    }
    save_checkpoint(payload, cfg.checkpoint_path)
    return cfg


def test_resume_from_checkpoint_of_another_layout_is_a_user_error(tmp_path: Path, capsys: pytest.CaptureFixture):
    """--use-trained with weights that do not fit the network exits 2 with one line, checkpoint untouched."""
    cfg = write_mismatched_checkpoint(tmp_path)
    before = cfg.checkpoint_path.read_bytes()
    assert cli.main(["--use-trained", *cli_dirs(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not fit this network" in err[0]
    assert cfg.checkpoint_path.read_bytes() == before


def test_resume_layout_error_names_the_keys(tmp_path: Path, capsys: pytest.CaptureFixture):
    """The 'does not fit this network' message says which weights are missing."""
    cfg = write_mismatched_checkpoint(tmp_path)
    assert cli.main(["--use-trained", *cli_dirs(cfg)]) == 2
    assert "value.bias" in capsys.readouterr().err


def test_resume_keeps_the_network_of_a_checkpoint_from_before_the_default_recipe(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    """A Pong run saved with the paper's net, before standardize_frames, fc_layer and crop rows existed, resumes with
    that net and that input: today's defaults and Pong's crop rows do not apply to it. The log names what differs
    from what was asked, and the lr it trained at."""
    dirs = {"checkpoint_dir": str(tmp_path / "ck"), "plot_dir": str(tmp_path / "pl")}
    paper = {"arch": "paper", "frame_size": 84, "frame_stack": 4, "standardize_frames": False, "fc_layer": True}
    old = local_trainer(build_config({"env_name": PONG, "n_workers": 1, **paper, **dirs}))
    payload = old.payload()
    for key in ("standardize_frames", "fc_layer", "crop_top", "crop_bottom"):
        del payload["config"][key]
    for key in ("standardize_frames", "fc_layer"):
        del payload["model_spec"][key]
    payload["config"]["lr"] = 1e-4
    save_checkpoint(payload, old.cfg.checkpoint_path)
    old.close()  # its run is over: the lock on the run's files goes with it

    resumed = local_trainer(build_config({"env_name": PONG, "n_workers": 1, "use_trained": True, **dirs}))
    assert {name: getattr(resumed.cfg, name) for name in paper} == paper
    assert (resumed.cfg.crop_top, resumed.cfg.crop_bottom) == (0, 0)
    assert resumed.spec["obs_shape"] == [4, 84, 84]
    assert "arch paper (asked small)" in caplog.text and "crop_top 0 (asked 34)" in caplog.text
    assert "the checkpoint was trained at 0.0001 (give --lr 0.0001 to keep it)" in caplog.text
    for a, b in zip(resumed.model.state_dict().values(), payload["model"].values(), strict=True):
        assert torch.equal(a, b)


def test_a_resumed_run_steps_with_its_own_optimizer_settings(tmp_path: Path):
    """load_state_dict brings back the saved run's lr, betas and eps with Adam's averages; --use-trained with other
    --lr, --adam-beta1 and --adam-eps steps with the new ones, and keeps the averages."""
    dirs = {
        "env_name": "CartPole-v1",
        "n_workers": 1,
        "checkpoint_dir": str(tmp_path / "ck"),
        "plot_dir": str(tmp_path),
    }
    old = local_trainer(build_config(dirs))
    for p in old.model.parameters():
        p.grad = torch.ones_like(p)
    old.optimizer.step()
    save_checkpoint(old.payload(), old.cfg.checkpoint_path)
    old.close()

    asked = {"lr": 2e-4, "adam_beta1": 0.0, "adam_eps": 1e-5}
    resumed = local_trainer(build_config({**dirs, **asked, "use_trained": True}))
    group = resumed.optimizer.param_groups[0]
    assert (group["lr"], group["betas"], group["eps"]) == (2e-4, (0.0, 0.999), 1e-5)
    saved = old.optimizer.state[old.optimizer.param_groups[0]["params"][0]]["exp_avg"]
    assert torch.equal(resumed.optimizer.state[group["params"][0]]["exp_avg"], saved)


# -- the real command line, in a subprocess ----------------------------------------------------------------------


def csv_lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


@pytest.mark.skipif(not HAS_PROC, reason="needs /proc to find leftover processes")
@pytest.mark.multiprocess
def test_end_to_end_pong_two_workers_resume_and_plot(tmp_path: Path):
    """main.py trains Pong with 2 workers, saves checkpoint/CSV/PNG, resumes with --use-trained, and leaves no process."""
    ck, pl = tmp_path / "ck", tmp_path / "pl"
    checkpoint, csv, png = ck / f"{PONG}.pt", pl / f"{PONG}.csv", pl / f"{PONG}.png"
    dirs = ["--checkpoint-dir", str(ck), "--plot-dir", str(pl)]
    marker = uuid.uuid4().hex

    first = run_main(["--env-name", PONG, "--n-workers", "2", "--max-frames", "6000", *dirs], marker)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "reached --max-frames 6,000" in first.stdout
    assert_no_survivors(marker)
    assert checkpoint.exists()
    first_rows = csv_lines(csv)
    assert first_rows[0] == HEADER
    payload = load_checkpoint(checkpoint)
    frames_1 = payload["counters"]["frames"]
    assert payload["env_name"] == PONG and frames_1 >= 6000
    assert payload["counters"]["updates"] > 0
    assert len(payload["history"]["columns"][0]) == len(first_rows) - 1  # the checkpoint knows every CSV row
    if len(first_rows) > 1:  # 6000 frames finish 0-2 random Pong games (~3000-4000 frames each), usually 0
        assert png.exists()

    second = run_main(["--env-name", PONG, "--n-workers", "2", "--max-frames", "12000", "--use-trained", *dirs], marker)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "reached --max-frames 12,000" in second.stdout
    assert_no_survivors(marker)
    assert (ck / f"{PONG}.pt.prev").exists()
    resumed = load_checkpoint(checkpoint)
    assert resumed["counters"]["frames"] >= 12000 > frames_1
    assert resumed["counters"]["updates"] > payload["counters"]["updates"]
    second_rows = csv_lines(csv)
    assert second_rows[: len(first_rows)] == first_rows  # the resumed CSV continues the first run's
    assert len(resumed["history"]["columns"][0]) == len(second_rows) - 1

    # Resuming restarts the games, so each run's ~770 agent steps per worker rarely finish a ~800-step Pong game:
    # the CSV may still hold no game, and then no PNG exists (see test_run_without_finished_games_still_draws_png).
    if len(second_rows) > 1:
        assert png.exists()
        png.unlink()
    redraw = run_main(["--plot", "--env-name", PONG, *dirs], marker)
    if len(second_rows) > 1:
        assert redraw.returncode == 0, redraw.stderr[-3000:]
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert redraw.returncode == 2
        assert "holds no finished games yet" in redraw.stderr
    assert csv_lines(csv) == second_rows  # --plot reads the CSV, never rewrites it
    assert_no_survivors(marker)


# -- health checks of the shared model -----------------------------------------------------------------------------


def test_damage_is_confirmed_under_the_step_lock_before_a_rollback(tiny_cfg: Config, capsys: pytest.CaptureFixture):
    """The unlocked look may catch a step half-way: a NaN that is gone once the lock is held is not rolled back,
    and one that is still there is, with one line on stderr."""
    trainer = local_trainer(tiny_cfg)
    weight = next(trainer.model.parameters())
    sound = weight.detach().clone()
    with torch.no_grad():
        weight[0, 0] = float("nan")
    worker_handle = StepLock(trainer.fleet.shared.step_lock.path)  # a handle of its own, as a worker process opens
    lock = worker_handle.held()
    lock.__enter__()  # a worker "in its step": the trainer's confirmation waits for it
    result: list[bool] = []
    checker = threading.Thread(target=lambda: result.append(trainer.check_health()))
    checker.start()
    time.sleep(1.0)  # the checker's first look (a fraction of a millisecond) sees the NaN, then waits
    with torch.no_grad():
        weight.copy_(sound)  # the step finishes and leaves sound weights
    lock.__exit__(None, None, None)
    checker.join(timeout=10)
    assert result == [True] and trainer.health.rollbacks == 0
    assert "under the lock all is sound: nothing rolled back" in capsys.readouterr().err

    with torch.no_grad():
        weight[0, 0] = float("nan")
    assert trainer.check_health() is False
    assert trainer.health.rollbacks == 1 and torch.isfinite(weight).all()
    err = capsys.readouterr().err
    assert "non-finite weights in" in err and "rolled back" in err and "first seen without the lock" not in err
