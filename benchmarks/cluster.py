"""What the Ray cluster mode costs: run inside a cluster, e.g. on this machine
`python benchmarks/local_cluster.py --nodes 1 --cpus 2 -- python benchmarks/cluster.py`.

1. Overhead: frames/s of one host through Ray (`main.py --ray-address ... --workers-per-host N`) against the local
   trainer (`main.py --n-workers N`) on the same cores, alternated A B A B. The rate is the progress line's
   (frames over its last 10 s), median over the lines after --warmup seconds, so start-up is left out of both.
2. Traffic: bytes per second per host, as the driver logs them at the end of the cluster runs.
3. The exchanges per second one GlobalModel actor absorbs: --callers loops, each sending a fresh delta of the
   game's network size and taking the weights back, as hosts do, as fast as they can.
4. Where one GlobalModel saturates (--fake-hosts 8,32,128): that many fake hosts each exchange once a second, as
   hosts at the default --exchange-interval do; served exchanges/s, reply times and the head's traffic for each.
   --pairs 0 leaves out 1 and 2.
Prints a table; the last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

RATE = re.compile(r"\| ([\d,.]+) f/s \|.*\| (\d+):(\d\d):(\d\d)$")
TRAFFIC = re.compile(r"host (\d+): (\d+) exchanges \(([\d.]+)/s\), ([\d.]+) MB/s in and out")


def run_main(flags: list[str], seconds: float, out: Path) -> tuple[list[float], list[dict[str, float]], str]:
    """One main.py run: its progress-line rates with the elapsed seconds of each, and the hosts' traffic lines."""
    argv = [sys.executable, str(REPO_ROOT / "main.py"), *flags, "--max-seconds", str(seconds)]
    argv += ["--checkpoint-dir", str(out / "ck"), "--plot-dir", str(out / "pl"), "--save-interval", "1000"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 300, cwd=REPO_ROOT)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    rates = []
    for line in done.stdout.splitlines():
        match = RATE.search(line)
        if match:
            elapsed = int(match[2]) * 3600 + int(match[3]) * 60 + int(match[4])
            rates.append((elapsed, float(match[1].replace(",", ""))))
    traffic = [
        {"host": int(m[1]), "exchanges": int(m[2]), "exchanges_per_s": float(m[3]), "mb_per_s": float(m[4])}
        for m in TRAFFIC.finditer(done.stderr)
    ]
    return rates, traffic, done.stdout


def steady_rate(rates: list[tuple[int, float]], warmup_s: float) -> float:
    after = [rate for elapsed, rate in rates if elapsed >= warmup_s]
    if not after:
        raise SystemExit(f"no progress line after {warmup_s} s: run longer (--seconds)")
    return statistics.median(after)


def start_global_model(env_name: str) -> tuple[object, np.ndarray]:
    """A GlobalModel actor holding this game's network, started and answering, and the weights it holds."""
    import ray

    from a3c.cluster import GlobalModel, flat_weights
    from a3c.config import build_config
    from a3c.envs import env_spaces
    from a3c.model import build_model

    cfg = build_config({"env_name": env_name})
    model, _ = build_model(cfg, *env_spaces(cfg))
    weights = flat_weights(model).numpy()
    global_model = ray.remote(GlobalModel).options(num_cpus=0).remote(weights, 0)
    ray.get(global_model.get.remote())
    return global_model, weights


def absorb(env_name: str, callers: int, seconds: float) -> dict[str, float]:
    """Exchanges per second one GlobalModel takes from `callers` loops sending fresh deltas of this game's network."""
    import ray

    global_model, weights = start_global_model(env_name)
    rng = np.random.default_rng(0)
    deltas = [rng.standard_normal(weights.size).astype(np.float32) * 1e-6 for _ in range(callers * 2)]
    in_flight = {global_model.exchange.remote(deltas[i], 1): i for i in range(callers)}
    done, start = 0, time.monotonic()
    while time.monotonic() - start < seconds:
        ready, _ = ray.wait(list(in_flight), num_returns=1)
        for ref in ready:
            i = in_flight.pop(ref)
            ray.get(ref)
            done += 1
            j = (i + callers) % len(deltas)
            in_flight[global_model.exchange.remote(deltas[j], 1)] = j
    elapsed = time.monotonic() - start
    ray.get(list(in_flight))
    return {"parameters": int(weights.size), "callers": callers, "exchanges_per_s": round(done / elapsed, 1)}


def saturation(env_name: str, hosts: int, seconds: float) -> dict[str, float]:
    """`hosts` fake hosts, each sending a delta of this game's network to one GlobalModel once a second (a host at
    the default --exchange-interval), staggered over the second, one exchange in flight each, for `seconds`. The
    deltas are put in the object store once, so this process's own serialising does not limit the rate; the replies
    (the global weights) are not fetched. Served below 95% of offered, or a p99 reply slower than the interval, is
    saturation."""
    import ray

    global_model, weights = start_global_model(env_name)
    rng = np.random.default_rng(0)
    deltas = [ray.put(rng.standard_normal(weights.size).astype(np.float32) * 1e-6) for _ in range(8)]
    start = time.monotonic()
    due = {host: start + host / hosts for host in range(hosts)}  # host -> when it sends next
    in_flight: dict[object, tuple[int, float]] = {}  # reply -> (host, sent at)
    latencies: list[float] = []
    while True:
        now = time.monotonic()
        if now - start >= seconds:
            break
        for host, when in list(due.items()):
            if when <= now:
                del due[host]
                in_flight[global_model.exchange.remote(deltas[host % len(deltas)], 1)] = (host, now)
        wait_s = max(0.0, min(due.values(), default=now + 0.05) - time.monotonic())
        if not in_flight:
            time.sleep(wait_s)
            continue
        ready, _ = ray.wait(list(in_flight), num_returns=len(in_flight), timeout=wait_s, fetch_local=False)
        for ref in ready:
            host, sent = in_flight.pop(ref)
            done_at = time.monotonic()
            latencies.append(done_at - sent)
            due[host] = max(sent + 1.0, done_at)
    elapsed = time.monotonic() - start
    ray.get(list(in_flight), timeout=60)
    ray.kill(global_model)
    served = len(latencies) / elapsed
    latencies.sort()
    p50 = latencies[len(latencies) // 2] if latencies else float("nan")
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else float("nan")
    return {
        "hosts": hosts,
        "offered_per_s": float(hosts),
        "served_per_s": round(served, 1),
        "reply_p50_ms": round(p50 * 1e3, 1),
        "reply_p99_ms": round(p99 * 1e3, 1),
        "saturated": served < 0.95 * hosts or p99 > 1.0,
        "head_mb_per_s": round(served * 2 * weights.nbytes / 1e6, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env-name", default="PongNoFrameskip-v4")
    parser.add_argument("--workers", type=int, default=2, help="workers of the one host, and of the local run")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each run")
    parser.add_argument("--warmup", type=float, default=20.0, help="seconds of each run left out of its rate")
    parser.add_argument("--pairs", type=int, default=2, help="local/cluster pairs, alternated")
    parser.add_argument("--callers", type=int, default=4)
    parser.add_argument("--absorb-seconds", type=float, default=15.0)
    parser.add_argument(
        "--fake-hosts",
        default="",
        help="comma-separated host counts: for each, that many fake hosts exchange with one GlobalModel once a second",
    )
    parser.add_argument("--fake-host-seconds", type=float, default=20.0)
    args = parser.parse_args()
    address = os.environ.get("RAY_ADDRESS")
    if not address:
        raise SystemExit(
            "run inside a cluster: python benchmarks/local_cluster.py --nodes 1 --cpus 2 -- python " + __file__
        )

    local_rates, cluster_rates, traffic = [], [], []
    with tempfile.TemporaryDirectory(prefix="a3c-cluster-bench-") as tmp:
        for pair in range(args.pairs):
            rates, _, _ = run_main(
                ["--env-name", args.env_name, "--n-workers", str(args.workers)], args.seconds, Path(tmp) / f"l{pair}"
            )
            local_rates.append(steady_rate(rates, args.warmup))
            cluster_flags = ["--env-name", args.env_name, "--ray-address", address]
            cluster_flags += ["--workers-per-host", str(args.workers)]
            rates, host_traffic, _ = run_main(cluster_flags, args.seconds, Path(tmp) / f"c{pair}")
            cluster_rates.append(steady_rate(rates, args.warmup))
            traffic += host_traffic
            print(
                f"pair {pair + 1}: local {local_rates[-1]:,.0f} f/s, one host through Ray {cluster_rates[-1]:,.0f} f/s"
            )

    import ray

    ray.init(address=address, log_to_driver=False, logging_level="error")
    try:
        capacity = absorb(args.env_name, args.callers, args.absorb_seconds)
        loads = [saturation(args.env_name, int(n), args.fake_host_seconds) for n in args.fake_hosts.split(",") if n]
    finally:
        ray.shutdown()
    for load in loads:
        print(
            f"{load['hosts']:>4} fake hosts at 1 exchange/s: {load['served_per_s']:,.1f} served/s, replies in "
            f"{load['reply_p50_ms']:,.0f} ms (p99 {load['reply_p99_ms']:,.0f} ms), the head's traffic "
            f"{load['head_mb_per_s']:,.0f} MB/s{', saturated' if load['saturated'] else ''}"
        )
    ratio = statistics.median(cluster_rates) / statistics.median(local_rates) if local_rates else float("nan")
    mb_per_s = statistics.median(t["mb_per_s"] for t in traffic) if traffic else float("nan")
    if local_rates:  # --pairs 0 measures only the GlobalModel
        print(
            f"\n{args.env_name}, {args.workers} workers: local {statistics.median(local_rates):,.0f} f/s, one host "
            f"through Ray {statistics.median(cluster_rates):,.0f} f/s ({ratio:.3f} of local, overhead "
            f"{(1 - ratio) * 100:.1f}%)"
        )
        print(f"traffic per host: {mb_per_s:.2f} MB/s in and out ({len(traffic)} host runs)")
    print(
        f"one GlobalModel absorbs {capacity['exchanges_per_s']:,.1f} exchanges/s of {capacity['parameters']:,} "
        f"parameters from {capacity['callers']} callers"
    )
    summary = {
        "env_name": args.env_name,
        "workers": args.workers,
        "seconds": args.seconds,
        "warmup_s": args.warmup,
        "local_frames_per_s": local_rates,
        "cluster_frames_per_s": cluster_rates,
        "cluster_over_local": round(ratio, 4),
        "traffic": traffic,
        "mb_per_s_per_host": mb_per_s,
        "absorb": capacity,
        "fake_hosts": loads,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
