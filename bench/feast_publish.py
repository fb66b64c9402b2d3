"""Knowledge publication vs plain `feast materialize`: rows/s and peak memory, same rows.

For each size N, one lake holds a knowledge snapshot of N user vectors (64 float32 by
default) plus 1,000 item and 1,000 user x category vectors. In separate processes (so peak
RSS is each path's own, measured over the process tree by bench/_common.run_measured):

* project: keep.store.publication.publish_knowledge (chunked Delta reads, pre-built protos,
  online_write_batch per chunk, slot cleared first, pointer switch);
* plain:   FeatureStore.materialize over the same rows into a view of the same kind
  (``user_knowledge_plain_fv``: same source, same single vector feature, online).

Rows/s count the rows each path wrote (N + 2,000 for the project path, N for plain),
timed inside the process (Feast's import time excluded); each path reads a sample of
keys back (in a separate process) and compares them with the lake. Writes
reports/bench/feast_publish.json.

    .venv/bin/python bench/feast_publish.py                       # 100k and 1M, SQLite
    .venv/bin/python bench/feast_publish.py --sizes 20000 --store redis
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import PYTHON, run_measured, write_report  # noqa: E402

DS = dt.date(2026, 1, 1)
LINEAGE = "bench"
SMALL = 1_000
SAMPLE = 200


def _settings(home: Path, store: str, redis: str, chunk: int, dim: int):  # type: ignore[no-untyped-def]
    from keep.core.config import load_settings

    return load_settings(
        home=home,
        feast={
            "online_store": store,
            "redis_connection": redis,
            "publish_chunk_rows": chunk,
        },
        pretrain={"knowledge_dim": dim},
    )


def _vectors(entity: str, start: int, n: int, dim: int) -> np.ndarray:
    rng = np.random.default_rng([{"user": 1, "item": 2, "user_category": 3}[entity], start])
    return rng.standard_normal((n, dim)).astype(np.float32)


def prepare(settings, rows: int) -> None:  # type: ignore[no-untyped-def]
    """Write the snapshot (in 100k-row appends: memory flat) and the (empty-ish) stats."""
    import pyarrow as pa
    from deltalake import write_deltalake

    from keep.core.tables import knowledge_spec, stats_spec
    from keep.lake.delta import table_path

    dim = settings.pretrain.knowledge_dim
    ts = dt.datetime(2026, 1, 2, tzinfo=dt.UTC)
    for entity, n in (("user", rows), ("item", SMALL), ("user_category", SMALL)):
        spec = knowledge_spec(entity)
        schema = spec.schema
        for start in range(0, n, 100_000):
            m = min(100_000, n - start)
            ids = np.arange(start, start + m, dtype=np.int64)
            cols = {
                "user_id": ids,
                "item_id": ids,
                "category_id": ids % 50,
            }
            vec = _vectors(entity, start, m, dim)
            arrays = {}
            for f in schema:
                if f.name in cols:
                    arrays[f.name] = pa.array(cols[f.name])
                elif f.name == "vector":
                    arrays[f.name] = pa.FixedSizeListArray.from_arrays(
                        pa.array(vec.ravel()), dim
                    ).cast(f.type)
                elif f.name == "recomputed":
                    arrays[f.name] = pa.array(np.ones(m, bool))
                elif f.name == "event_timestamp":
                    arrays[f.name] = pa.array([ts] * m, f.type)
                elif f.name == "knowledge_lineage":
                    arrays[f.name] = pa.array([LINEAGE] * m)
                elif f.name == "snapshot_ds":
                    arrays[f.name] = pa.array([DS.isoformat()] * m)
            if entity == "user_category":
                arrays["user_id"] = pa.array(ids // 50)
            table = pa.table([arrays[f.name] for f in schema], schema=schema)
            write_deltalake(
                str(table_path(settings, spec)),
                table,
                mode="append",
                partition_by=list(spec.partition_by),
            )
    for entity in ("user", "item", "user_category"):
        spec = stats_spec(entity, settings.aggregate.windows)
        schema = spec.schema
        write_deltalake(
            str(table_path(settings, spec)),
            schema.empty_table(),
            mode="append",
            partition_by=["ds"],
        )


def _expected_user(settings, keys: np.ndarray) -> dict[int, np.ndarray]:  # type: ignore[no-untyped-def]
    dim = settings.pretrain.knowledge_dim
    out = {}
    for k in keys:
        start = int(k) // 100_000 * 100_000
        out[int(k)] = _vectors("user", start, int(k) - start + 1, dim)[-1]
    return out


def _check(settings, store, view_name: str, rows: int) -> int:  # type: ignore[no-untyped-def]
    keys = np.random.default_rng(1).choice(rows, size=min(SAMPLE, rows), replace=False)
    got = store.get_online_features(
        features=[f"{view_name}:u_knowledge"], entity_rows=[{"user_id": int(k)} for k in keys]
    ).to_dict()["u_knowledge"]
    expected = _expected_user(settings, keys)
    bad = sum(
        1
        for k, v in zip(keys, got, strict=True)
        if v is None or not np.array_equal(np.asarray(v, np.float32), expected[int(k)])
    )
    return bad


def child(mode: str, settings, rows: int) -> dict[str, object]:  # type: ignore[no-untyped-def]
    from keep.core.feast_names import slot_view_name
    from keep.store.feast_repo import apply_repo, get_store
    from keep.store.publication import publish_knowledge

    if mode == "prepare":
        prepare(settings, rows)
        apply_repo(settings)
        return {}
    if mode == "project":
        store = get_store(settings)
        began = time.perf_counter()
        info = publish_knowledge(settings, DS, LINEAGE, gate=True, store=store)
        wall = time.perf_counter() - began
        written = sum(info["rows"].values())  # type: ignore[union-attr]
        return {"wall_s": wall, "rows": written, "view": slot_view_name("user", str(info["slot"]))}
    if mode.startswith("check:"):
        # A separate process: Feast's get_online_features alone peaks at ~2.5 GB here, which
        # would otherwise swamp the write paths' memory figures.
        return {"bad": _check(settings, get_store(settings), mode.split(":", 1)[1], rows)}
    # plain: the same rows through Feast's own materialization into a view of the same kind
    from feast import FeatureView

    store = get_store(settings)
    slot = store.get_feature_view(slot_view_name("user", "blue"))
    plain = FeatureView(
        name="user_knowledge_plain_fv",
        entities=[store.get_entity("user")],
        ttl=slot.ttl,
        schema=slot.schema,
        source=slot.batch_source,
        online=True,
        description="Benchmark only: the user slot view, materialized the plain way.",
        owner="bench",
        tags={"bench": "feast_publish"},
    )
    store.apply([plain])
    began = time.perf_counter()
    store.materialize(
        dt.datetime(2025, 12, 30, tzinfo=dt.UTC),
        dt.datetime(2026, 1, 3, tzinfo=dt.UTC),
        feature_views=["user_knowledge_plain_fv"],
    )
    wall = time.perf_counter() - began
    return {"wall_s": wall, "rows": rows, "view": "user_knowledge_plain_fv"}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--store", choices=["sqlite", "redis"], default="sqlite")
    ap.add_argument(
        "--chunk", type=int, default=None, help="publish_chunk_rows (default: settings)"
    )
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--skip-plain-above", type=int, default=None, help="no plain run above N rows")
    ap.add_argument("--child", help=argparse.SUPPRESS)  # prepare | project | plain | check:VIEW
    ap.add_argument("--home", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--rows", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--redis", default="127.0.0.1:6379", help=argparse.SUPPRESS)
    args = ap.parse_args()

    from keep.core.config import FeastSettings

    chunk = args.chunk or FeastSettings().publish_chunk_rows
    if args.child:
        settings = _settings(args.home, args.store, args.redis, chunk, args.dim)
        print("RESULT " + json.dumps(child(args.child, settings, args.rows)))
        return

    from keep.store import redis_server

    report: dict[str, list] = {
        k: []
        for k in (
            "sizes",
            "project_rows_per_s",
            "plain_rows_per_s",
            "speedup",
            "project_peak_rss_mb",
            "plain_peak_rss_mb",
            "project_wall_s",
            "plain_wall_s",
        )
    }
    for rows in args.sizes:
        root = Path(tempfile.mkdtemp(prefix="keep-bench-feast-"))
        server = redis_server.start(root / "redis") if args.store == "redis" else None
        try:
            redis = server.connection_string if server else "127.0.0.1:6379"

            def run(mode: str, home: Path, rows: int = rows, redis: str = redis):  # type: ignore[no-untyped-def]
                cmd = [
                    PYTHON,
                    __file__,
                    "--child",
                    mode,
                    "--home",
                    str(home),
                    "--rows",
                    str(rows),
                    "--store",
                    args.store,
                    "--redis",
                    redis,
                    "--chunk",
                    str(chunk),
                    "--dim",
                    str(args.dim),
                ]
                m = run_measured(cmd, timeout=7200)
                line = next(x for x in m.output.splitlines() if x.startswith("RESULT "))
                return m, json.loads(line[len("RESULT ") :])

            results = {}
            for mode in ("project", "plain"):
                if mode == "plain" and args.skip_plain_above and rows > args.skip_plain_above:
                    results[mode] = None
                    continue
                home = root / mode
                if server is not None:
                    import redis as redis_py

                    redis_py.Redis(host=server.host, port=server.port).flushall()
                run("prepare", home)
                m, out = run(mode, home)
                _, checked = run(f"check:{out['view']}", home)
                if checked["bad"]:
                    raise SystemExit(
                        f"{mode} at {rows}: {out['bad']} sampled keys differ from the lake"
                    )
                results[mode] = (m, out)
                print(
                    f"{rows:>9} {mode:8} {out['rows'] / out['wall_s']:>10.0f} rows/s  "
                    f"{out['wall_s']:.1f} s  peak {m.peak_pss_mb:.0f} MB",
                    flush=True,
                )
        finally:
            if server is not None:
                redis_server.stop(server)
            shutil.rmtree(root, ignore_errors=True)
        proj_m, proj = results["project"]
        report["sizes"].append(rows)
        report["project_rows_per_s"].append(round(proj["rows"] / proj["wall_s"], 1))
        report["project_peak_rss_mb"].append(round(proj_m.peak_pss_mb, 1))
        report["project_wall_s"].append(round(proj["wall_s"], 2))
        if results["plain"] is None:
            for k in ("plain_rows_per_s", "plain_peak_rss_mb", "plain_wall_s", "speedup"):
                report[k].append(None)
            continue
        plain_m, plain = results["plain"]
        plain_rate = plain["rows"] / plain["wall_s"]
        report["plain_rows_per_s"].append(round(plain_rate, 1))
        report["plain_peak_rss_mb"].append(round(plain_m.peak_pss_mb, 1))
        report["plain_wall_s"].append(round(plain["wall_s"], 2))
        report["speedup"].append(round(proj["rows"] / proj["wall_s"] / plain_rate, 2))
    report["store"] = args.store  # type: ignore[assignment]
    report["chunk_rows"] = chunk  # type: ignore[assignment]
    report["dim"] = args.dim  # type: ignore[assignment]
    write_report("feast_publish", report)


if __name__ == "__main__":
    main()
