"""Bad input at the command line: every case exits non-zero with one line that names the
problem (and what to do), never a traceback, and leaves the lake as it was.

Each case runs the installed ``keep`` command in its own process, as a user would, against
one KEEP home whose lake holds a real Delta table (written with delta-rs: no Spark is
needed, and none of these cases may start it). The cases cover the settings (file and
environment), the command line, the raw landing folder and the order of the daily steps.
"""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import write_deltalake

from keep.core.tables import IMPRESSIONS

KEEP = Path(sys.executable).parent / "keep"
GOOD_LINE = (
    '{"impression_id": "i1", "user_id": "1", "item_id": "2", "event_time": '
    '"2026-01-01T10:00:00Z", "scenario": "ads", "position": "0", "click": "0", '
    '"cart": "0", "purchase": "0"}\n'
)


@dataclass(frozen=True)
class Case:
    name: str
    argv: list[str]
    expect: str  # a fragment of the one error line
    env: dict[str, str] = field(default_factory=dict)
    yaml: str | None = None  # keep.yaml content (None: no keep.yaml)
    raw: dict[str, bytes] = field(default_factory=dict)  # raw impression file -> bytes
    usage: bool = False  # a usage error (click prints "Usage:" and "Try ..." around it)


def _ingest(day: int, raw: dict[str, bytes], expect: str, name: str) -> Case:
    return Case(name, ["ingest", "--ds", f"2026-02-{day:02d}"], expect, raw=raw)


GZ = gzip.compress(GOOD_LINE.encode() * 2000)

CASES = [
    # ------------------------------------------------------------------ dates and ranges
    Case(
        "reversed generate range",
        ["generate", "--start", "2026-01-05", "--end", "2026-01-01"],
        "end 2026-01-01 is before start 2026-01-05",
    ),
    Case(
        "reversed backfill range",
        ["backfill", "--start", "2026-01-05", "--end", "2026-01-01"],
        "end 2026-01-01 is before start 2026-01-05",
    ),
    Case(
        "reversed training-set range",
        ["training-set", "--start", "2026-01-05", "--end", "2026-01-01"],
        "end 2026-01-01 is before start 2026-01-05",
    ),
    Case(
        "impossible date", ["ingest", "--ds", "2026-13-01"], "Invalid value for '--ds'", usage=True
    ),
    Case(
        "date in another format",
        ["ingest", "--ds", "01/02/2026"],
        "does not match the formats '%Y-%m-%d'",
        usage=True,
    ),
    Case("missing day", ["ingest"], "Missing option '--ds'", usage=True),
    Case("unknown command", ["frobnicate"], "No such command 'frobnicate'", usage=True),
    # ------------------------------------------------------------------ what is asked for
    Case(
        "unknown lineage",
        ["training-set", "--start", "2026-01-01", "--lineage", "nope"],
        "unknown knowledge lineage 'nope'",
    ),
    Case(
        "missing KEEP home",
        ["ingest", "--ds", "2026-01-01"],
        "does not exist",
        env={"KEEP_HOME": "/nonexistent/keep-home"},
    ),
    Case(
        "a day without bronze",
        ["aggregate", "--ds", "2026-01-03"],
        "bronze.impressions has no partition 2026-01-03: run `keep ingest --ds 2026-01-03`",
    ),
    Case(
        "backfill from a day without bronze",
        ["backfill", "--start", "2026-01-04"],
        "bronze.impressions has no partition 2026-01-04",
    ),
    Case(
        "samples without bronze",
        ["samples", "--ds", "2026-01-05"],
        "bronze.impressions has no partition 2026-01-05",
    ),
    Case(
        "publish without pre-training", ["publish", "--ds", "2026-01-01"], "no pre-training lineage"
    ),
    Case("rollback with nothing published", ["rollback"], "nothing has been published"),
    # ------------------------------------------------------------------ settings
    Case(
        "malformed keep.yaml",
        ["config"],
        "is not valid YAML",
        yaml="spark:\n  shuffle_partitions: [1\n",
    ),
    Case(
        "keep.yaml that is a list",
        ["config"],
        "must be a mapping of sections",
        yaml="- spark\n- lake\n",
    ),
    Case(
        "misspelt setting in keep.yaml",
        ["config"],
        "spark.shufle_partitions (KEEP_SPARK__SHUFLE_PARTITIONS): Extra inputs",
        yaml="spark:\n  shufle_partitions: 2\n",
    ),
    Case(
        "a KEEP_* value of the wrong type",
        ["config"],
        "spark.shuffle_partitions (KEEP_SPARK__SHUFFLE_PARTITIONS): Input should be a valid "
        "integer",
        env={"KEEP_SPARK__SHUFFLE_PARTITIONS": "many"},
    ),
    Case(
        "a KEEP_* boolean that is not one",
        ["config"],
        "airflow.demo_mode",
        env={"KEEP_AIRFLOW__DEMO_MODE": "perhaps"},
    ),
    Case(
        "zero impressions a day",
        ["generate", "--start", "2026-01-01"],
        "generator.impressions_per_day (KEEP_GENERATOR__IMPRESSIONS_PER_DAY): Input should "
        "be greater than 0",
        env={"KEEP_GENERATOR__IMPRESSIONS_PER_DAY": "0"},
    ),
    Case(
        "negative user count",
        ["generate", "--start", "2026-01-01"],
        "generator.n_users (KEEP_GENERATOR__N_USERS): Input should be greater than 0",
        env={"KEEP_GENERATOR__N_USERS": "-5"},
    ),
    Case(
        "zero batch size", ["config"], "pretrain.batch_size", env={"KEEP_PRETRAIN__BATCH_SIZE": "0"}
    ),
    Case(
        "port out of range",
        ["config"],
        "serve.port (KEEP_SERVE__PORT): Input should be less than or equal to 65535",
        env={"KEEP_SERVE__PORT": "70000"},
    ),
    # ------------------------------------------------------------------ raw landing folder
    _ingest(1, {}, "No raw impression files for 2026-02-01", "raw folder with no files"),
    _ingest(
        2,
        {"part-0.jsonl.gz": GZ[: len(GZ) // 2]},
        "truncated or corrupt gzip",
        "truncated .jsonl.gz",
    ),
    _ingest(3, {"part-0.jsonl": b""}, "empty file (0 bytes)", "empty file"),
    _ingest(
        4,
        {"part-0.jsonl": GOOD_LINE.encode() + b'{"impression_id": "\xff\xfe"}\n'},
        "not UTF-8 text (byte 0xff at offset",
        "non-UTF-8 file",
    ),
    _ingest(
        5,
        {"part-0.jsonl": b'{"x": "' + b"a" * 10_000_000 + b'"}\n'},
        "line 1 is longer than ingest.max_line_bytes",
        "10 MB single line",
    ),
    _ingest(
        6,
        {"part-0.parquet": b"PAR1" + b"\0" * 100},
        "not a complete Parquet file",
        "truncated Parquet file",
    ),
    _ingest(
        7,
        {"part-0.csv.gz": b"not gzip at all"},
        "truncated or corrupt gzip",
        "a .gz that is not gzip",
    ),
]


def _lake_checksum(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A KEEP home whose lake holds a real Delta table: bronze.impressions, 2026-01-01."""
    home = tmp_path_factory.mktemp("home")
    rows = [
        {
            "impression_id": f"i{i}",
            "user_id": i % 7,
            "item_id": i % 5,
            "event_time": dt.datetime(2026, 1, 1, 10, tzinfo=dt.UTC),
            "scenario": "ads",
            "position": 0,
            "click": i % 2,
            "cart": 0,
            "purchase": 0,
            "ds": "2026-01-01",
        }
        for i in range(20)
    ]
    table = pa.Table.from_pylist(rows, schema=IMPRESSIONS.schema)
    write_deltalake(
        str(home / "var" / "lake" / "bronze" / "impressions"), table, partition_by=["ds"]
    )
    return home


def _run(case: Case, home: Path, workdir: Path) -> subprocess.CompletedProcess[str]:
    workdir.mkdir()
    for name, data in case.raw.items():
        folder = home / "var" / "raw" / "impressions" / f"ds={case.argv[2]}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    if not case.raw and case.name == "raw folder with no files":
        (home / "var" / "raw" / "impressions" / f"ds={case.argv[2]}").mkdir(parents=True)
    if case.yaml is not None:
        (workdir / "keep.yaml").write_text(case.yaml)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEEP_")}
    env.update({"KEEP_HOME": str(home), "KEEP_CONFIG": str(workdir / "keep.yaml")})
    env.update(case.env)
    return subprocess.run(
        [str(KEEP), *case.argv],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cases_are_many_and_distinct() -> None:
    assert len(CASES) >= 20
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.slow
def test_bad_input_gets_one_clear_line_and_leaves_the_lake_alone(
    home: Path, tmp_path: Path
) -> None:
    lake = home / "var" / "lake"
    before = _lake_checksum(lake)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(
            pool.map(lambda ic: _run(ic[1], home, tmp_path / f"case{ic[0]}"), enumerate(CASES))
        )
    problems = []
    for case, result in zip(CASES, results, strict=True):
        output = (result.stdout + result.stderr).strip()
        lines = [line for line in output.splitlines() if line.strip()]
        errors = [line for line in lines if line.lower().startswith("error:")]
        print(f"{case.name:40s} rc={result.returncode}  {errors[0] if errors else output!r}")
        ok = (
            result.returncode != 0
            and "Traceback" not in output
            and len(errors) == 1
            and case.expect in errors[0]
            # Ours is the only line; click's usage errors add "Usage: ..." and "Try ...".
            and (len(lines) == 1 if not case.usage else len(lines) == 3)
        )
        if not ok:
            problems.append(f"{case.name}: rc={result.returncode}\n{output[-2000:]}")
    assert not problems, "\n\n".join(problems)
    assert _lake_checksum(lake) == before
    assert not (lake / "silver").exists()  # nothing aggregated
