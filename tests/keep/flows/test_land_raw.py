"""``land_raw``: synthetic raw files only when demo mode is explicitly on.

Demo mode off (the default): nothing is written, the landed files are checked. Demo mode
on: the generator writes the day, unless the day's raw folders hold files it did not write.
No Spark: the step only touches files.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from keep.core.config import AirflowSettings, Settings
from keep.core.errors import InputError
from keep.flows import pipeline
from keep.lake import raw_format
from tests.conftest import make_settings

DS = dt.date(2026, 1, 1)


def files_under(root: Path) -> dict[Path, int]:
    """Every file under ``root`` (hidden ones too) with its mtime in ns."""
    if not root.exists():
        return {}
    return {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def demo_off(home: Path) -> Settings:
    return make_settings(home, airflow={"demo_mode": False})


def test_demo_mode_is_off_by_default() -> None:
    assert AirflowSettings().demo_mode is False


def test_demo_off_without_files_fails_with_one_clear_line_and_writes_nothing(
    tmp_path: Path,
) -> None:
    settings = demo_off(tmp_path)
    with pytest.raises(InputError) as failed:
        pipeline.land_raw(settings, DS)
    message = str(failed.value)
    assert "\n" not in message
    assert "No raw impression files for 2026-01-01" in message
    assert str(raw_format.day_dir(settings, "impressions", DS)) in message
    assert "demo_mode is off" in message
    assert files_under(settings.lake.raw_root) == {}
    assert files_under(settings.generator.truth_root) == {}


def test_demo_off_with_landed_files_returns_them_without_writing(tmp_path: Path) -> None:
    settings = demo_off(tmp_path)
    folder = raw_format.day_dir(settings, "impressions", DS)
    folder.mkdir(parents=True)
    landed = folder / "search-0001.jsonl"
    landed.write_text(json.dumps({"impression_id": "a"}) + "\n")
    before = files_under(settings.lake.raw_root)

    assert pipeline.land_raw(settings, DS) == {"impressions/search-0001.jsonl": landed}
    assert files_under(settings.lake.raw_root) == before
    assert files_under(settings.generator.truth_root) == {}


def test_demo_on_writes_the_day_and_rewrites_its_own_files(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)  # the tests' tiny synthetic world: demo mode on
    assert settings.airflow.demo_mode is True
    paths = pipeline.land_raw(settings, DS)
    for source in ("impressions", "users", "items"):
        assert paths[source].is_file()
        assert raw_format.day_files(settings, source, DS) == [paths[source]]
    assert paths["oracle"].is_file()
    content = paths["impressions"].read_bytes()
    pipeline.land_raw(settings, DS)  # its own files: rewritten, byte for byte the same
    assert paths["impressions"].read_bytes() == content


def test_demo_on_refuses_a_day_with_files_it_did_not_write(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    folder = raw_format.day_dir(settings, "impressions", DS)
    folder.mkdir(parents=True)
    (folder / "part-00000.jsonl").write_text(json.dumps({"impression_id": "real"}) + "\n")
    before = files_under(settings.lake.raw_root)
    with pytest.raises(InputError, match=r"demo_mode is on but .* not write \(part-00000\.jsonl\)"):
        pipeline.land_raw(settings, DS)  # the generator's file name, but no truth of the day
    assert files_under(settings.lake.raw_root) == before
    assert files_under(settings.generator.truth_root) == {}

    # Beside the generator's own files of the day, a foreign file is refused too.
    other = make_settings(tmp_path / "other")
    pipeline.land_raw(other, DS)
    extra = raw_format.day_dir(other, "items", DS) / "catalogue.jsonl"
    extra.write_text(json.dumps({"item_id": 1}) + "\n")
    with pytest.raises(InputError, match=r"catalogue\.jsonl"):
        pipeline.land_raw(other, DS)


def test_keep_run_land_turns_demo_mode_on_for_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--land`` / ``--no-land`` set ``airflow.demo_mode`` for the run (both ways of running
    a day); without either the settings decide (off by default)."""
    from keep.flows import cli

    seen: list[bool] = []

    def fake_run_day(settings: Settings, ds: dt.date) -> pipeline.DayResult:
        seen.append(settings.airflow.demo_mode)
        return pipeline.DayResult(ds=ds, gate_passed=True)

    monkeypatch.setattr(pipeline, "run_day", fake_run_day)
    monkeypatch.setattr(pipeline, "run_day_airflow", fake_run_day)
    monkeypatch.setattr(cli, "load_settings", lambda: demo_off(tmp_path))
    day = ["--start", "2026-01-01", "--end", "2026-01-01"]
    for args in ([], ["--land"], ["--no-land"], ["--land", "--via", "airflow"]):
        result = CliRunner().invoke(cli.app, ["run", *day, *args])
        assert result.exit_code == 0, result.output
    assert seen == [False, True, False, True]
