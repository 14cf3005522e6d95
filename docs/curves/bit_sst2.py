"""Rebuild docs/curves/bit_sst2.json (chapter 5's learning curves) from the run folders of docs/results.md's BiT
section: ``python docs/curves/bit_sst2.py`` from the repository root. Runs not started are left out; unfinished ones
are marked so in the file; with none of them on this machine the file is left as it is."""

import sys
from pathlib import Path
from binlab.methods.curves import save_curves
stages = {
    "BiT hop 1: W1A2 taught by FP": "runs/sst2-bit/hop1_w1a2",
    "BiT hop 2: W1A1 taught by W1A2": "runs/sst2-bit/hop2_w1a1",
    "BiT*: W1A1 taught by FP": "runs/sst2-bitstar/hop1_w1a1",
    "W1A1 without distillation (fine-tuned from FP)": "runs/sst2-w1a1-nokd",
    "W1A1 hop, alpha* initialisation": "runs/sst2-bit-alphaopt-hop2/hop1_w1a1",
    "W1A1 hop, normalised hidden loss": "runs/sst2-bit-normloss-hop2/hop1_w1a1",
    "W1A2 hop, shuffled batches (stopped at step 800)": "runs/sst2-bit-ungrouped/hop1_w1a2",
    "BiT*, the chain's budget (2 epochs)": "runs/sst2-bitstar-2ep/hop1_w1a1",
    "BiT without Q/K/V thresholds: W1A2 hop": "runs/sst2-bit-noqkv/hop1_w1a2",
    "BiT without Q/K/V thresholds: W1A1 hop": "runs/sst2-bit-noqkv/hop2_w1a1",
}
have = {k: v for k, v in stages.items() if (Path(v) / "results.json").is_file() or (Path(v) / "checkpoints" / "latest").is_file()}
if not have:
    sys.exit("none of the runs is on this machine: docs/curves/bit_sst2.json left as it is")
d = save_curves(have, "docs/curves/bit_sst2.json", task="SST-2", metric="accuracy",
                budget="1 epoch (2,105 steps of 32) per stage unless the label says otherwise, all 67,349 sentences, seed 42, length-grouped batches",
                references=[{"label": "FP teacher 89.8", "value": 89.8}, {"label": "the 4-minute probe 76.0", "value": 76.0}])
for c in d["curves"]: print(c["label"], c["finished"], c["points"][-3:], c["best"])
