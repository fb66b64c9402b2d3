"""The daily step under ``torchrun --nproc_per_node=2`` (DDP, gloo, one thread per rank)."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from models.pretrain.checkpoint import current_lineage, load_checkpoint, metrics_path
from tests.conftest import REPO
from tests.models.pretrain.conftest import tiny_settings, write_days

D1, D2 = dt.date(2026, 1, 1), dt.date(2026, 1, 2)


def torchrun(config: Path, ds: dt.date) -> subprocess.CompletedProcess[str]:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--standalone",
        "-m",
        "models.pretrain.ddp",
        "--ds",
        ds.isoformat(),
    ]
    env = {**os.environ, "KEEP_CONFIG": str(config), "OMP_NUM_THREADS": "1"}
    # A new session: on a timeout the whole group (torchrun and its ranks) is killed.
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.mark.slow
def test_two_ranks_train_and_rank0_writes_a_valid_checkpoint(tmp_path: Path) -> None:
    settings = tiny_settings(tmp_path, threads=2)
    write_days(settings, [D1, D2])  # 4 files of 300 rows per day
    config = tmp_path / "keep.yaml"
    config.write_text(yaml.safe_dump(settings.model_dump(mode="json")))

    for ds in (D1, D2):
        run = torchrun(config, ds)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    lineage = current_lineage(settings)
    assert lineage is not None
    day2 = json.loads(metrics_path(settings, lineage, D2).read_text())
    assert day2["mode"] == "warm_start" and day2["train"]["world"] == 2
    # DDP really synchronised the ranks: after a day on different shards, both hold exactly
    # the same parameters (without the gradient all-reduce each would drift on its own shard).
    digests = day2["train"]["parameter_digest_by_rank"]
    assert len(digests) == 2 and digests[0] == digests[1], digests
    # Each rank holds 2 of the 4 files (600 rows): 600 // 128 = 4 equal steps per rank.
    assert day2["train"]["steps"] == 4 and day2["train"]["samples_per_rank"] == 4 * 128
    loaded = load_checkpoint(settings, D2)
    before = load_checkpoint(settings, D1).model.state_dict()
    after = loaded.model.state_dict()
    assert all(torch.isfinite(v).all() for v in after.values())
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert day2["eval"]["click_auc"] > 0.5
