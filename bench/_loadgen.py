"""Open-loop HTTP load: requests leave on a fixed schedule, whatever the replies' speed.

Run as its own process by bench/serve.py::

    python bench/_loadgen.py --url http://127.0.0.1:8087/v1/score --bodies bodies.json \\
        --rates 25,50,100,200 --duration 60 --out result.json

Request ``k`` of a step at rate ``r`` is due at ``t0 + k / r``; its latency is measured
from that due time (not from when it was actually sent), so a server -- or a client --
that falls behind shows its queueing in the latencies instead of silently sending fewer
requests (no coordinated omission). A request unanswered after ``--timeout`` seconds, a
transport error or a non-200 status counts as an error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np


async def _step(
    client: httpx.AsyncClient,
    url: str,
    bodies: list[bytes],
    rate: float,
    duration_s: float,
    timeout_s: float,
    max_inflight: int,
) -> dict[str, Any]:
    n = int(rate * duration_s)
    latencies: list[float] = []
    errors: dict[str, int] = {}
    done_at: list[float] = []
    loop = asyncio.get_running_loop()
    t0 = loop.time() + 0.2

    inflight = 0

    async def one(k: int) -> None:
        nonlocal inflight
        due = t0 + k / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        if inflight >= max_inflight:
            # The server is this far behind: count the request as failed rather than
            # let thousands of waiting connections make the client the bottleneck.
            errors["client_in_flight_cap"] = errors.get("client_in_flight_cap", 0) + 1
            return
        inflight += 1
        try:
            # One deadline for the whole request, waiting for a connection included.
            reply = await asyncio.wait_for(
                client.post(
                    url,
                    content=bodies[k % len(bodies)],
                    headers={"content-type": "application/json"},
                    timeout=timeout_s,
                ),
                timeout_s,
            )
            if reply.status_code != 200:
                errors[str(reply.status_code)] = errors.get(str(reply.status_code), 0) + 1
                return
        except (httpx.HTTPError, TimeoutError) as e:
            errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
            return
        finally:
            inflight -= 1
        now = loop.time()
        latencies.append(now - due)
        done_at.append(now)

    tasks = [asyncio.create_task(one(k)) for k in range(n)]
    # A step ends at most `timeout_s` after its last request was due: what is still
    # unanswered then is cancelled and counted as an error.
    _, pending = await asyncio.wait(tasks, timeout=0.2 + duration_s + timeout_s + 1.0)
    for task in pending:
        task.cancel()
    if pending:
        errors["unfinished"] = errors.get("unfinished", 0) + len(pending)
        await asyncio.gather(*pending, return_exceptions=True)
    span = (max(done_at) - t0) if done_at else duration_s
    lat_ms = np.asarray(latencies) * 1000.0
    return {
        "rate": rate,
        "sent": n,
        "ok": len(latencies),
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "p50_ms": float(np.percentile(lat_ms, 50)) if len(lat_ms) else None,
        "p99_ms": float(np.percentile(lat_ms, 99)) if len(lat_ms) else None,
        "max_ms": float(lat_ms.max()) if len(lat_ms) else None,
        "achieved_rps": len(latencies) / max(span, duration_s),
    }


async def run(
    url: str,
    bodies: list[bytes],
    rates: list[float],
    duration_s: float,
    timeout_s: float,
    max_inflight: int,
) -> list[dict[str, Any]]:
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    async with httpx.AsyncClient(limits=limits, http2=False) as client:
        # Warm the connections and the server before the measured steps.
        for body in bodies[:20]:
            await client.post(url, content=body, headers={"content-type": "application/json"})
        results = []
        for rate in rates:
            started = time.perf_counter()
            result = await _step(client, url, bodies, rate, duration_s, timeout_s, max_inflight)
            result["wall_s"] = time.perf_counter() - started
            print(
                f"  {rate:>6.0f} req/s: p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, "
                f"errors {result['errors']}, achieved {result['achieved_rps']:.1f} req/s",
                flush=True,
            )
            results.append(result)
        return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--bodies", type=Path, required=True, help="JSON list of request bodies")
    parser.add_argument("--rates", default="25,50,100,200")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds per rate")
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument(
        "--max-in-flight",
        type=int,
        default=64,
        help="a due request finding this many unanswered ones fails at once (client cap)",
    )
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    bodies = [json.dumps(b).encode() for b in json.loads(args.bodies.read_text())]
    rates = [float(r) for r in args.rates.split(",")]
    results = asyncio.run(
        run(args.url, bodies, rates, args.duration, args.timeout, args.max_in_flight)
    )
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
