"""Hours of running: the memory (unique set size) of the trainer and every worker, once a minute.

    python benchmarks/soak.py --minutes 30 [main.py flags ...]     # starts a run in its own folder
    python benchmarks/soak.py --minutes 30 --attach PID            # watches a run already going (e.g. a benchmark)

USS (private memory, from /proc/<pid>/smaps_rollup) is what a process alone holds; shared weights and shared
libraries are left out, so a leak shows as growth. Prints a table a minute; the last line is one JSON object with
each process's first and last USS and its growth per hour.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def uss_mib(pid: int) -> float | None:
    """Private (clean + dirty) memory of pid in MiB, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    kib = sum(int(line.split()[1]) for line in text.splitlines() if line.startswith(("Private_Clean", "Private_Dirty")))
    return kib / 1024


def children(pid: int) -> list[int]:
    """Live descendants of pid: the resource tracker, the fork server, and the workers and evaluator it forks."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z":
                parents[int(entry)] = int(fields[1])
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        kids = [child for child, of in parents.items() if of == parent]
        found += kids
        todo += kids
    return sorted(found)


def name_of(pid: int) -> str:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    if b"resource_tracker" in cmdline:
        return "tracker"
    if b"multiprocessing.forkserver" in cmdline:  # the server, or a child forked from it (same command line)
        try:
            parent = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]
            forked = b"multiprocessing.forkserver" in Path(f"/proc/{parent}/cmdline").read_bytes()
        except OSError:
            return "?"
        return "worker" if forked else "server"
    return "trainer"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--interval", type=float, default=60.0, help="seconds between samples")
    parser.add_argument("--attach", type=int, help="pid of a running trainer to watch instead of starting one")
    args, main_flags = parser.parse_known_args()

    run = None
    if args.attach:
        parent = args.attach
    else:
        out = Path(tempfile.mkdtemp(prefix="a3c-soak-"))
        flags = ["--checkpoint-dir", str(out), "--plot-dir", str(out), "--max-seconds", str(args.minutes * 60 + 30)]
        run = subprocess.Popen([sys.executable, "main.py", *main_flags, *flags], cwd=ROOT, stdout=subprocess.DEVNULL)
        parent = run.pid
        print(f"soak: started main.py {' '.join(main_flags)} (pid {parent}), outputs in {out}", flush=True)

    samples: dict[str, list[tuple[float, float]]] = {}
    start = time.monotonic()
    while time.monotonic() - start <= args.minutes * 60 + 1:
        minute = (time.monotonic() - start) / 60
        row = {}
        for pid in [parent, *children(parent)]:
            mib = uss_mib(pid)
            if mib is not None:
                label = f"{name_of(pid)}:{pid}"
                row[label] = mib
                samples.setdefault(label, []).append((minute, mib))
        if not row:
            print("soak: the run has ended", flush=True)
            break
        print(f"{minute:6.1f} min  " + "  ".join(f"{k} {v:7.1f} MiB" for k, v in row.items()), flush=True)
        time.sleep(args.interval)

    if run is not None:
        run.terminate()
        run.wait(timeout=60)
    summary = {}
    for label, points in samples.items():
        (m0, first), (m1, last) = points[0], points[-1]
        hours = max((m1 - m0) / 60, 1e-9)
        summary[label] = {
            "first_mib": round(first, 1),
            "last_mib": round(last, 1),
            "max_mib": round(max(v for _, v in points), 1),
            "minutes": round(m1 - m0, 1),
            "growth_mib_per_hour": round((last - first) / hours, 1) if m1 > m0 else 0.0,
        }
    print(json.dumps({"minutes": args.minutes, "processes": summary}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
