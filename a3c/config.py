"""Run configuration: frozen dataclass, built once from defaults < config file < flags, then validated."""

from __future__ import annotations

import dataclasses
import math
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path

import tomllib

# configs/ sits beside the a3c/ package (repository root; editable installs keep it there).
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"

OPTIMIZERS = ("adam", "rmsprop")
# How a worker computes its gradients (a3c/learners): "tape" replays the backward pass from the rollout's own
# forward passes (fast, CPU, the layers it knows); "autograd" recomputes the rollout with autograd (any network,
# any device); "auto" takes the tape where the trainer's start-up check finds it gives autograd's gradients.
LEARNERS = ("auto", "autograd", "tape")
# Each gradient lands on weights about n_workers - 1 updates newer than those it was taken at. With more than 8
# workers at the full lr those steps shut the small net's LSTM gates on Breakout and its policy stays at random play;
# 16 workers learn Breakout and Pong at about 2/3 of it (docs/results.md, issue #22).
LR_FULL_WORKERS = 8
# 1.5e-4 rather than the classic PyTorch A3C's 1e-4: fewer frames to solve Pong (docs/results.md). The lr of up to
# LR_FULL_WORKERS workers when neither a flag nor a config file gives one (default_lr).
BASE_LR = 1.5e-4


class ConfigError(ValueError):
    """A user's mistake in flags or a config file; the message says how to fix it."""


def available_cores() -> int:
    """Cores this process may run on (affinity-aware, unlike os.cpu_count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no sched_getaffinity
        return os.cpu_count() or 1


@dataclass(frozen=True)
class Config:
    """Every setting of a run. Units are in the names; frames = agent steps x frame skip."""

    env_name: str = "PongNoFrameskip-v4"
    n_workers: int = field(default_factory=available_cores)
    envs_per_worker: int = 1
    seed: int = 1

    # The A3C maths (paper names). rollout_len is the paper's t_max (flag --rs).
    opt: str = "adam"
    # None: the default for the number of workers that step one model, which the fleet knows (settle_lr).
    lr: float | None = None
    # lr holds until lr_anneal_start frames, falls linearly to lr_end at lr_anneal_frames, then stays there
    # (None: constant lr). The paper anneals to 0 over the whole run; a floor keeps a longer run still learning.
    lr_end: float | None = None
    lr_anneal_start: int = 0
    lr_anneal_frames: int = 0
    gamma: float = 0.99
    gae_lambda: float = 1.0  # 1.0 = the paper's n-step advantage
    entropy_coef: float = 0.01
    value_loss_coef: float = 0.5
    max_grad_norm: float = 40.0
    rollout_len: int = 20
    adam_eps: float = 1e-8
    # Adam's momentum. Asynchronous updates add a momentum of their own that grows with the worker count (Mitliagkas
    # et al. 2016); 0 did not rescue 16 workers on Breakout, nor slow 2 (docs/results.md).
    adam_beta1: float = 0.9
    rmsprop_alpha: float = 0.99
    rmsprop_eps: float = 0.1  # the paper's shared RMSProp epsilon
    # One lock around the shared optimizer's step (the paper's Hogwild steps without one): Adam's two averages then
    # always move together, which bounds every step (shared_optim.adam_moment_bound). Rollouts, gradients and
    # weight syncs stay lock-free.
    lock_step: bool = True

    # Environment. ep_length caps an episode's agent steps (0: only the game's own limit).
    ep_length: int = 0
    frame_skip: int = 4
    # The default recipe for every Atari game (issue #23; docs/results.md has the runs): a 42x42 single frame,
    # standardized, into the small conv net, whose features go straight into the LSTM. The paper's 84x84x4 net fed
    # pixels / 255 stayed at random play on Pong; the LSTM carries the motion a stack would.
    frame_size: int = 42
    frame_stack: int = 1
    noop_max: int = 30
    crop_top: int = 0  # screen rows cut off above and below before resizing (Pong: the score and the walls)
    crop_bottom: int = 0
    terminal_on_life_loss: bool = False
    clip_rewards: bool = True

    # Network: "small" is 4 x 3x3 conv (classic PyTorch A3C), "paper" Mnih et al.'s conv net (--arch paper
    # --frame-size 84 --frame-stack 4 --no-standardize-frames --fc-layer gives the paper's input and net); vector
    # observations always get an MLP trunk.
    arch: str = "small"
    hidden_size: int = 256
    standardize_frames: bool = True  # per-frame mean 0 / std 1 input instead of pixels / 255 (model.py says why)
    fc_layer: bool = False  # an fc layer of hidden_size between the conv trunk and the LSTM (the paper's net has one)
    learner: str = "auto"  # see LEARNERS
    # Sync again just before each update, so the gradient is taken at the shared weights of that moment rather than
    # at the rollout's start, which the other workers' steps have since moved. The rollout's actions, its carried-in
    # LSTM state and its bootstrap value V(s_T) stay the older weights'. Only autograd can: it recomputes the
    # forward passes, the tape replays the rollout's own. For many workers (docs/results.md).
    fresh_gradients: bool = False
    device: str = "cpu"  # where each worker's local model runs (the shared model stays in the parent's memory)

    # When to stop (0 / None: no such limit) and where outputs go.
    target_reward: float | None = None
    max_frames: int = 0
    max_seconds: float = 0.0
    save_interval_s: float = 60.0
    checkpoint_dir: str = "checkpoints"
    plot_dir: str = "plots"
    use_trained: bool = False
    start_over: bool = False  # without use_trained: move an earlier run's files aside instead of refusing (run_files)
    serial: bool = False  # run one worker in the parent process: for debugging and deterministic tests

    # Several hosts on a Ray cluster (a3c/cluster.py): None trains on this machine alone and never imports Ray.
    # Each host runs workers_per_host workers (0: the CPUs Ray counts on that node) on a host-local shared model,
    # and sends its weight delta to the global model every exchange_interval_s.
    ray_address: str | None = None
    workers_per_host: int = 0
    exchange_interval_s: float = 1.0
    # A cluster that answers clients without a token lets anyone who reaches it run code on every node: refused
    # unless the user says the network is theirs alone (docs/cluster.md).
    allow_open_cluster: bool = False

    # Evaluation (--evaluate, and the evaluator process of a run when eval_interval_s > 0) and TensorBoard.
    eval_interval_s: float = 0.0
    eval_episodes: int = 10
    eval_greedy: bool = False  # the most probable action instead of a sample from the policy
    tensorboard: bool = False
    tensorboard_dir: str = "runs"

    @property
    def run_name(self) -> str:
        """File-name-safe form of the env id (`ALE/Pong-v5` -> `ALE_Pong-v5`)."""
        return safe_name(self.env_name)

    @property
    def checkpoint_path(self) -> Path:
        return Path(self.checkpoint_dir) / f"{self.run_name}.pt"

    @property
    def csv_path(self) -> Path:
        return Path(self.plot_dir) / f"{self.run_name}.csv"

    @property
    def plot_path(self) -> Path:
        return Path(self.plot_dir) / f"{self.run_name}.png"

    def replace(self, **changes: object) -> Config:
        return dataclasses.replace(self, **changes)

    def validate(self) -> Config:
        """Raise ConfigError naming every out-of-range value at once; return self when all is well."""
        problems = []

        def need(ok: bool, message: str) -> None:
            if not ok:
                problems.append(message)

        need(bool(self.env_name.strip()), "env_name is empty: give an id such as PongNoFrameskip-v4")
        need(1 <= self.n_workers <= 256, f"n_workers must be between 1 and 256, got {self.n_workers}")
        need(1 <= self.envs_per_worker <= 64, f"envs_per_worker must be between 1 and 64, got {self.envs_per_worker}")
        need(self.seed >= 0, f"seed must be >= 0, got {self.seed}")
        need(self.opt in OPTIMIZERS, f"opt must be one of {', '.join(OPTIMIZERS)}, got {self.opt!r}")
        need(bool(self.arch.strip()), "arch is empty: give a trunk name such as small or paper")
        need(self.learner in LEARNERS, f"learner must be one of {', '.join(LEARNERS)}, got {self.learner!r}")
        need(
            not (self.fresh_gradients and self.learner == "tape"),
            "--fresh-gradients recomputes each rollout at the new weights, which the tape cannot: use --learner "
            "autograd (or auto)",
        )
        need(
            re.fullmatch(r"[a-z]+(:\d+)?", self.device) is not None,
            f"device must be a torch device such as cpu, cuda or cuda:1, got {self.device!r}",
        )
        for name in ("adam_eps", "rmsprop_eps", "max_grad_norm"):
            value = getattr(self, name)
            need(math.isfinite(value) and value > 0, f"{name} must be a positive number, got {value}")
        need(
            self.lr is None or (math.isfinite(self.lr) and self.lr > 0), f"lr must be a positive number, got {self.lr}"
        )
        need(
            self.lr_end is None or (math.isfinite(self.lr_end) and self.lr_end >= 0),
            f"lr_end must be >= 0, got {self.lr_end}",
        )
        need(self.lr_anneal_frames >= 0, f"lr_anneal_frames must be >= 0, got {self.lr_anneal_frames}")
        need(self.lr_anneal_start >= 0, f"lr_anneal_start must be >= 0, got {self.lr_anneal_start}")
        if self.lr_end is None and self.lr_anneal_frames == 0:
            need(
                self.lr_anneal_start <= 0,
                "lr_anneal_start delays an lr schedule, and there is none: give lr_end and lr_anneal_frames too",
            )
        elif self.lr_anneal_frames > 0:
            need(
                self.lr_anneal_start < self.lr_anneal_frames,
                f"lr_anneal_start must be below lr_anneal_frames ({self.lr_anneal_frames}), got {self.lr_anneal_start}",
            )
        need(
            (self.lr_end is None) == (self.lr_anneal_frames == 0),
            "lr_end and lr_anneal_frames go together: give both to anneal lr, or neither for a constant lr",
        )
        need(0 < self.gamma <= 1, f"gamma must be in (0, 1], got {self.gamma}")
        need(0 <= self.gae_lambda <= 1, f"gae_lambda must be in [0, 1], got {self.gae_lambda}")
        need(0 <= self.adam_beta1 < 1, f"adam_beta1 must be in [0, 1), got {self.adam_beta1}")
        need(0 <= self.rmsprop_alpha < 1, f"rmsprop_alpha must be in [0, 1), got {self.rmsprop_alpha}")
        for name in ("entropy_coef", "value_loss_coef"):
            value = getattr(self, name)
            need(math.isfinite(value) and value >= 0, f"{name} must be >= 0, got {value}")
        need(
            1 <= self.rollout_len <= 10_000,
            f"rollout length (--rs) must be between 1 and 10000, got {self.rollout_len}",
        )
        need(self.ep_length >= 0, f"ep_length must be >= 0 (0 = no cap), got {self.ep_length}")
        need(1 <= self.frame_skip <= 16, f"frame_skip must be between 1 and 16, got {self.frame_skip}")
        need(16 <= self.frame_size <= 256, f"frame_size must be between 16 and 256, got {self.frame_size}")
        need(1 <= self.frame_stack <= 16, f"frame_stack must be between 1 and 16, got {self.frame_stack}")
        need(self.noop_max >= 0, f"noop_max must be >= 0, got {self.noop_max}")
        need(
            self.crop_top >= 0 and self.crop_bottom >= 0 and self.crop_top + self.crop_bottom <= 200,
            f"crop_top and crop_bottom must be >= 0 and leave at least 10 of the screen's 210 rows, "
            f"got {self.crop_top} and {self.crop_bottom}",
        )
        need(1 <= self.hidden_size <= 4096, f"hidden_size must be between 1 and 4096, got {self.hidden_size}")
        need(
            self.target_reward is None or math.isfinite(self.target_reward),
            f"target_reward must be a finite number, got {self.target_reward}",
        )
        need(self.max_frames >= 0, f"max_frames must be >= 0 (0 = no limit), got {self.max_frames}")
        need(
            math.isfinite(self.max_seconds) and self.max_seconds >= 0,
            f"max_seconds must be >= 0 (0 = no limit), got {self.max_seconds}",
        )
        need(self.save_interval_s > 0, f"save_interval must be > 0 seconds, got {self.save_interval_s}")
        need(
            math.isfinite(self.eval_interval_s) and self.eval_interval_s >= 0,
            f"eval_interval must be >= 0 seconds (0 = no evaluator), got {self.eval_interval_s}",
        )
        need(1 <= self.eval_episodes <= 100_000, f"episodes must be between 1 and 100000, got {self.eval_episodes}")
        need(
            0 <= self.workers_per_host <= 256,
            f"workers_per_host must be between 0 and 256, got {self.workers_per_host}",
        )
        need(
            math.isfinite(self.exchange_interval_s) and self.exchange_interval_s > 0,
            f"exchange_interval must be > 0 seconds, got {self.exchange_interval_s}",
        )
        need(
            self.ray_address is None or bool(self.ray_address.strip()),
            "ray_address is empty: give host:port of the cluster's head, or auto",
        )
        need(
            self.ray_address is None or not self.serial,
            "--serial runs one worker in this process; it does not go with --ray-address",
        )
        need(
            not (self.use_trained and self.start_over),
            "--use-trained goes on with the earlier run and --start-over moves it aside: give one of them",
        )
        need(bool(self.checkpoint_dir), "checkpoint_dir is empty")
        need(bool(self.plot_dir), "plot_dir is empty")
        if problems:
            raise ConfigError("; ".join(problems))
        return self


def default_lr(n_workers: int) -> float:
    """The lr for n_workers workers stepping one model when none is given: BASE_LR up to LR_FULL_WORKERS, then
    BASE_LR x sqrt(LR_FULL_WORKERS / n_workers) (1.06e-4 at 16 workers, 7.5e-5 at 32)."""
    return BASE_LR * math.sqrt(min(1.0, LR_FULL_WORKERS / max(1, n_workers)))


def settle_lr(cfg: Config, sharing: int) -> Config:
    """The run's config with its lr decided: the one a flag or a config file gave, else default_lr of `sharing`, the
    workers whose steps reach one model as the fleet counts them (this machine's workers, 1 in serial mode, every
    host's on a cluster). The one place the lr is decided."""
    return cfg if cfg.lr is not None else cfg.replace(lr=default_lr(sharing))


def safe_name(env_name: str) -> str:
    """Env id as a file name: anything but letters, digits, '-', '_' and '.' becomes '_'."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", env_name.strip()) or "env"


def game_name(env_name: str) -> str:
    """The game behind an env id, lower case: PongNoFrameskip-v4, ALE/Pong-v5 -> pong."""
    name = env_name.split("/")[-1]
    name = re.sub(r"-v\d+$", "", name)
    name = re.sub(r"(NoFrameskip|Deterministic)$", "", name)
    return name.lower()


def game_config_path(env_name: str) -> Path | None:
    """configs/<game>.toml for this env id, if the project ships one."""
    path = CONFIG_DIR / f"{game_name(env_name)}.toml"
    return path if path.is_file() else None


def _field_types() -> dict[str, object]:
    return typing.get_type_hints(Config)


def coerce(name: str, value: object, source: str) -> object:
    """Check one setting's type (ints are accepted for floats); raise ConfigError naming source."""
    types = _field_types()
    if name not in types:
        known = ", ".join(sorted(types))
        raise ConfigError(f"{source}: unknown setting {name!r} (known settings: {known})")
    hint = types[name]
    allowed = typing.get_args(hint) or (hint,)
    if value is None and type(None) in allowed:
        return None
    if isinstance(value, bool):
        if bool in allowed:
            return value
    elif isinstance(value, int) and int in allowed:
        return value
    elif isinstance(value, (int, float)) and float in allowed:
        return float(value)
    elif isinstance(value, str) and str in allowed:
        return value
    wanted = " or ".join(t.__name__ for t in allowed if t is not type(None))
    raise ConfigError(f"{source}: {name} must be {wanted}, got {value!r}")


def read_config_file(path: str | Path) -> dict[str, object]:
    """Settings from a TOML file, type-checked; bad TOML names its line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read config file {path}: {error}") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config file {path} is not valid TOML: {error}") from None
    return {key: coerce(key, value, str(path)) for key, value in raw.items()}


def build_config(overrides: dict[str, object], config_file: str | Path | None = None) -> Config:
    """Defaults < the config file (or configs/<game>.toml for the env) < overrides (the flags given)."""
    env_name = overrides.get("env_name")
    file_settings: dict[str, object] = {}
    if config_file is not None:
        file_settings = read_config_file(config_file)
    else:
        game_file = game_config_path(str(env_name or Config.env_name))
        if game_file is not None:
            file_settings = read_config_file(game_file)
            file_settings.pop("env_name", None)  # the game's file must not swap the game the user chose
    settings = {**file_settings, **{k: coerce(k, v, "flag") for k, v in overrides.items()}}
    return Config(**settings).validate()
