"""Several hosts on a Ray cluster (--ray-address): A3C's asynchrony one level up.

On each host, a HostGroup actor runs today's worker group unchanged: Hogwild workers on a host-local shared model
and shared optimizer. Between hosts, one GlobalModel actor holds the global weights. Every exchange_interval_s,
without a barrier, a host sends its weight delta since its last exchange, the actor adds it, and the host takes the
global weights back. Gradients never cross the network, only one delta up and one set of weights down per host and
exchange. Shipping each worker's gradients (about 40 a second) would cost about 40 times that.

The driver is the usual Trainer, given a RayFleet instead of this machine's fleet: it alone writes the CSV, plot and
checkpoint, so they look as in a local run, with frames counted over all hosts. Imported only with --ray-address;
ray is an optional extra.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn
from torch.optim import Optimizer

from a3c.config import Config, ConfigError
from a3c.envs import env_spaces
from a3c.fleet import FleetReport, WorkerGroup, share_state
from a3c.health import Health
from a3c.messages import EvalResult, GameResult, WorkerFailure, WorkerStats
from a3c.model import ActorCritic, build_model
from a3c.processes import Counts
from a3c.shared_optim import apply_settings, make_optimizer

try:
    import ray
    from ray._private.services import canonicalize_bootstrap_address_or_die
    from ray.exceptions import ActorDiedError, ActorUnavailableError, GetTimeoutError, RayActorError, RayError
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
except ImportError:  # the CLI turns this into one line: install the extra
    ray = None

log = logging.getLogger(__name__)

POLL_WAIT_S = 0.5  # a host's poll waits this long for its first record: a long poll, not a busy loop
STOP_WAIT_S = 60.0  # the longest the driver waits for a host to stop its workers and send its last delta
TOKEN_PROBE_S = 10.0  # how long the unauthenticated request to the head may take


def flat_weights(model: nn.Module) -> torch.Tensor:
    """A copy of every parameter in one float32 vector [P], in model.parameters() order."""
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def copy_weights(model: nn.Module, vector: torch.Tensor) -> None:
    """Write a flat vector [P] into the parameters in place (torch's vector_to_parameters rebinds .data instead,
    which would leave shared memory behind)."""
    offset = 0
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(vector[offset : offset + p.numel()].view_as(p))
            offset += p.numel()


def add_weights(model: nn.Module, vector: torch.Tensor) -> None:
    """Add a flat vector [P] to the parameters in place."""
    offset = 0
    with torch.no_grad():
        for p in model.parameters():
            p.add_(vector[offset : offset + p.numel()].view_as(p))
            offset += p.numel()


def fold_in(model: nn.Module, sent_from: torch.Tensor, global_weights: torch.Tensor) -> None:
    """A host's side of an exchange: it sent (sent_from - base) and got global_weights back. Adding
    (global_weights - sent_from) gives it the other hosts' progress and keeps the steps its own workers took while the
    exchange was under way, which go with its next delta."""
    add_weights(model, global_weights - sent_from)


def average_statistics(states: list[dict[str, Any]]) -> dict[str, Any]:
    """The run's optimizer statistics from its hosts' (optimizer state_dicts of one network): every tensor of the
    per-parameter state (Adam's step, exp_avg and exp_avg_sq; RMSprop's square_avg) averaged over the hosts, the
    param groups of the first. Each host's statistics estimate the same moments of the same run's gradients, so
    their mean is that estimate with less noise, and a resume on any number of hosts starts every host from it."""
    first = states[0]
    averaged: dict[int, dict[str, Any]] = {}
    for index, state in first["state"].items():
        averaged[index] = {
            key: torch.stack([s["state"][index][key].float() for s in states]).mean(0).to(value.dtype)
            if torch.is_tensor(value)
            else value
            for key, value in state.items()
        }
    return {"state": averaged, "param_groups": first["param_groups"]}


class GlobalModel:
    """The global weights (one float32 vector) and the frames the hosts have sent. A Ray actor: its methods run one
    at a time, so each exchange adds a whole delta."""

    def __init__(self, weights: np.ndarray, frames: int):
        self.weights = np.array(weights, dtype=np.float32)
        self.frames = frames
        self.exchanges = 0

    def exchange(self, delta: np.ndarray, frames: int) -> tuple[np.ndarray, int]:
        """Add a host's weight delta [P] and its frames since its last exchange; return the global weights and frames."""
        self.weights += delta
        self.frames += frames
        self.exchanges += 1
        return self.weights, self.frames

    def get(self) -> tuple[np.ndarray, int, int]:
        """The global weights [P], frames and the number of exchanges so far."""
        return self.weights, self.frames, self.exchanges

    def put(self, weights: np.ndarray) -> None:
        """Replace the global weights (the driver's rollback of damaged weights)."""
        self.weights[:] = weights


class HostReport(NamedTuple):
    """What a host tells the driver at each poll: the workers' records since the last poll, its running totals (this
    session), and lines for the driver's log."""

    host: int
    records: list[GameResult | WorkerStats | EvalResult | WorkerFailure]
    frames: int  # emulator frames this host's workers ran
    updates: int
    skipped_updates: int
    exchanges: int
    bytes_sent: int
    bytes_received: int
    events: list[str]
    global_model_gone: bool  # its exchange found the GlobalModel actor dead
    failure: str | None  # its model's damage keeps coming back (Health.failure)


class HostGroup:
    """One host's worker group (a Ray actor pinned to its node): workers on a host-local shared model and optimizer,
    as in a local run, and a thread that exchanges the weight delta with the GlobalModel every exchange_interval_s.

    Folding the global weights in keeps the host's own progress: after sending delta = local - base, the host adds
    (global - what it sent from), so the steps its workers took meanwhile stay, and go with the next delta."""

    def __init__(
        self,
        cfg: Config,
        host: int,
        ranks: list[int],
        weights: np.ndarray,
        optimizer_state: dict[str, Any],
        global_model: Any,
        frames: int,
    ):
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        torch.set_num_threads(1)
        self.cfg, self.host, self.global_model = cfg, host, global_model
        self.model, _ = build_model(cfg, *env_spaces(cfg))
        copy_weights(self.model, torch.from_numpy(np.array(weights)))
        self.optimizer = make_optimizer(cfg, self.model.parameters())
        self.optimizer.load_state_dict(optimizer_state)
        apply_settings(self.optimizer, cfg)
        self.optimizer.share_memory()
        self.model.share_memory()
        self.shared = share_state(self.model, self.optimizer, max(ranks), Counts(frames, 0, 0))
        self.start_frames = frames
        self.foreign_frames = 0  # other hosts' frames added to this host's counter, so lr schedules see them all
        self.frames_sent = 0
        self.base = flat_weights(self.model)  # the global weights as of this host's last exchange
        self.exchanges = self.bytes_sent = self.bytes_received = 0
        self.events: list[str] = []
        # The sound state a rollback returns to: the weights and statistics as of the last exchange.
        self.health = Health(
            self.model, self.optimizer, self.shared.step_lock.held, self.own_frames, self._say, rollbacks_before=0
        )
        self.global_model_gone = False
        self.group = WorkerGroup(cfg, self.shared, ranks)
        self.group.start()
        self.halt = threading.Event()
        self.exchanger = threading.Thread(target=self._exchange_loop, name="exchange", daemon=True)
        self.exchanger.start()

    def _say(self, line: str) -> None:
        self.events.append(f"host {self.host}: {line}")

    def own_frames(self) -> int:
        return self.shared.counters.frames() - self.start_frames - self.foreign_frames

    def _exchange_loop(self) -> None:
        while not self.halt.wait(self.cfg.exchange_interval_s):
            try:
                self.exchange()
            except RayError as error:  # nowhere to send progress to: stop the workers and tell the driver
                self.events.append(f"host {self.host}: the global model is gone ({type(error).__name__}); stopping")
                self.global_model_gone = True
                self.shared.stop.set()
                return

    def exchange(self) -> None:
        """Send this host's weight delta and new frames; fold the global weights and other hosts' frames in. Damaged
        weights or statistics are not sent: the host rolls back to its state of the last exchange (Health)."""
        if not self.health.check():
            return
        sent_from = flat_weights(self.model)
        delta = (sent_from - self.base).numpy()
        own = self.own_frames()
        weights, total_frames = ray.get(self.global_model.exchange.remote(delta, own - self.frames_sent))
        self.frames_sent = own
        global_weights = torch.from_numpy(np.array(weights))
        with self.shared.step_lock.held():
            fold_in(self.model, sent_from, global_weights)
            self.health.take_snapshot()
        self.base = global_weights
        others = total_frames - self.start_frames - own - self.foreign_frames
        if others > 0:
            self.shared.counters.row(-1)[0] += others  # the host's own row: this thread alone writes it
            self.foreign_frames += others
        self.exchanges += 1
        self.bytes_sent += delta.nbytes
        self.bytes_received += global_weights.numel() * global_weights.element_size()

    def poll(self, wait_s: float = POLL_WAIT_S) -> HostReport:
        """The records since the last poll (waiting up to wait_s for the first), the totals, and any events; a
        worker that died is started again, unless it keeps dying: then this host goes on without it, as a local
        run would end."""
        group = self.group.poll(wait_s)
        self.events += [f"host {self.host}: {line}" for line in group.lines]
        return self._report(group.records)

    def _report(self, records: list[Any]) -> HostReport:
        events, self.events = self.events, []
        _, updates, skipped = self.shared.counters.totals()
        return HostReport(
            self.host,
            records,
            self.own_frames(),
            updates,
            skipped,
            self.exchanges,
            self.bytes_sent,
            self.bytes_received,
            events,
            self.global_model_gone,
            self.health.failure,
        )

    def stop(self) -> HostReport:
        """Stop the workers, send the last delta, and report."""
        self.halt.set()
        self.exchanger.join()
        records = self.group.stop()
        try:
            self.exchange()
        except RayError as error:
            self.events.append(f"host {self.host}: could not send its last delta ({type(error).__name__})")
        self.shared.close()
        return self._report(records)

    def optimizer_state(self) -> dict[str, Any]:
        """This host's optimizer statistics, for the driver's checkpoint."""
        return self.optimizer.state_dict()


class Node(NamedTuple):
    """One Ray node that gets a host group."""

    node_id: str
    address: str
    workers: int


def cluster_nodes(cfg: Config) -> list[Node]:
    """The live nodes, the driver's first, each with cfg.workers_per_host workers (0: the CPUs Ray counts there)."""
    here = ray.get_runtime_context().get_node_id()
    nodes = [
        Node(n["NodeID"], n["NodeManagerAddress"], cfg.workers_per_host or max(1, int(n["Resources"].get("CPU", 1))))
        for n in ray.nodes()
        if n["Alive"]
    ]
    return sorted(nodes, key=lambda n: (n.node_id != here, n.address, n.node_id))


def on_node(node_id: str) -> NodeAffinitySchedulingStrategy:
    return NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)


class RayFleet:
    """A fleet of host groups on a Ray cluster, for a Trainer that does not know it: a HostGroup actor on each live
    node (each running this machine's WorkerGroup on a host-local model) and the GlobalModel actor they exchange
    with. The trainer's model is this driver's copy of the global weights: pull() reads them (and, with statistics,
    the mean of the live hosts' optimizer statistics), push() writes them back after a rollback. Records and counts come
    from the hosts' polls, frames counted over all hosts; the evaluator, if any, runs beside the driver on its copy."""

    def __init__(self, cfg: Config, nodes: list[Node]):
        self.nodes = nodes
        # Every host's steps reach the global model (the exchange adds each host's delta), so the cluster is one
        # Hogwild run of all its workers, some of whose steps arrive late: the lr is that of all of them on one
        # machine, and the global model's step does not grow with the hosts (fold_in, tests/test_cluster_rule.py).
        self.workers = self.sharing = sum(node.workers for node in nodes)
        self.global_model: Any = None
        self.hosts: dict[int, Any] = {}  # host index -> HostGroup actor handle, while alive
        self.reports: dict[int, HostReport] = {}
        self.polls: dict[Any, int] = {}  # pending poll -> host index
        self.lines: list[str] = []
        self.failure: str | None = None
        self.stopping = False

    @classmethod
    def connect(cls, cfg: Config) -> RayFleet:
        """Join the cluster at cfg.ray_address (join_cluster says why not in one line) and take its live nodes."""
        if ray is None:
            raise ConfigError("--ray-address needs Ray here and on every host: pip install -e '.[cluster]'")
        join_cluster(cfg)
        return cls(cfg, cluster_nodes(cfg))

    def prepare(self, cfg: Config, model: ActorCritic, optimizer: Optimizer, start: Counts) -> None:
        self.cfg, self.model, self.optimizer, self.session_start = cfg, model, optimizer, start
        self.pulled_at_frames = start.frames  # the frames of the global weights this driver holds
        # The driver's own counter row holds the cluster's totals; the evaluator reads them and this copy's weights.
        self.shared = share_state(model.share_memory(), optimizer, max_rank=-1, start=start)
        self.evaluator = WorkerGroup(cfg, self.shared, [], evaluator=cfg.eval_interval_s > 0)

    def start(self) -> None:
        self.started_at = time.monotonic()
        self.evaluator.start()
        weights = flat_weights(self.model).numpy()
        frames = self.session_start.frames
        here = ray.get_runtime_context().get_node_id()
        self.global_model = (
            ray.remote(GlobalModel).options(num_cpus=0, scheduling_strategy=on_node(here)).remote(weights, frames)
        )
        optimizer_state = self.optimizer.state_dict()
        host_group = ray.remote(HostGroup)
        first_rank = 0
        for host, node in enumerate(self.nodes):
            ranks = list(range(first_rank, first_rank + node.workers))
            first_rank += node.workers
            self.hosts[host] = host_group.options(num_cpus=0, scheduling_strategy=on_node(node.node_id)).remote(
                self.cfg, host, ranks, weights, optimizer_state, self.global_model, frames
            )
            self.polls[self.hosts[host].poll.remote()] = host
        hosts = ", ".join(f"host {h} {n.address} ({n.workers} workers)" for h, n in enumerate(self.nodes))
        print(f"a3c: {len(self.nodes)} host(s) on the Ray cluster: {hosts}", flush=True)

    def poll(self, timeout_s: float) -> FleetReport:
        report = self.evaluator.poll(0.0)
        records, self.lines = list(report.records), self.lines + report.lines
        if self.polls:
            ready, _ = ray.wait(list(self.polls), num_returns=len(self.polls), timeout=timeout_s)
            for ref in ready:
                host = self.polls.pop(ref)
                try:
                    records += self._take_report(ray.get(ref))
                except ActorUnavailableError:  # not known to be dead yet (its node may be coming back): ask again
                    time.sleep(0.2)
                    self.polls[self.hosts[host].poll.remote()] = host
                    continue
                except RayError as error:
                    self._lose_host(host, error)
                    continue
                self.polls[self.hosts[host].poll.remote()] = host
        elif timeout_s > 0:
            time.sleep(timeout_s)
        lines, self.lines = self.lines, []
        return FleetReport(records, lines, self.failure)

    def _take_report(self, report: HostReport) -> list[Any]:
        """A host's poll: its lines, its totals into the driver's counter row, and its records, with frames counted
        over the whole cluster."""
        self.lines += report.events
        if report.global_model_gone:
            self._lose_global_model(f"host {report.host} could not exchange with it")
        if report.failure is not None:
            self.failure = self.failure or f"host {report.host}: {report.failure}"
        self.reports[report.host] = report
        totals = [sum(getattr(r, name) for r in self.reports.values()) for name in Counts._fields]
        self.shared.counters.row(-1)[:] = [
            start + total for start, total in zip(self.session_start, totals, strict=True)
        ]
        frames = self.shared.counters.frames()  # a host counts its own frames and others' as of its last exchange
        return [r._replace(frames=frames) if isinstance(r, GameResult) else r for r in report.records]

    def _lose_host(self, host: int, error: Exception) -> None:
        self.hosts.pop(host, None)
        then = (
            "while stopping: its last delta is lost"
            if self.stopping
            else f"going on with {len(self.hosts)} host(s). It loses what it had not sent: at most "
            f"{self.cfg.exchange_interval_s:g} s of its training"
        )
        self.lines.append(f"host {host} ({self.nodes[host].address}) is gone ({_first_line(error)}); {then}")
        if not self.hosts and not self.stopping:
            self.failure = self.failure or "every host of the cluster is gone"

    def _lose_global_model(self, why: str) -> None:
        """The GlobalModel actor is dead (its process killed, its node gone): no host can exchange any more, so the
        run ends, saving the global weights this driver read last."""
        if self.global_model is None:
            return
        self.global_model = None
        print(  # the run's own words, as a local run's stop: not a host's log line
            f"a3c: the global model is gone ({why}); stopping with the global weights read last, "
            f"at {self.pulled_at_frames:,} frames",
            file=sys.stderr,
            flush=True,
        )
        self.failure = self.failure or "the global model is gone"

    def counts(self) -> Counts:
        return self.shared.counters.totals()

    def lock(self, timeout_s: float) -> contextlib.AbstractContextManager[bool]:
        return contextlib.nullcontext(True)  # the trainer's model is this driver's copy: no worker steps it

    def pull(self, statistics: bool) -> None:
        if self.global_model is not None:
            try:
                weights, frames, _ = ray.get(self.global_model.get.remote(), timeout=STOP_WAIT_S)
            except (RayActorError, ActorDiedError) as error:
                self._lose_global_model(_first_line(error))
            except (RayError, GetTimeoutError) as error:
                log.error("could not read the global model (%s); keeping the weights read last", error)
            else:
                copy_weights(self.model, torch.from_numpy(np.array(weights)))
                self.pulled_at_frames = int(frames)
        if not statistics:
            return
        states = []
        for handle in list(self.hosts.values()):
            try:
                states.append(ray.get(handle.optimizer_state.remote(), timeout=STOP_WAIT_S))
            except (RayError, GetTimeoutError):
                continue  # a host being lost: the others' statistics stand for the run
        if states:
            self.optimizer.load_state_dict(average_statistics(states))
            apply_settings(self.optimizer, self.cfg)
            self.optimizer.share_memory()

    def push(self) -> None:
        if self.global_model is not None:  # the hosts fold the sound weights in at their next exchange
            ray.get(self.global_model.put.remote(flat_weights(self.model).numpy()))

    def stop(self) -> list[Any]:
        self.stopping = True
        records: list[Any] = []
        if self.polls:  # the records of the polls under way, before the hosts stop
            ready, _ = ray.wait(list(self.polls), num_returns=len(self.polls), timeout=2 * POLL_WAIT_S)
            for ref in ready:
                with contextlib.suppress(RayError):  # the stop below finds out what became of that host
                    records += self._take_report(ray.get(ref))
        self.polls.clear()
        stops = {handle.stop.remote(): host for host, handle in self.hosts.items()}
        for ref, host in stops.items():
            try:
                records += self._take_report(ray.get(ref, timeout=STOP_WAIT_S))
            except (RayError, GetTimeoutError) as error:
                self._lose_host(host, error)
        records += self.evaluator.stop()
        seconds = max(time.monotonic() - self.started_at, 1e-9)
        for host, report in sorted(self.reports.items()):
            megabytes = (report.bytes_sent + report.bytes_received) / 1e6
            log.info(
                "host %d: %d exchanges (%.2f/s), %.2f MB/s in and out, %s frames",
                host, report.exchanges, report.exchanges / seconds, megabytes / seconds, f"{report.frames:,}",
            )  # fmt: skip
        for line in self.lines:  # what the last reports said, after the trainer's last poll
            print(f"a3c: {line}", file=sys.stderr, flush=True)
        self.lines = []
        return records

    def close(self) -> None:
        if getattr(self, "shared", None) is not None:
            self.shared.close()
        ray.shutdown()


def token_required(address: str) -> bool | None:
    """Whether the cluster's GCS at address (host:port) refuses a request that carries no token: True (token
    authentication is on), False (it answers anyone who reaches the port, who can then run code on every node), or
    None (it could not be asked; joining will say why)."""
    import grpc
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
        try:
            stub.GetClusterId(gcs_service_pb2.GetClusterIdRequest(), timeout=TOKEN_PROBE_S)
        except grpc.RpcError as error:
            return True if error.code() == grpc.StatusCode.UNAUTHENTICATED else None
    return False


def cluster_address(given: str) -> str:
    """host:port of the head: as given, or for "auto" RAY_ADDRESS or the cluster `ray start` last started here.
    Ray's own resolution is asked only for that last case: it looks for this host's address on the way, which on a
    network without a route out prints a warning of its own."""
    if given != "auto":
        return given
    return os.environ.get("RAY_ADDRESS") or canonicalize_bootstrap_address_or_die("auto")


def join_cluster(cfg: Config) -> None:
    """ray.init on the cluster at cfg.ray_address, which must ask for a token unless cfg.allow_open_cluster; every
    way this fails is a ConfigError of one line."""
    try:
        address = cluster_address(cfg.ray_address)
    except (ConnectionError, ValueError) as error:
        raise ConfigError(
            f"no Ray cluster at {cfg.ray_address} ({_first_line(error)}); start one (docs/cluster.md)"
        ) from None
    required = token_required(address)
    if required is False and not cfg.allow_open_cluster:
        raise ConfigError(
            f"the Ray cluster at {address} answers clients without a token: anyone who reaches it can run code on "
            "every node. Start it with token authentication (RAY_AUTH_MODE=token, docs/cluster.md), or pass "
            "--allow-open-cluster on a network no one else can reach"
        )
    if required:
        os.environ.setdefault("RAY_AUTH_MODE", "token")  # this driver sends the token (RAY_AUTH_TOKEN or the file)
    try:
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    except (ConnectionError, ValueError, RuntimeError, RayError) as error:
        token = (
            ": it asks for a token, so give this host the cluster's own (RAY_AUTH_TOKEN, or ~/.ray/auth_token as "
            "`ray get-auth-token` writes it)"
            if required
            else ""
        )
        raise ConfigError(f"cannot join the Ray cluster at {address} ({_first_line(error)}){token}") from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__
