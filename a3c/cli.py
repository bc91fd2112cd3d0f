"""Command line: the classic A3C flag names -> Config -> train / plot. User errors become one line and exit 2."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import TYPE_CHECKING

from a3c import run_files
from a3c.checkpoint import STOPPED_AT_ONCE, CheckpointError
from a3c.config import LEARNERS, LR_FULL_WORKERS, OPTIMIZERS, Config, ConfigError, build_config, default_lr
from a3c.model import CONV_TRUNKS

if TYPE_CHECKING:  # fleet.py loads torch, which the CLI loads only once the flags are good
    from a3c.fleet import Fleet

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not usage + error
        self.exit(EXIT_USAGE, f"a3c: error: {message} (see --help)\n")


def make_parser() -> argparse.ArgumentParser:
    """The flags; each one maps to the Config field named by its dest. Defaults live in Config, not here."""
    p = _Parser(
        prog="a3c",
        description="Train an A3C agent (Mnih et al. 2016) on an Atari or gymnasium game.",
        argument_default=argparse.SUPPRESS,  # only flags the user gave override the config file
    )
    run = p.add_argument_group("run")
    run.add_argument(
        "--env-name", dest="env_name", help="gymnasium id: PongNoFrameskip-v4, ALE/Breakout-v5, CartPole-v1, ..."
    )
    run.add_argument(
        "--config", dest="config_file", help="TOML file of settings (default: configs/<game>.toml if present)"
    )
    run.add_argument("--n-workers", dest="n_workers", type=int, help="worker processes, one per usable core by default")
    run.add_argument(
        "--envs-per-worker",
        dest="envs_per_worker",
        type=int,
        help="games each worker steps in lockstep (1 = the paper)",
    )
    run.add_argument("--seed", type=int, help="base seed; worker r uses seed + r")
    run.add_argument("--use-trained", dest="use_trained", action="store_true", help="resume from the game's checkpoint")
    run.add_argument(
        "--start-over",
        dest="start_over",
        action="store_true",
        help="train afresh: the game's earlier checkpoint, CSVs and plot are moved aside to <dir>/<game>.<date-time>/ "
        "(without this flag or --use-trained, a run that finds them refuses)",
    )
    run.add_argument("--serial", action="store_true", help="run one worker inside this process (debugging)")
    run.add_argument("--plot", dest="plot_only", action="store_true", help="redraw the plot from the CSV and exit")
    run.add_argument("-v", "--verbose", action="store_true", help="debug logging")

    algo = p.add_argument_group("algorithm")
    algo.add_argument("--opt", choices=OPTIMIZERS, help="shared optimizer")
    n = LR_FULL_WORKERS
    algo.add_argument(
        "--lr",
        type=float,
        help=f"learning rate; more than {n} workers get less, x sqrt({n} / workers) (16: {default_lr(16):.2e})",
    )
    algo.add_argument("--adam-beta1", dest="adam_beta1", type=float, help="Adam's momentum (beta1)")
    algo.add_argument("--adam-eps", dest="adam_eps", type=float, help="Adam's epsilon")
    algo.add_argument("--rmsprop-alpha", dest="rmsprop_alpha", type=float, help="RMSProp's decay (with --opt rmsprop)")
    algo.add_argument("--rmsprop-eps", dest="rmsprop_eps", type=float, help="RMSProp's epsilon (with --opt rmsprop)")
    algo.add_argument(
        "--lr-end", dest="lr_end", type=float, help="anneal lr linearly to this, reached at --lr-anneal-frames"
    )
    algo.add_argument(
        "--lr-anneal-start", dest="lr_anneal_start", type=int, help="emulator frames before lr starts to fall"
    )
    algo.add_argument(
        "--lr-anneal-frames",
        dest="lr_anneal_frames",
        type=int,
        help="emulator frames at which lr has fallen to --lr-end (then it stays there)",
    )
    algo.add_argument("--gamma", type=float, help="discount factor")
    algo.add_argument(
        "--gae-lambda", dest="gae_lambda", type=float, help="GAE lambda (1.0 = the paper's n-step advantage)"
    )
    algo.add_argument("--entropy-coef", dest="entropy_coef", type=float, help="entropy bonus weight")
    algo.add_argument("--value-loss-coef", dest="value_loss_coef", type=float, help="value loss weight")
    algo.add_argument("--max-grad-norm", dest="max_grad_norm", type=float, help="gradient norm clip")
    algo.add_argument(
        "--rs", "--rollout-len", dest="rollout_len", type=int, help="rollout length t_max (agent steps per update)"
    )
    algo.add_argument(
        "--arch",
        choices=list(CONV_TRUNKS),
        help="conv trunk for frames, registered in a3c/model.py: 'paper' (Mnih et al.), 'small' (4 x 3x3 conv), ...",
    )
    algo.add_argument("--hidden-size", dest="hidden_size", type=int, help="width of the LSTM (and of the fc layer)")
    algo.add_argument(
        "--standardize-frames",
        dest="standardize_frames",
        action=argparse.BooleanOptionalAction,
        help="feed each frame centred on its mean and scaled by its spread, instead of pixels / 255",
    )
    algo.add_argument(
        "--fc-layer",
        dest="fc_layer",
        action=argparse.BooleanOptionalAction,
        help="an fc layer between the conv trunk and the LSTM (--no-fc-layer: conv features straight into the LSTM)",
    )

    algo.add_argument(
        "--lock-step",
        dest="lock_step",
        action=argparse.BooleanOptionalAction,
        help="hold one lock around the shared optimizer's step (--no-lock-step: the paper's lock-free Hogwild step)",
    )
    algo.add_argument(
        "--fresh-gradients",
        dest="fresh_gradients",
        action=argparse.BooleanOptionalAction,
        help="sync with the shared model again just before each update, so the gradient is taken at its current "
        "weights (autograd learner; for many workers)",
    )
    algo.add_argument(
        "--learner",
        choices=LEARNERS,
        help="how workers compute gradients: 'tape' (fast, CPU, the layers it knows), 'autograd' (any network, any "
        "device), 'auto' (the tape where it gives autograd's gradients)",
    )
    algo.add_argument(
        "--device", help="where each worker's model runs: cpu, cuda, cuda:1 (cuda needs the autograd learner)"
    )

    env = p.add_argument_group("environment")
    env.add_argument(
        "--ep-length", dest="ep_length", type=int, help="cap on an episode's agent steps (0 = the game's own limit)"
    )
    env.add_argument(
        "--frame-skip", dest="frame_skip", type=int, help="emulator frames per agent step (the action repeats)"
    )
    env.add_argument("--frame-size", dest="frame_size", type=int, help="side of the square grayscale frame")
    env.add_argument("--crop-top", dest="crop_top", type=int, help="screen rows cut off at the top before resizing")
    env.add_argument(
        "--crop-bottom", dest="crop_bottom", type=int, help="screen rows cut off at the bottom before resizing"
    )
    env.add_argument("--frame-stack", dest="frame_stack", type=int, help="frames stacked into one observation")
    env.add_argument("--noop-max", dest="noop_max", type=int, help="most no-op actions at the start of a game")
    env.add_argument(
        "--terminal-on-life-loss",
        dest="terminal_on_life_loss",
        action=argparse.BooleanOptionalAction,
        help="treat a lost life as a terminal for learning (the game goes on)",
    )
    env.add_argument(
        "--clip-rewards",
        dest="clip_rewards",
        action=argparse.BooleanOptionalAction,
        help="learn from the sign of the reward",
    )

    stop = p.add_argument_group("stopping and output")
    stop.add_argument(
        "--target-reward",
        dest="target_reward",
        type=float,
        help="stop when the average of the last 100 games reaches it",
    )
    stop.add_argument(
        "--max-frames", dest="max_frames", type=int, help="stop after this many emulator frames in all (0 = no limit)"
    )
    stop.add_argument(
        "--max-seconds", dest="max_seconds", type=float, help="stop after this many seconds of this run (0 = no limit)"
    )
    stop.add_argument("--save-interval", dest="save_interval_s", type=float, help="seconds between checkpoints")
    stop.add_argument("--checkpoint-dir", dest="checkpoint_dir", help="where <game>.pt goes")
    stop.add_argument("--plot-dir", dest="plot_dir", help="where <game>.csv and <game>.png go")
    stop.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, help="also log scalars for TensorBoard")
    stop.add_argument("--tensorboard-dir", dest="tensorboard_dir", help="where TensorBoard runs go")

    cluster = p.add_argument_group("several hosts (Ray; pip install -e '.[cluster]')")
    cluster.add_argument(
        "--ray-address",
        dest="ray_address",
        metavar="ADDR",
        help="train on the Ray cluster whose head is at host:port (or auto): one group of workers per node",
    )
    cluster.add_argument(
        "--workers-per-host",
        dest="workers_per_host",
        type=int,
        help="workers on each host (0 = the CPUs Ray counts on that node)",
    )
    cluster.add_argument(
        "--allow-open-cluster",
        dest="allow_open_cluster",
        action="store_true",
        help="train on a Ray cluster that accepts clients without a token (refused otherwise: anyone who reaches it "
        "can run code on every node); only on a network no one else can reach",
    )
    cluster.add_argument(
        "--exchange-interval",
        dest="exchange_interval_s",
        type=float,
        help="seconds between a host's exchanges of its weight delta with the global model",
    )

    ev = p.add_argument_group("evaluation")
    ev.add_argument(
        "--evaluate", action="store_true", help="play whole games with the trained model instead of training"
    )
    ev.add_argument("--episodes", dest="eval_episodes", type=int, help="games per evaluation")
    ev.add_argument(
        "--greedy",
        dest="eval_greedy",
        action=argparse.BooleanOptionalAction,
        help="evaluate with the most probable action instead of sampling the policy",
    )
    ev.add_argument("--record", metavar="PATH", help="with --evaluate: write the best game to PATH (.gif or .mp4)")
    ev.add_argument("--checkpoint", metavar="PATH", help="with --evaluate: the checkpoint (default: the game's)")
    ev.add_argument(
        "--eval-interval",
        dest="eval_interval_s",
        type=float,
        help="while training, score the model every so many seconds in an extra process (0 = off; costs a core)",
    )
    defaults = Config()
    for action in p._actions:  # show Config's defaults (the parser itself holds none, see argument_default)
        if (
            action.help
            and hasattr(defaults, action.dest)
            and action.dest not in ("use_trained", "start_over", "serial", "evaluate", "allow_open_cluster")
        ):
            action.help += f" (default: {getattr(defaults, action.dest)})"
    return p


def make_fleet(cfg: Config) -> Fleet:
    """The workers the run's trainer drives: a Ray cluster's hosts with --ray-address, else this machine's."""
    if cfg.ray_address is not None:
        from a3c import cluster  # only here: a local run never imports Ray

        return cluster.RayFleet.connect(cfg)
    from a3c.fleet import LocalFleet

    return LocalFleet(cfg)


def main(argv: list[str] | None = None) -> int:
    """Parse, build and validate the config, then train or plot. Returns the exit status."""
    try:
        args = vars(make_parser().parse_args(argv))
    except SystemExit as stop:  # --help, or a mistake argparse caught (already printed as one line)
        return stop.code if isinstance(stop.code, int) else EXIT_USAGE
    verbose = args.pop("verbose", False)
    plot_only = args.pop("plot_only", False)
    evaluate = args.pop("evaluate", False)
    record = args.pop("record", None)
    checkpoint = args.pop("checkpoint", None)
    config_file = args.pop("config_file", None)
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(processName)s %(levelname)s %(message)s",
    )
    # Spawned workers inherit this: they start single-threaded instead of each grabbing every core.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        cfg = build_config(args, config_file)
        if (record or checkpoint) and not evaluate:
            raise ConfigError("--record and --checkpoint go with --evaluate")
        # imported late: torch and the ALE load only after the flags are good
        if evaluate:
            from a3c import evaluate as evaluation

            checkpoint = checkpoint or cfg.checkpoint_path
            evaluation.evaluate_checkpoint(cfg, checkpoint, record)
            return 0
        if not plot_only:
            # Before torch and the ALE load: a run that must refuse (another run on these files, or an earlier run
            # that neither --use-trained nor --start-over deals with) says so at once. The trainer asks again, under
            # the lock.
            run_files.check_no_live_run(cfg)
            run_files.check_no_earlier_run(cfg)
        from a3c import trainer

        if plot_only:
            return trainer.redraw_plot(cfg)
        return trainer.train(cfg, make_fleet(cfg))
    except (ConfigError, CheckpointError) as error:
        print(f"a3c: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # before training began, or during an evaluation
        print(f"\n{STOPPED_AT_ONCE}", file=sys.stderr)
        return EXIT_INTERRUPTED
