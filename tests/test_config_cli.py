"""Config precedence and validation, per-game TOML files, and the CLI's one-line errors with exit status 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from a3c import cli
from a3c.config import (
    BASE_LR,
    Config,
    ConfigError,
    build_config,
    default_lr,
    game_config_path,
    game_name,
    safe_name,
    settle_lr,
)


@pytest.fixture(autouse=True)
def _restore_omp_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    # cli.main() sets OMP_NUM_THREADS for its workers; keep that from leaking into later tests.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def write_toml(tmp_path: Path, text: str, name: str = "run.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_precedence_defaults_file_overrides(tmp_path: Path):
    """Defaults < config file < overrides: the flag wins over the file, the file over the default."""
    path = write_toml(tmp_path, 'env_name = "CartPole-v1"\nlr = 0.5\ngamma = 0.9\nrollout_len = 7\n')
    cfg = build_config({"lr": 0.1, "n_workers": 3}, path)
    assert cfg.lr == 0.1  # flag over file
    assert cfg.gamma == 0.9 and cfg.rollout_len == 7 and cfg.env_name == "CartPole-v1"  # file over default
    assert cfg.entropy_coef == Config.entropy_coef and cfg.n_workers == 3  # default, and a flag over a default
    assert isinstance(cfg.lr, float)


def test_ints_accepted_for_float_settings(tmp_path: Path):
    """lr = 1 in TOML is a float setting given as an int: accepted and stored as float."""
    cfg = build_config({}, write_toml(tmp_path, "lr = 1\n"))
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)


@pytest.mark.parametrize("env_name", ["PongNoFrameskip-v4", "ALE/Pong-v5"])
def test_pong_toml_loads_automatically(env_name: str):
    """Both Pong ids find configs/pong.toml (target 18) and keep the id the user gave."""
    assert game_name(env_name) == "pong"
    assert game_config_path(env_name) is not None and game_config_path(env_name).name == "pong.toml"
    cfg = build_config({"env_name": env_name})
    assert cfg.target_reward == 18.0
    assert cfg.env_name == env_name


def test_default_env_gets_pong_toml():
    """With no --env-name the default game (Pong) still gets its config file."""
    cfg = build_config({})
    assert cfg.env_name == "PongNoFrameskip-v4" and cfg.target_reward == 18.0


def test_flag_beats_game_toml():
    """A flag overrides the per-game file's setting."""
    assert build_config({"env_name": "PongNoFrameskip-v4", "target_reward": 5.0}).target_reward == 5.0


def test_default_lr_falls_above_eight_workers(tmp_path: Path):
    """Up to 8 workers stepping one model keep the full lr; 16 get it x sqrt(1/2), 32 half. A flag or a config file
    decides instead; without one, build_config leaves it to settle_lr."""
    assert default_lr(1) == default_lr(2) == default_lr(8) == BASE_LR
    assert default_lr(16) == pytest.approx(1.0607e-4, rel=1e-4)
    assert default_lr(32) == pytest.approx(BASE_LR / 2)
    assert build_config({"n_workers": 16}).lr is None
    assert settle_lr(build_config({"n_workers": 16, "lr": 3e-4}), 16).lr == 3e-4
    assert settle_lr(build_config({"n_workers": 16}, write_toml(tmp_path, "lr = 2e-4\n")), 16).lr == 2e-4
    assert settle_lr(build_config({"n_workers": 16, "env_name": "CartPole-v1"}), 16).lr == 1e-3  # cartpole.toml's


@pytest.mark.parametrize(
    ("settings", "sharing", "lr"),
    [
        ({"n_workers": 16}, 16, default_lr(16)),  # this machine's workers step one model
        ({"n_workers": 16, "serial": True}, 1, BASE_LR),  # one worker, in the trainer's process
    ],
    ids=["local", "serial"],
)
def test_the_lr_follows_the_workers_the_fleet_counts(tmp_path: Path, settings: dict, sharing: int, lr: float):
    """The trainer decides the lr once, from the fleet it is given: 16 local workers get less, a serial run the full
    lr whatever --n-workers says."""
    from a3c.fleet import LocalFleet
    from a3c.trainer import Trainer

    cfg = build_config({"env_name": "CartPole-v1", **settings, "checkpoint_dir": str(tmp_path / "ck"),
                        "plot_dir": str(tmp_path / "pl")}).replace(lr=None)  # fmt: skip
    fleet = LocalFleet(cfg)
    assert fleet.sharing == sharing
    trainer = Trainer(cfg, fleet)
    try:
        assert trainer.cfg.lr == pytest.approx(lr)
    finally:
        trainer.close()


def test_the_lr_on_a_cluster_follows_all_its_workers():
    """Every host's steps reach the global model, so a cluster is one run of all its workers: the lr is that of the
    cluster's sum on one machine, not of its largest host (the fleet is made from Ray's nodes; no cluster is needed
    to count them)."""
    cluster = pytest.importorskip("a3c.cluster")
    cfg = build_config({"env_name": "PongNoFrameskip-v4", "ray_address": "auto"})
    nodes = [cluster.Node("a", "10.0.0.1", 16), cluster.Node("b", "10.0.0.2", 8)]
    fleet = cluster.RayFleet(cfg, nodes)
    assert (fleet.sharing, fleet.workers) == (24, 24)
    assert settle_lr(cfg, fleet.sharing).lr == pytest.approx(default_lr(24))


def test_game_name_and_safe_name():
    """Env ids map to games and to file-name-safe run names."""
    assert game_name("BreakoutNoFrameskip-v4") == "breakout"
    assert game_name("ALE/Breakout-v5") == "breakout"
    assert game_name("CartPole-v1") == "cartpole"
    assert safe_name("ALE/Pong-v5") == "ALE_Pong-v5"
    assert safe_name("PongNoFrameskip-v4") == "PongNoFrameskip-v4"
    assert Config(env_name="ALE/Pong-v5").checkpoint_path.name == "ALE_Pong-v5.pt"


def test_unknown_key_in_toml(tmp_path: Path):
    """An unknown setting names the file, the key, and lists the known ones."""
    path = write_toml(tmp_path, "learning_rate = 0.1\n")
    with pytest.raises(ConfigError, match="unknown setting 'learning_rate'") as info:
        build_config({}, path)
    assert str(path) in str(info.value) and "known settings:" in str(info.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('lr = "fast"\n', "lr must be float, got 'fast'"),
        ("n_workers = 2.5\n", "n_workers must be int, got 2.5"),
        ("serial = 1\n", "serial must be bool, got 1"),
        ("env_name = 3\n", "env_name must be str, got 3"),
    ],
)
def test_wrong_type_in_toml(tmp_path: Path, text: str, expected: str):
    """A value of the wrong type names the setting, the type wanted and the value given."""
    with pytest.raises(ConfigError, match=expected):
        build_config({}, write_toml(tmp_path, text))


def test_invalid_toml_names_the_line(tmp_path: Path):
    """Broken TOML is a ConfigError naming the file and the line."""
    path = write_toml(tmp_path, "lr = 0.1\ngamma = = 0.9\n")
    with pytest.raises(ConfigError, match="is not valid TOML") as info:
        build_config({}, path)
    assert str(path) in str(info.value) and "line 2" in str(info.value)


def test_missing_config_file(tmp_path: Path):
    """A --config that does not exist says so."""
    with pytest.raises(ConfigError, match="does not exist"):
        build_config({}, tmp_path / "nope.toml")


def test_validate_collects_every_problem():
    """validate() reports all out-of-range values in one message, not just the first."""
    with pytest.raises(ConfigError) as info:
        Config(n_workers=0, lr=-1.0, gamma=1.5, rollout_len=0, opt="sgd").validate()
    message = str(info.value)
    for part in ("n_workers", "lr must be a positive number", "gamma", "--rs", "opt must be one of adam, rmsprop"):
        assert part in message


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"lr_end": 1e-5}, "lr_end and lr_anneal_frames go together"),
        ({"lr_anneal_frames": 1000}, "lr_end and lr_anneal_frames go together"),
        ({"lr_end": -1e-5, "lr_anneal_frames": 1000}, "lr_end must be >= 0"),
        ({"lr_end": 1e-5, "lr_anneal_frames": -1}, "lr_anneal_frames must be >= 0"),
        ({"lr_end": 1e-5, "lr_anneal_frames": 1000, "lr_anneal_start": 1000}, "lr_anneal_start must be below"),
        ({"lr_end": 1e-5, "lr_anneal_frames": 1000, "lr_anneal_start": -1}, "lr_anneal_start must be >= 0"),
        ({"lr_anneal_start": 1000}, "lr_anneal_start delays an lr schedule, and there is none"),
    ],
)
def test_lr_annealing_settings_are_checked(changes: dict, expected: str):
    """An lr schedule needs both its end and its length, none of its numbers may be negative, and a delayed start
    needs a schedule to delay and must come before the end."""
    with pytest.raises(ConfigError, match=expected):
        Config(**changes).validate()


def test_valid_config_validates_to_itself(tiny_cfg: Config):
    """A valid config returns itself from validate() and is frozen."""
    assert tiny_cfg.validate() is tiny_cfg
    with pytest.raises(AttributeError):
        tiny_cfg.lr = 1.0  # type: ignore[misc]


def run_cli(argv: list[str]) -> int:
    """cli.main(argv)'s exit status, whether returned or raised (argparse errors raise SystemExit)."""
    try:
        return cli.main(argv)
    except SystemExit as exit_:
        return exit_.code


def out_dirs(tmp_path: Path) -> list[str]:
    return ["--checkpoint-dir", str(tmp_path / "ck"), "--plot-dir", str(tmp_path / "pl")]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--n-workers", "0"], "n_workers must be between 1 and 256, got 0"),
        (["--lr", "-1"], "lr must be a positive number, got -1.0"),
        (["--frame-skip", "0"], "frame_skip must be between 1 and 16, got 0"),
        (["--opt", "sgd"], "invalid choice: 'sgd'"),
        (["--lr", "fast"], "invalid float value: 'fast'"),
        (["--env-name", "Pongg-v4"], "unknown environment id 'Pongg-v4'; did you mean"),
        (["--use-trained", "--env-name", "CartPole-v1"], "no checkpoint at"),
        (["--fresh-gradients", "--learner", "tape"], "--fresh-gradients recomputes each rollout at the new weights"),
    ],
    ids=[
        "n_workers_0",
        "negative_lr",
        "frame_skip_0",
        "opt_sgd",
        "lr_not_a_number",
        "unknown_env",
        "missing_checkpoint",
        "fresh_gradients_on_the_tape",
    ],
)
def test_cli_user_errors_exit_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture, argv, expected):
    """Each user mistake gives exit status 2 and exactly one 'a3c: error:' line on stderr, no traceback."""
    status = run_cli([*argv, *out_dirs(tmp_path)])
    captured = capsys.readouterr()
    assert status == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("a3c: error:") and expected in lines[0]
    assert not (tmp_path / "ck").exists() or not any((tmp_path / "ck").iterdir())


def test_unknown_env_suggests_close_ids(tmp_path: Path, capsys: pytest.CaptureFixture):
    """A misspelt id suggests the registered ids closest to it."""
    assert run_cli(["--env-name", "Pongg-v4", *out_dirs(tmp_path)]) == 2
    assert "Pong-v4" in capsys.readouterr().err


def test_cli_main_returns_2_for_bad_choice(tmp_path: Path, capsys: pytest.CaptureFixture):
    """main() returns (not raises) status 2 for an argparse-level mistake like --opt sgd."""
    assert cli.main(["--opt", "sgd", *out_dirs(tmp_path)]) == 2


def test_use_trained_is_a_store_true_flag():
    """--use-trained takes no value (no type=bool trap); absent, it leaves use_trained to the config."""
    parser = cli.make_parser()
    assert vars(parser.parse_args(["--use-trained"]))["use_trained"] is True
    assert "use_trained" not in vars(parser.parse_args([]))
    with pytest.raises(SystemExit):
        parser.parse_args(["--use-trained", "False"])


def test_boolean_optional_flags():
    """--no-clip-rewards and --terminal-on-life-loss map to the Config booleans."""
    args = vars(cli.make_parser().parse_args(["--no-clip-rewards", "--terminal-on-life-loss"]))
    assert args["clip_rewards"] is False and args["terminal_on_life_loss"] is True


def test_unwritable_checkpoint_dir_is_reported_before_training(tmp_path: Path, capsys: pytest.CaptureFixture):
    """A checkpoint directory that cannot be created or written: one line, exit 2, before any worker starts."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    args = ["--env-name", "CartPole-v1", "--checkpoint-dir", str(blocker / "ck"), "--plot-dir", str(tmp_path / "pl")]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "cannot write to" in err and "choose another directory" in err and "Traceback" not in err
    assert not (tmp_path / "pl" / "CartPole-v1.csv").exists()  # nothing started


def test_more_workers_than_makes_sense_is_refused(capsys: pytest.CaptureFixture):
    assert cli.main(["--env-name", "CartPole-v1", "--n-workers", "1000"]) == 2
    assert "n_workers must be between 1 and 256" in capsys.readouterr().err
