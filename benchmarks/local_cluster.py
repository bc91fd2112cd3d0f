"""Run a command on a Ray cluster of this one machine, on loopback only: `python benchmarks/local_cluster.py
[--nodes 2] [--cpus 1] [--no-auth] -- COMMAND...`.

Ray advertises the machine's interface address even when told 127.0.0.1, so the cluster runs in fresh network and
process namespaces (unshare, as root): only loopback exists there, and `ray stop` sees only this cluster's
processes. Each node gets its own temp dir and --num-cpus. The command runs inside, with RAY_ADDRESS set to the
head and A3C_RAY_NODE_DIRS to the nodes' temp dirs (a test kills a node's raylet by its dir). The head checks
nodes' health every 0.5 s, so a killed node is declared dead in seconds instead of Ray's default 15 or so.
The cluster uses token authentication, as docs/cluster.md starts one: a fresh random token in RAY_AUTH_TOKEN for
every node and for the command. --no-auth starts it without (RAY_AUTH_MODE=disabled), to show that a3c refuses it.
Exits with the command's status.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time

INSIDE = "A3C_LOCAL_CLUSTER_INSIDE"
PORT = 6390
# A node is declared dead after 3 missed health checks 0.5 s apart (a3c's host-loss test waits for it).
HEAD_ENV = {"RAY_health_check_period_ms": "500", "RAY_health_check_failure_threshold": "3"}


def ray_start(args: list[str], env: dict[str, str]) -> None:
    done = subprocess.run(["ray", "start", *args], capture_output=True, text=True, env=env, timeout=300)
    if done.returncode != 0:
        raise SystemExit(
            f"local_cluster: ray start {' '.join(args)} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
        )


def wait_for_nodes(address: str, count: int, env: dict[str, str]) -> None:
    """Until Ray lists count live nodes (a node that has started may take a moment to register)."""
    script = (
        f"import ray; ray.init(address={address!r}, logging_level='error'); print(sum(n['Alive'] for n in ray.nodes()))"
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
        if done.stdout.strip().isdigit() and int(done.stdout.strip()) >= count:
            return
        time.sleep(1.0)
    raise SystemExit(f"local_cluster: {count} nodes did not come up")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--cpus", type=int, default=1, help="--num-cpus of each node")
    parser.add_argument("--no-auth", action="store_true", help="start the cluster without token authentication")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command after --")
    if os.environ.get(INSIDE) != "1":
        if shutil.which("unshare") is None:
            raise SystemExit("local_cluster: needs unshare (util-linux) and root")
        env = {**os.environ, INSIDE: "1"}
        inner = ["unshare", "--net", "--pid", "--fork", "--mount-proc", sys.executable, *sys.argv]
        return subprocess.run(inner, env=env).returncode

    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    root = tempfile.mkdtemp(prefix="a3c-ray-")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    if args.no_auth:
        env |= {"RAY_AUTH_MODE": "disabled"}
    else:
        env |= {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    address = f"127.0.0.1:{PORT}"
    dirs = [os.path.join(root, f"node{i}") for i in range(args.nodes)]
    common = ["--node-ip-address", "127.0.0.1", "--num-cpus", str(args.cpus), "--disable-usage-stats"]
    try:
        ray_start(
            ["--head", "--port", str(PORT), "--include-dashboard", "false", "--temp-dir", dirs[0], *common],
            {**env, **HEAD_ENV},
        )
        for node_dir in dirs[1:]:
            ray_start(["--address", address, "--temp-dir", node_dir, *common], env)
        wait_for_nodes(address, args.nodes, env)
        inner_env = {**env, "RAY_ADDRESS": address, "A3C_RAY_NODE_DIRS": os.pathsep.join(dirs)}
        return subprocess.run(command, env=inner_env).returncode
    finally:
        subprocess.run(["ray", "stop", "--force"], capture_output=True, env=env, timeout=120)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
