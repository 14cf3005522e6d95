"""Rebuild docs/curves/bibert_sst2.json (chapter 6's learning curves) from the run folders of docs/results.md's BiBERT
section: ``python docs/curves/bibert_sst2.py`` from the repository root. Runs not started are left out; unfinished
ones are marked so in the file; with none of them on this machine the file is left as it is."""

import sys
from pathlib import Path

from binlab.methods.curves import save_curves

stages = {
    "BiBERT: W1A1 taught by FP, DMD over every position (the code)": "runs/sst2-bibert/student_w1a1",
    "BiBERT, DMD with the padded positions masked": "runs/sst2-bibert-masked/student_w1a1",
}
have = {k: v for k, v in stages.items() if (Path(v) / "results.json").is_file() or (Path(v) / "checkpoints" / "latest").is_file()}
if not have:
    sys.exit("none of the runs is on this machine: docs/curves/bibert_sst2.json left as it is")
d = save_curves(have, "docs/curves/bibert_sst2.json", task="SST-2", metric="accuracy",
                budget="1 epoch (2,105 steps of 32), all 67,349 sentences, seed 42, length-grouped batches",
                references=[{"label": "FP teacher 89.8", "value": 89.8}, {"label": "BiT chain, W1A1 hop 81.8", "value": 81.8}])
for c in d["curves"]:
    print(c["label"], c["finished"], c["points"][-3:], c["best"])
