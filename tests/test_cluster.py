"""Several hosts on Ray (a3c/cluster.py): a real two-node cluster on loopback trains CartPole to its target and Pong
with CSV, plot and checkpoint as in a local run, survives a node's death, resumes on fewer nodes, and leaves no
worker behind a killed driver. Without --ray-address nothing imports Ray."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import REPO_ROOT

from a3c.checkpoint import load_checkpoint
from a3c.cluster import (
    GlobalModel,
    HostGroup,
    Node,
    RayFleet,
    add_weights,
    average_statistics,
    copy_weights,
    flat_weights,
    fold_in,
)
from a3c.config import build_config, settle_lr
from a3c.envs import env_spaces
from a3c.fleet import LocalFleet
from a3c.messages import WorkerFailure
from a3c.model import build_model
from a3c.shared_optim import make_optimizer


def test_a_local_run_never_imports_ray(tmp_path: Path):
    code = (
        "import sys; from a3c import cli; "
        f"status = cli.main(['--env-name', 'CartPole-v1', '--serial', '--max-frames', '200', '--checkpoint-dir', "
        f"{str(tmp_path / 'ck')!r}, '--plot-dir', {str(tmp_path / 'pl')!r}]); "
        "print(status, 'ray' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert done.stdout.strip().splitlines()[-1] == "0 False", done.stderr[-2000:]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--serial", "--ray-address", "auto"], "--serial runs one worker in this process"),
        (["--workers-per-host", "-1"], "workers_per_host must be between 0 and 256"),
        (["--exchange-interval", "0"], "exchange_interval must be > 0 seconds"),
    ],
)
def test_cluster_flags_that_cannot_work_are_one_line_and_exit_2(flags: list[str], message: str):
    done = subprocess.run(
        [sys.executable, "main.py", "--env-name", "CartPole-v1", *flags],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
    )
    assert done.returncode == 2 and message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_a_host_folds_the_global_weights_in_and_keeps_its_own_steps():
    """The exchange's arithmetic on a real model: a host's delta reaches the global model whole, and after folding
    the global weights in, the host holds them plus the steps it took while the exchange was under way."""
    cfg = build_config({"env_name": "CartPole-v1"})
    host, _ = build_model(cfg, *env_spaces(cfg))
    base = flat_weights(host)
    other_host_delta = torch.randn_like(base) * 0.01
    global_model = GlobalModel((base + other_host_delta).numpy(), frames=100)  # another host has sent already
    own_steps, steps_meanwhile = torch.randn_like(base) * 0.01, torch.randn_like(base) * 0.01
    add_weights(host, own_steps)
    sent_from = flat_weights(host)
    weights, frames = global_model.exchange((sent_from - base).numpy(), frames=40)
    add_weights(host, steps_meanwhile)  # a worker's step between sending and folding in
    add_weights(host, torch.from_numpy(weights) - sent_from)
    expected_global = base + other_host_delta + own_steps
    assert torch.allclose(torch.from_numpy(weights), expected_global, atol=1e-6) and frames == 140
    assert torch.allclose(flat_weights(host), expected_global + steps_meanwhile, atol=1e-6)
    copy_weights(host, base)
    assert torch.equal(flat_weights(host), base)


@pytest.mark.parametrize("hosts", [1, 2, 4])
def test_hosts_with_the_same_gradients_move_the_global_model_as_one_machine_with_all_their_workers(hosts: int):
    """The exchange rule's known answer, on a toy problem with an exact one: a constant gradient, plain SGD. H hosts
    of 8 workers, each step a worker takes, exchanged at random moments in random order with the real GlobalModel and
    fold_in, move the global model exactly as 8H workers on one machine would: every step lands once, at the lr that
    8H workers get locally (settle_lr of each fleet). Summing deltas at the largest host's lr moved it about H times
    as far at 16 workers and more, as issue #40 found."""
    workers, steps_each = 8, 30
    cfg = build_config({"env_name": "CartPole-v1", "ray_address": "auto"}).replace(lr=None)
    fleet = RayFleet(cfg, [Node(f"n{h}", f"10.0.0.{h}", workers) for h in range(hosts)])
    lr = settle_lr(cfg, fleet.sharing).lr
    one_machine = LocalFleet(build_config({"env_name": "CartPole-v1", "n_workers": workers * hosts}).replace(lr=None))
    assert lr == settle_lr(cfg, one_machine.sharing).lr
    rng = np.random.default_rng(hosts)
    start = build_model(cfg, *env_spaces(cfg))[0]
    gradient = torch.from_numpy(rng.uniform(-1, 1, flat_weights(start).numel()).astype(np.float32))
    global_model = GlobalModel(flat_weights(start).numpy(), frames=0)
    models = [build_model(cfg, *env_spaces(cfg))[0] for _ in range(hosts)]
    bases = [flat_weights(start)] * hosts
    for model in models:
        copy_weights(model, bases[0])

    def exchange(h: int) -> None:
        sent_from = flat_weights(models[h])
        weights, _ = global_model.exchange((sent_from - bases[h]).numpy(), frames=0)
        bases[h] = torch.from_numpy(np.array(weights))
        fold_in(models[h], sent_from, bases[h])

    events = [h for h in range(hosts) for _ in range(workers * steps_each)]  # one entry per worker step
    events += [-1 - h for h in range(hosts) for _ in range(steps_each)]  # and exchanges at random moments
    for event in rng.permutation(events):
        if event >= 0:
            add_weights(models[event], -lr * gradient)
        else:
            exchange(-1 - event)
    for h in range(hosts):  # the last exchange at the end, as HostGroup.stop sends it
        exchange(h)
    moved = workers * hosts * steps_each * lr * gradient
    error = (torch.from_numpy(global_model.get()[0]) - (flat_weights(start) - moved)).abs().max()
    assert error <= 1e-3 * moved.abs().max(), (error, moved.abs().max())  # float32 rounding; a rule off by H: 1x
    for h in range(hosts):  # one more exchange each, with nothing to send: every host holds the global weights
        exchange(h)
    final = torch.from_numpy(global_model.get()[0])
    assert all(torch.allclose(flat_weights(model), final, atol=1e-6) for model in models)


@pytest.mark.parametrize("opt", ["adam", "rmsprop"])
def test_the_checkpoint_statistics_are_the_mean_of_the_hosts(opt: str):
    """What a resume on any number of hosts starts every host from: each tensor of the optimizer state averaged over
    the hosts, loadable into the optimizer of a fresh host."""
    cfg = settle_lr(build_config({"env_name": "CartPole-v1", "opt": opt}), 1)
    states = []
    for h in range(3):
        model, _ = build_model(cfg, *env_spaces(cfg))
        optimizer = make_optimizer(cfg, model.parameters())
        for _ in range(h + 1):
            for p in model.parameters():
                p.grad = torch.full_like(p, float(h + 1))
            optimizer.step()
        states.append(optimizer.state_dict())
    averaged = average_statistics(states)
    joined, _ = build_model(cfg, *env_spaces(cfg))
    fresh = make_optimizer(cfg, joined.parameters())
    fresh.load_state_dict(averaged)
    for index, state in fresh.state_dict()["state"].items():
        for key, value in state.items():
            mean = sum(s["state"][index][key] for s in states) / 3
            assert torch.allclose(value, mean), (opt, index, key)
    assert float(fresh.state_dict()["state"][0]["step"]) == 2.0  # hosts that took 1, 2 and 3 steps


@pytest.mark.multiprocess
def test_a_host_starts_a_dead_worker_again_until_it_keeps_dying():
    """A host's worker whose game raises: each death is reported and the worker started again, the fifth within 10
    minutes leaves it stopped, as a local run's limit would; each traceback travels to the driver as a record. The
    host runs in this process, its exchange thread idle (no cluster needed for the workers' side)."""
    cfg = settle_lr(build_config({"env_name": "faulty_envs:CrashingGame-v0", "exchange_interval_s": 1e6}), 1)
    model, _ = build_model(cfg, *env_spaces(cfg))
    optimizer = make_optimizer(cfg, model.parameters())
    host = HostGroup(cfg, 0, [3], flat_weights(model).numpy(), optimizer.state_dict(), None, frames=0)
    events: list[str] = []
    records: list[object] = []
    try:
        deadline = time.monotonic() + 120
        while not any("not started again" in e for e in events) and time.monotonic() < deadline:
            report = host.poll()
            events, records = events + report.events, records + report.records
    finally:
        host.halt.set()
        host.group.stop()
    assert sum(e == "host 0: worker-3 died (exit code 1); started again" for e in events) == 4, events
    assert events[-1] == "host 0: worker-3 died 5 times in 10 minutes; not started again", events
    assert sum(isinstance(r, WorkerFailure) and r.worker == 3 for r in records) == 5
    assert host.group.children == {}


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return [row for row in csv.DictReader(f) if row.get("score")]


@pytest.mark.cluster
def test_two_nodes_train_survive_a_node_death_resume_and_leave_nothing_behind(tmp_path: Path):
    argv = [sys.executable, str(REPO_ROOT / "benchmarks" / "local_cluster.py"), "--nodes", "2", "--cpus", "1", "--"]
    argv += [sys.executable, str(REPO_ROOT / "tests" / "cluster_scenario.py"), str(tmp_path)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=900, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    runs = json.loads((tmp_path / "scenario.json").read_text(encoding="utf-8"))

    cartpole = runs["cartpole"]
    assert cartpole["rc"] == 0 and "reached the target" in cartpole["stdout"], cartpole
    assert "2 host(s) on the Ray cluster" in cartpole["stdout"]
    host_lines = [line for line in cartpole["stderr"].splitlines() if " exchanges (" in line]
    assert len(host_lines) == 2 and all(" 0 frames" not in line for line in host_lines), cartpole["stderr"]
    rows = read_rows(tmp_path / "cartpole" / "pl" / "CartPole-v1.csv")
    assert len(rows) >= 100 and max(float(r["avg100"]) for r in rows[99:]) >= 60
    assert (tmp_path / "cartpole" / "pl" / "CartPole-v1.png").stat().st_size > 0

    pong = runs["pong"]
    assert pong["saved_before_kill"] and pong["raylet_killed"] and pong["went_on_before_ctrl_c"], pong
    assert pong["rc"] == 130 and "a3c: stopped: interrupted (Ctrl-C)" in pong["stdout"], pong
    assert "host 1 (127.0.0.1) is gone" in pong["stderr"] and "going on with 1 host(s)" in pong["stderr"], pong
    assert pong["workers_left"] == [], pong
    assert pong["frames_saved"] > 0

    resume = runs["resume"]
    assert resume["went_on"] and resume["rc"] == -9, resume  # saved past the first run's frames, then SIGKILL
    assert "1 host(s) on the Ray cluster" in resume["stdout"] and "resumed" in resume["stderr"], resume
    assert resume["workers_seen"] and resume["workers_left_after_10s"] == [], resume
    payload = load_checkpoint(tmp_path / "pong" / "ck" / "PongNoFrameskip-v4.pt")
    assert payload["counters"]["frames"] > pong["frames_saved"]
    assert all(torch.isfinite(w).all() for w in payload["model"].values())
    assert payload["config"]["n_workers"] == 1  # one host of one worker: it went on with fewer than it began
    assert (tmp_path / "pong" / "pl" / "PongNoFrameskip-v4.png").stat().st_size > 0

    lost = runs["lost_global_model"]
    assert lost["saved_before_kill"] and lost["killed"], lost
    assert lost["rc"] == 1 and "a3c: stopped: the global model is gone" in lost["stdout"], lost
    assert "a3c: the global model is gone (" in lost["stderr"] and "Traceback" not in lost["stderr"], lost
    assert lost["workers_left_after_10s"] == [], lost
    load_checkpoint(tmp_path / "lost-global-model" / "ck" / "CartPole-v1.pt")


@pytest.mark.cluster
def test_a_cluster_that_answers_without_a_token_is_refused_in_one_line(tmp_path: Path):
    """A head started without token authentication: main.py --ray-address refuses it in one line, exit status 2,
    before anything is written; --allow-open-cluster trains on it."""
    argv = [sys.executable, str(REPO_ROOT / "benchmarks" / "local_cluster.py"), "--nodes", "1", "--no-auth", "--"]
    main_py = [sys.executable, str(REPO_ROOT / "main.py"), "--env-name", "CartPole-v1", "--ray-address", "auto"]
    main_py += ["--checkpoint-dir", str(tmp_path / "ck"), "--plot-dir", str(tmp_path / "pl")]
    script = (
        f"{' '.join(main_py)} 2> {tmp_path / 'refused.err'}; echo $? > {tmp_path / 'refused.rc'}; "
        f"{' '.join(main_py)} --allow-open-cluster --max-frames 2000 > {tmp_path / 'allowed.out'} 2>&1; "
        f"echo $? > {tmp_path / 'allowed.rc'}"
    )
    done = subprocess.run([*argv, "bash", "-c", script], capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    err = (tmp_path / "refused.err").read_text().strip().splitlines()
    assert (tmp_path / "refused.rc").read_text().strip() == "2"
    assert len(err) == 1 and "answers clients without a token" in err[0] and "--allow-open-cluster" in err[0], err
    assert (tmp_path / "allowed.rc").read_text().strip() == "0", (tmp_path / "allowed.out").read_text()[-3000:]
    assert "reached --max-frames" in (tmp_path / "allowed.out").read_text()
