"""``keep report``: PNGs that are PNGs, and an HTML table that shows the JSON's numbers."""

from __future__ import annotations

import datetime as dt
import json
import struct
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from keep.flows.cli import app
from keep.flows.report import write_report
from models.evaluation import summarise_arms

PNGS = ("auc_by_day.png", "gap_closed.png", "calibration.png")


def synthetic_quality(path: Path) -> dict[str, Any]:
    """A quality.json as bench/quality.py writes it: three arms, three seeds, ten days."""
    rng = np.random.default_rng(11)
    days = [(dt.date(2026, 1, 2) + dt.timedelta(days=k)).isoformat() for k in range(10)]
    lift = {"base": 0.0, "concat": 0.01, "keep": 0.03}
    per_seed = {
        arm: {
            seed: {
                day: {
                    "auc": 0.66 + up + 0.002 * k + rng.normal(0, 0.004),
                    "gauc": 0.60 + up + rng.normal(0, 0.004),
                    "logloss": 0.21 - up / 3 + rng.normal(0, 0.002),
                    "calibration": 1.0 + rng.normal(0, 0.05),
                }
                for k, day in enumerate(days)
            }
            for seed in (0, 1, 2)
        }
        for arm, up in lift.items()
    }
    oracle = {day: 0.80 + rng.normal(0, 0.003) for day in days}
    references = [
        {"model": "ours", "click_auc": 0.7733, "days": 9},
        {"model": "logistic regression", "click_auc": 0.7112, "days": None},
    ]
    data = summarise_arms(
        per_seed,
        oracle,
        switch_ds=days[5],
        noop_at_init_max_abs_diff=0.0,
        pretrain_vs_references=references,
        grid={"lr": [1e-3, 3e-3], "epochs": [1]},
    )
    path.write_text(json.dumps(data, indent=2, allow_nan=False))
    return data


class Tables(HTMLParser):
    """Every <table>'s rows of cell texts, by the table's class."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._current: list[list[str]] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self._current = self.tables.setdefault(dict(attrs).get("class") or "", [])
        elif tag == "tr" and self._current is not None:
            self._current.append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._current is not None:
            self._current[-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._current = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def expected_number(value: float | int | None) -> str:
    """The report's format, written out again here: 4 decimals, '–' when missing."""
    if value is None:
        return "–"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def assert_png(path: Path) -> None:
    raw = path.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n", path
    length, kind, width, height = struct.unpack(">I4sII", raw[8:24])
    assert kind == b"IHDR" and length == 13 and width > 200 and height > 200
    assert raw[-12:-4] == b"\x00\x00\x00\x00IEND"


def check_report(out: Path, data: dict[str, Any]) -> None:
    for name in PNGS:
        assert_png(out / name)
    page = (out / "index.html").read_text(encoding="utf-8")
    for name in PNGS:
        assert f'src="{name}"' in page
    assert "<script" not in page and "http" not in page  # nothing runs, nothing is fetched
    parser = Tables()
    parser.feed(page)
    arms = parser.tables["arms"]
    assert arms[0][0] == "arm" and len(arms) == 1 + len(data["arms"])
    for row in arms[1:]:
        arm = data["arms"][row[0]]
        after = data["after_switch"][row[0]]
        assert row[1:] == [
            f"{expected_number(arm['auc'])} ± {expected_number(arm['auc_ci95'])}",
            expected_number(arm["gauc"]),
            expected_number(arm["logloss"]),
            expected_number(arm["calibration"]),
            expected_number(arm["relaimpr"]),
            expected_number(after),
        ]
    refs = parser.tables["references"]
    assert refs[0] == ["model", "click_auc", "days"]
    assert refs[1:] == [
        [r["model"], expected_number(r["click_auc"]), expected_number(r["days"])]
        for r in data["pretrain_vs_references"]
    ]


def test_write_report(tmp_path: Path) -> None:
    data = synthetic_quality(tmp_path / "quality.json")
    files = write_report(tmp_path / "quality.json", tmp_path / "out")
    assert files.index == tmp_path / "out" / "index.html"
    check_report(tmp_path / "out", data)


def test_keep_report_cli(tmp_path: Path) -> None:
    data = synthetic_quality(tmp_path / "quality.json")
    out = tmp_path / "quality"
    args = ["report", "--quality", str(tmp_path / "quality.json"), "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    check_report(out, data)


def test_keep_report_cli_without_summary(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["report", "--quality", str(tmp_path / "none.json")])
    assert result.exit_code == 2


@pytest.mark.parametrize("value,text", [(0.123456, "0.1235"), (None, "–"), (3, "3")])
def test_one_number_format(value: float | int | None, text: str) -> None:
    from keep.flows.report import fmt

    assert fmt(value) == expected_number(value) == text
