"""Shared benchmark helpers: timed subprocesses with peak memory of the whole process tree.

Peak memory is the proportional set size (PSS) of the process and all its descendants (for
Spark jobs that includes the JVM child and Spark's forked Python workers), summed per
sample every 200 ms; the figure reported is the largest sum. PSS charges a page shared by
n processes 1/n to each, so pages shared between a parent and its forked children (Spark's
Python workers, torch's DataLoader workers) are counted once, not once per process as a sum
of resident set sizes would.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


@dataclass
class Measured:
    wall_s: float
    peak_pss_mb: float
    output: str


def tree_pss(proc: psutil.Process) -> int:
    """Proportional set size of ``proc`` and its descendants, in bytes (Linux smaps)."""
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            total += p.memory_full_info().pss
    return total


def run_measured(
    cmd: list[str],
    env: dict[str, str] | None = None,
    timeout: float = 3600,
    echo: Callable[[str], bool] | None = None,
) -> Measured:
    """Run ``cmd``; return wall time and the peak PSS of its process tree.

    ``echo``: print the child's output lines for which it is true as they come (long runs
    show their progress); the output kept is then the last 200 lines.
    """
    full_env = {**os.environ, **(env or {})}
    began = time.perf_counter()
    proc = subprocess.Popen(
        cmd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO
    )
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        ps = psutil.Process(proc.pid)
        while not stop.is_set():
            try:
                peak = max(peak, tree_pss(ps))
            except psutil.Error:
                return
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    if echo is None:
        output, _ = proc.communicate(timeout=timeout)
    else:
        tail: list[str] = []
        assert proc.stdout is not None
        for line in proc.stdout:
            tail = [*tail[-200:], line]
            if echo(line):
                print(f"  | {line}", end="", flush=True)
        proc.wait(timeout=timeout)
        output = "".join(tail)
    wall = time.perf_counter() - began
    stop.set()
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{output[-3000:]}")
    return Measured(wall_s=wall, peak_pss_mb=peak / 2**20, output=output)


def write_report(name: str, figures: dict[str, object]) -> Path:
    out = REPO / "reports" / "bench" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
    print(f"written to {out}")
    return out


def cpu_probe(repeats: int = 3) -> float:
    """Seconds for a fixed single-threaded CPython loop (10 million additions), the median
    of ``repeats``: a yardstick of this machine's speed at the time of a run, reported beside
    absolute timings so that runs on different days (or hosts) can be compared."""
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        total = 0
        for i in range(10_000_000):
            total += i
        times.append(time.perf_counter() - began)
    return round(sorted(times)[len(times) // 2], 2)
