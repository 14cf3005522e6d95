"""Learning curves of training runs, read back from their folders, and saved small enough to commit.

``runs/`` stays on the machine; what the book plots is a JSON file in ``docs/`` made from it::

    from binlab.methods.curves import stage_curve, save_curves
    save_curves({"W1A1 after W1A2": "runs/sst2-bit/hop2_w1a1", ...}, "docs/curves/bit_sst2.json", task="sst2")

A stage folder (a plain ``binlab train --out`` or one stage of a recipe) holds ``results.json`` when it finished;
while it runs, its newest checkpoint's ``trainer_state.json`` has the dev history so far, and the curve says so.
"""

from __future__ import annotations

import json
from pathlib import Path

from binlab.files import atomic_write_text

__all__ = ["stage_curve", "save_curves", "load_curves"]


def stage_curve(folder: str | Path) -> dict:
    """``{"points": [[step, dev score], ...], "finished", "total_steps", "best", "final", "wall_time_s",
    "command", "config"}`` of one training stage (module docstring)."""
    folder = Path(folder)
    done = folder / "results.json"
    if done.is_file():
        r = json.loads(done.read_text())
        history, finished, total = r["history"], True, r.get("steps")
        best, final, wall = r["best"]["score"], r["final"]["score"], r.get("wall_time_s")
        command, config = r.get("command"), r.get("config", {})
    else:
        pointer = folder / "checkpoints" / "latest"
        if not pointer.is_file():
            raise FileNotFoundError(f"{folder} has neither results.json nor a checkpoint: not a training run "
                                    "(or not started)")
        meta = json.loads((folder / "checkpoints" / pointer.read_text().strip() / "trainer_state.json").read_text())
        state = meta["state"]
        history, finished, total = state["history"], False, meta["total_steps"]
        best = state["best_score"] if history else None  # -inf before the first evaluation
        final, wall = (history[-1]["score"] if history else None), state["elapsed_s"]
        command, config = None, meta["config"]  # the command is recorded in results.json at the end
    return {"points": [[h["step"], h["score"]] for h in history], "finished": finished, "total_steps": total,
            "best": best, "final": final, "wall_time_s": wall, "command": command, "config": config}


def save_curves(stages: dict[str, str | Path], path: str | Path, **about) -> dict:
    """Write ``{"about": about, "curves": [{"label", "folder", **stage_curve(folder)}, ...]}`` to ``path``
    (atomically) and return it. ``about``: what the curves share (task, metric, budget), free-form."""
    curves = [{"label": label, "folder": str(folder), **stage_curve(folder)} for label, folder in stages.items()]
    data = {"about": about, "curves": curves}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(path), json.dumps(data, indent=1) + "\n")
    return data


def load_curves(path: str | Path) -> dict:
    """A file written by :func:`save_curves`, checked."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no learning curves at {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not a curves file (not JSON: {e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("curves"), list) or \
            not all(isinstance(c, dict) and {"label", "points"} <= set(c) for c in data["curves"]):
        raise ValueError(f"{path} is not a curves file: expected {{'curves': [{{'label', 'points'}}, ...]}}")
    return data
