"""Learning curves read back from run folders (finished or still running), saved, checked and plotted."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT, assert_titled

from binlab.explorers.elastic import learning_curves_figure
from binlab.methods.curves import load_curves, save_curves, stage_curve


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    subprocess.run([sys.executable, "-m", "binlab", "train", "--task", "sst2", "--source", "synthetic", "--model",
                    "tiny", "--out", str(out), "--max-train", "128", "--max-eval", "32", "--batch-size", "16",
                    "--max-steps", "6", "--eval-every", "2", "--save-every", "2", "--threads", "1", "--no-progress"],
                   check=True, cwd=ROOT, capture_output=True, timeout=300,
                   env=dict(os.environ, PYTHONWARNINGS="ignore"))
    return out


def test_a_finished_and_a_running_stage(finished_run, tmp_path):
    done = stage_curve(finished_run)
    results = json.loads((finished_run / "results.json").read_text())
    assert done["finished"] and [p[0] for p in done["points"]] == [2, 4, 6]
    assert done["best"] == results["best"]["score"] and done["command"].startswith("binlab train")
    running = tmp_path / "running"
    shutil.copytree(finished_run, running)
    (running / "results.json").unlink()
    partial = stage_curve(running)
    assert not partial["finished"] and partial["points"] == done["points"] and partial["total_steps"] == 6
    # before its first evaluation a stage has no best score (not -inf, which is not JSON)
    ckpt = running / "checkpoints" / (running / "checkpoints" / "latest").read_text().strip() / "trainer_state.json"
    meta = json.loads(ckpt.read_text())
    meta["state"].update(history=[], best_score=float("-inf"))
    ckpt.write_text(json.dumps(meta))
    fresh = stage_curve(running)
    assert fresh["points"] == [] and fresh["best"] is None and fresh["final"] is None
    with pytest.raises(FileNotFoundError, match="neither results.json nor a checkpoint"):
        stage_curve(tmp_path)


def test_saved_curves_load_and_plot(finished_run, tmp_path):
    path = tmp_path / "curves" / "c.json"
    save_curves({"tiny FP": finished_run}, path, task="SST-2 (synthetic)", metric="accuracy",
                references=[{"label": "chance", "value": 50.0}])
    data = load_curves(path)
    assert data["curves"][0]["label"] == "tiny FP" and data["about"]["metric"] == "accuracy"
    fig = learning_curves_figure(path)
    assert_titled(fig)
    assert len(fig.data) == 1 and "best" in fig.data[0].name
    bad = tmp_path / "bad.json"
    bad.write_text('{"rows": []}')
    with pytest.raises(ValueError, match="not a curves file"):
        load_curves(bad)
    bad.write_text("not json")
    with pytest.raises(ValueError, match="not JSON"):
        load_curves(bad)
