"""Report: the pre-training model's held-out click AUC per day, beside the oracle's.

    .venv/bin/python bench/pretrain_auc.py --home /path/to/keep-home [--lineage L]

For every checkpoint day of the lineage (default: the current one) it reads the held-out
metrics stored with the checkpoint (``<checkpoint_root>/<lineage>/ds=D.json``: the model
trained through ``D - 1`` evaluated on day ``D``'s samples before training on them, see
docs/pretrain.md) and, when the home holds a synthetic world, the oracle's click AUC on the
same day's impressions (the generator's true click probabilities joined with the stored
labels of ``bronze.impressions``): the ceiling any model could reach on those impressions.

Prints a table and writes reports/bench/pretrain_auc.json (``days``, ``click_auc``,
``oracle_click_auc``, ``click_logloss``, ``cart_auc``, ``purchase_auc``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
from _common import REPO, write_report

sys.path.insert(0, str(REPO))


def oracle_auc(settings: object, ds: dt.date) -> float | None:
    from keep.core.tables import IMPRESSIONS
    from keep.lake import delta

    truth = Path(settings.generator.truth_root) / "oracle" / f"ds={ds.isoformat()}"  # type: ignore[attr-defined]
    if not truth.is_dir():
        return None
    oracle = pads.dataset(str(truth), format="parquet").to_table(
        columns=["impression_id", "p_click"]
    )
    from deltalake import DeltaTable

    bronze = DeltaTable(str(delta.table_path(settings, IMPRESSIONS))).to_pyarrow_table(  # type: ignore[arg-type]
        filters=[("ds", "=", ds.isoformat())], columns=["impression_id", "click"]
    )
    from models.evaluation import auc

    joined = bronze.join(oracle, "impression_id", join_type="inner")
    return auc(np.asarray(joined.column("click").to_numpy()), np.asarray(joined.column("p_click")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, required=True, help="KEEP home (lake, checkpoints)")
    parser.add_argument("--lineage", default=None, help="lineage (default: the current one)")
    args = parser.parse_args()

    from keep.core.config import load_settings
    from models.pretrain.checkpoint import checkpoint_days, current_lineage

    settings = load_settings(home=args.home)
    lineage = args.lineage or current_lineage(settings)
    if lineage is None:
        raise SystemExit(f"no pre-training lineage under {settings.pretrain.checkpoint_root}")
    rows = []
    for ds in checkpoint_days(settings, lineage):
        meta = json.loads(
            (settings.pretrain.checkpoint_root / lineage / f"ds={ds.isoformat()}.json").read_text()
        )
        held_out = meta.get("eval") or {}
        if "click_auc" not in held_out:
            continue  # the lineage's first day: nothing earlier to evaluate
        rows.append(
            {
                "ds": ds.isoformat(),
                "click_auc": round(held_out["click_auc"], 4),
                "oracle_click_auc": (
                    None if (o := oracle_auc(settings, ds)) is None else round(o, 4)
                ),
                "click_logloss": round(held_out["click_logloss"], 4),
                "cart_auc": round(held_out["cart_auc"], 4),
                "purchase_auc": round(held_out["purchase_auc"], 4),
            }
        )
    print(f"lineage {lineage}: held-out metrics (model through D-1, evaluated on D)")
    print(
        f"{'day':<12}{'click AUC':>10}{'oracle':>8}{'logloss':>9}{'cart AUC':>10}{'purch AUC':>10}"
    )
    for r in rows:
        oracle = "-" if r["oracle_click_auc"] is None else f"{r['oracle_click_auc']:.4f}"
        print(
            f"{r['ds']:<12}{r['click_auc']:>10.4f}{oracle:>8}{r['click_logloss']:>9.4f}"
            f"{r['cart_auc']:>10.4f}{r['purchase_auc']:>10.4f}"
        )
    report = {"home": str(args.home), "lineage": lineage, "days": [r["ds"] for r in rows]}
    for key in ("click_auc", "oracle_click_auc", "click_logloss", "cart_auc", "purchase_auc"):
        report[key] = [r[key] for r in rows]
    write_report("pretrain_auc", report)


if __name__ == "__main__":
    main()
