"""Open-loop load on `keep serve` and on a plain Feast path, side by side in one run.

    python bench/serve.py                      # defaults: 25,50,100,200 req/s x 60 s each
    python bench/serve.py --duration 10 --rates 25,100   # a quick look

What it does:

1. builds a synthetic serving world (bench/serving_world.py: dims, behaviours, counters'
   history, 64-d knowledge of users, items and user x category published to the online
   store, a registered downstream model and its serving features) under ``--home``;
2. starts ``keep serve`` (its own process, settings from the world's keep.yaml), waits for
   ``/healthz``, and drives it with the open-loop client bench/_loadgen.py (its own
   process): at each rate, request k leaves at ``k / rate`` seconds whatever the replies,
   and latency counts from that due time, so queueing shows;
3. stops it, starts the plain path -- Feast's own feature server (``feast serve``) and the
   same model behind a minimal endpoint (bench/_plain_endpoint.py, two
   ``/get-online-features`` calls per request) -- and drives it with the same requests;
4. writes ``reports/bench/serve.json``: ``rates``; per path (``project``, ``plain``) lists
   aligned with ``rates`` -- ``p50_ms``, ``p99_ms``, ``errors``, ``achieved_rps``; and
   ``max_rate_p99_under_25ms`` per path (the highest rate with p99 <= 25 ms and no error;
   0 if none).

Every request names one user and 100 candidates (with their categories, so both paths do
the same reads), drawn at random over the whole world, unknown keys included.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.serving_world import FIRST_ITEM, Sizes, item_category, serving_world  # noqa: E402
from keep.core.config import load_settings  # noqa: E402
from keep.store.feast_repo import feast_env  # noqa: E402

PYTHON = sys.executable
BIN = Path(PYTHON).parent


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(check: Any, what: str, proc: subprocess.Popen[bytes], timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode} before it was ready")
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise SystemExit(f"{what} was not ready within {timeout_s} s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        cmd,
        env=env,
        cwd=REPO,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _bodies(sizes: Sizes, n: int, candidates: int, seed: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        items = rng.integers(FIRST_ITEM, FIRST_ITEM + sizes.items + 10, candidates).tolist()
        out.append(
            {
                "user_id": int(rng.integers(1, sizes.users + 10)),
                "item_ids": items,
                "category_ids": [item_category(i, sizes.categories) for i in items],
            }
        )
    return out


def _load(
    url: str, bodies: Path, rates: list[int], duration: float, out: Path
) -> list[dict[str, Any]]:
    subprocess.run(
        [
            PYTHON,
            str(REPO / "bench" / "_loadgen.py"),
            "--url",
            url,
            "--bodies",
            str(bodies),
            "--rates",
            ",".join(str(r) for r in rates),
            "--duration",
            str(duration),
            "--out",
            str(out),
        ],
        check=True,
    )
    return list(json.loads(out.read_text()))


def _max_rate(rates: list[int], steps: list[dict[str, Any]], budget_ms: float) -> int:
    ok = [
        r
        for r, s in zip(rates, steps, strict=True)
        if s["errors"] == 0 and s["p99_ms"] is not None and s["p99_ms"] <= budget_ms
    ]
    return max(ok, default=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--home", type=Path, default=REPO / "var" / "bench" / "serve")
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "bench" / "serve.json")
    parser.add_argument("--rates", default="25,50,100,200")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds per rate")
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--users", type=int, default=50_000)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--categories", type=int, default=20)
    parser.add_argument("--uc-users", type=int, default=20_000)
    parser.add_argument("--samples", type=int, default=200_000)
    parser.add_argument("--online-store", default="sqlite", choices=["sqlite", "redis"])
    parser.add_argument("--budget-ms", type=float, default=25.0)
    parser.add_argument("--keep-world", action="store_true", help="reuse --home if built")
    parser.add_argument(
        "--project-only", action="store_true", help="measure keep serve only (no report written)"
    )
    args = parser.parse_args()
    rates = [int(r) for r in args.rates.split(",")]
    sizes = Sizes(
        users=args.users,
        items=args.items,
        categories=args.categories,
        uc_users=args.uc_users,
        samples=args.samples,
        max_behaviors=70,
    )
    home = args.home.resolve()
    config = home / "keep.yaml"
    redis = None
    if not (args.keep_world and config.exists()):
        if home.exists():
            shutil.rmtree(home)
        home.mkdir(parents=True)
        overrides: dict[str, Any] = {"feast": {"online_store": args.online_store}}
        if args.online_store == "redis":
            from keep.store.redis_server import start

            redis = start(home / "redis")
            overrides["feast"]["redis_connection"] = redis.address
        config.write_text(yaml.safe_dump(overrides))
        settings = load_settings(home=home, **overrides)
        t0 = time.perf_counter()
        print(f"building the serving world under {home} ...", flush=True)
        serving_world(settings, "L1", sizes)
        print(f"  built in {time.perf_counter() - t0:.0f} s", flush=True)
    settings = load_settings(home=home, **yaml.safe_load(config.read_text()))
    env = {**os.environ, "KEEP_HOME": str(home), "KEEP_CONFIG": str(config)}
    bodies_path = home / "bodies.json"
    bodies_path.write_text(json.dumps(_bodies(sizes, 2_000, args.candidates, seed=11)))
    logs = home / "logs"
    logs.mkdir(exist_ok=True)
    results: dict[str, list[dict[str, Any]]] = {}

    # --- this project's path
    port = _port()
    service = _start(
        [str(BIN / "keep"), "serve", "--port", str(port)], env, logs / "keep-serve.log"
    )
    try:
        _wait(
            lambda: httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200,
            "keep serve",
            service,
        )
        print(f"keep serve ready on :{port}; open-loop load ...", flush=True)
        results["project"] = _load(
            f"http://127.0.0.1:{port}/v1/score",
            bodies_path,
            rates,
            args.duration,
            home / "project.json",
        )
    finally:
        _stop(service)

    if args.project_only:
        print(json.dumps(results["project"], indent=1))
        return
    # --- the plain path: feast serve + the same model in a minimal endpoint
    feast_port, plain_port = _port(), _port()
    feast_env_vars = {**env, **feast_env(settings)}
    feast = _start(
        [
            str(BIN / "feast"),
            "-c",
            str(settings.feast.repo_path),
            "serve",
            "-h",
            "127.0.0.1",
            "-p",
            str(feast_port),
        ],
        feast_env_vars,
        logs / "feast-serve.log",
    )
    plain = None
    try:
        _wait(
            lambda: httpx.get(f"http://127.0.0.1:{feast_port}/health").status_code == 200,
            "feast serve",
            feast,
        )
        plain = _start(
            [
                PYTHON,
                str(REPO / "bench" / "_plain_endpoint.py"),
                "--feast-url",
                f"http://127.0.0.1:{feast_port}",
                "--port",
                str(plain_port),
            ],
            env,
            logs / "plain-endpoint.log",
        )
        probe = json.loads(bodies_path.read_text())[0]
        _wait(
            lambda: (
                httpx.post(f"http://127.0.0.1:{plain_port}/v1/score", json=probe).status_code == 200
            ),
            "plain endpoint",
            plain,
        )
        print(f"plain path ready (feast serve :{feast_port}); open-loop load ...", flush=True)
        results["plain"] = _load(
            f"http://127.0.0.1:{plain_port}/v1/score",
            bodies_path,
            rates,
            args.duration,
            home / "plain.json",
        )
    finally:
        if plain is not None:
            _stop(plain)
        _stop(feast)
        if redis is not None:
            from keep.store.redis_server import stop

            stop(redis)

    report: dict[str, Any] = {
        "rates": rates,
        "duration_s": args.duration,
        "candidates": args.candidates,
        "online_store": args.online_store,
        "world": sizes.__dict__,
        "budget_ms": args.budget_ms,
        "cpus": os.cpu_count(),
    }
    for path, steps in results.items():
        report[path] = {
            key: [s[key] for s in steps] for key in ("p50_ms", "p99_ms", "errors", "achieved_rps")
        }
        report[path]["max_ms"] = [s["max_ms"] for s in steps]
    report["max_rate_p99_under_25ms"] = {
        path: _max_rate(rates, steps, args.budget_ms) for path, steps in results.items()
    }
    plain_max = report["max_rate_p99_under_25ms"]["plain"]
    report["max_rate_ratio"] = (
        report["max_rate_p99_under_25ms"]["project"] / plain_max if plain_max else None
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("rates", "project", "plain")}, indent=1))
    print(f"max rate with p99 <= {args.budget_ms} ms: {report['max_rate_p99_under_25ms']}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
