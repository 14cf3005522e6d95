"""Data-parallel training (binlab.train.distributed): 2 gloo processes on 127.0.0.1 with half of every batch each end
with one process's weights on the full batch, see disjoint halves, start from rank 0's calibrated scales, and resume
exactly after a kill under torchrun.

Every check that needs two processes runs in one spawned pair (the ``pair`` fixture: the imports cost more than the
training), plus the kill-and-resume test's two torchrun launches.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from conftest import ROOT

from binlab.data.glue import get_task, load_glue
from binlab.files import load_tensors
from binlab.methods.bit import hop_quant
from binlab.model import tiny_bert
from binlab.quant.quantizers import batch_share, elastic
from binlab.settings import torch_threads
from binlab.train import distributed as D
from binlab.train.calibration import calibrate, calibration_batch
from binlab.train.evaluation import make_evaluator
from binlab.train.trainer import TrainConfig, Trainer

LENGTH = 16  # every batch is padded to it: the quantizers' N and statistics then split exactly over the shards
N_TRAIN = 69  # 4 full batches of 16 and one of 5: the last one splits 3 + 2
#: The largest |difference| of any weight allowed between 2 processes and 1 after the runs below (about 1e-8 seen:
#: the gradients of the two halves are summed in another order than one process sums the whole batch).
TOLERANCE = 1e-6


# ----------------------------------------------------------------------------------------------------------
# a tiny task, model and run, the same in the test process (1 process) and in each of the pair's


class FixedLength:
    """Word-level ids of the synthetic sentences, every batch padded to ``max_length``: [CLS] = 1, [PAD] = 0."""

    def __init__(self, *splits):
        words = sorted({w for s in splits for t in s.texts_a for w in t.split()})
        self.ids = {w: i + 2 for i, w in enumerate(words)}
        self.vocab_size = len(words) + 2

    def __call__(self, texts_a, texts_b, max_length):
        ids = torch.zeros(len(texts_a), max_length, dtype=torch.long)
        for i, text in enumerate(texts_a):
            row = [1] + [self.ids[w] for w in text.split()][:max_length - 1]
            ids[i, :len(row)] = torch.tensor(row)
        return {"input_ids": ids, "attention_mask": (ids != 0).long(), "token_type_ids": torch.zeros_like(ids)}


def data():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the synthetic data announces itself
        train = load_glue("sst2", "train", source="synthetic", max_examples=N_TRAIN)
        dev = load_glue("sst2", "dev", source="synthetic", max_examples=32)
    return train, dev, FixedLength(train, dev)


def model(kind: str, vocab_size: int):
    """``finetune``: a full-precision tiny BERT; ``bit``: BiT's W1A1 preset (elastic activations, learned alphas and
    thresholds). Both with BERT's dropout of 0.1, which the runs switch off with ``TrainConfig.dropout``."""
    return tiny_bert(2, None if kind == "finetune" else hop_quant(1), seed=0, vocab_size=vocab_size, hidden_size=32,
                     num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                     max_position_embeddings=LENGTH)


class RecordingTrainer(Trainer):
    """A Trainer that writes down which examples this process trained on, batch by batch."""

    seen: list

    def _batch(self, indices):
        self.seen.append([int(i) for i in indices])
        return super()._batch(indices)


def train(kind: str, out: Path, **overrides) -> RecordingTrainer:
    """Two epochs (10 steps) of ``kind`` in ``out``; BiT's scales calibrated on the first 16 examples first."""
    tr, dev, encode = data()
    m = model(kind, encode.vocab_size)
    if kind == "bit":
        calibrate(m, calibration_batch(tr, encode, LENGTH, 16))
    cfg = TrainConfig(**{**dict(lr=1e-3, epochs=2, batch_size=16, max_length=LENGTH, eval_every=0, save_every=1000,
                                clip_lr=1e-3, seed=0, dropout=0.0, progress=False), **overrides})
    trainer = RecordingTrainer(m, tr, dev, encode, make_evaluator(get_task("sst2"), encode, LENGTH), out, cfg)
    trainer.seen = []
    trainer.start = {k: v.clone() for k, v in m.state_dict().items()}
    trainer.fit()
    return trainer


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    name = (out / "checkpoints" / "latest").read_text().strip()
    return load_tensors(out / "checkpoints" / name / "model.safetensors")


def cli_args(out: Path, *extra) -> list[str]:
    """``binlab train`` on the tiny model and synthetic data, dropout on (each process draws its own)."""
    return ["train", "--task", "sst2", "--source", "synthetic", "--model", "tiny", "--quant", "fp", "--out", str(out),
            "--epochs", "2", "--max-train", "64", "--max-eval", "32", "--batch-size", "16", "--eval-every", "0",
            "--save-every", "2", "--lr", "1e-3", "--threads", "1", "--no-progress", *extra]


# ----------------------------------------------------------------------------------------------------------
# the pair: everything that needs two processes, in one spawn


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pair_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    out = Path(out)
    assert D.init_from_env(timeout=timedelta(seconds=120)) and D.backend(cuda=False) == "gloo"
    assert (D.world_size(), D.rank(), D.is_main()) == (world, rank, rank == 0)
    tr, dev, encode = data()
    record = {}
    # 1. calibration on a different batch in each process: every process ends with rank 0's scales
    m = model("bit", encode.vocab_size)
    record["scales"] = calibrate(m, encode(tr.texts_a[16 * rank:16 * rank + 16], None, LENGTH)).scales
    # 2. a global batch the processes cannot split evenly is refused
    try:
        Trainer(m, tr, dev, encode, None, out / "refused", TrainConfig(batch_size=15, progress=False))
    except ValueError as e:
        record["refusal"] = str(e)
    # 3. fine-tuning and BiT's W1A1 preset, half of every batch each
    for kind in ("finetune", "bit"):
        record[f"seen_{kind}"] = train(kind, out / kind).seen
    # 4. a loss that leaves the classifier without a gradient does not hang the reduction
    unused = model("finetune", encode.vocab_size)
    before = unused.classifier.weight.detach().clone()
    trainer = Trainer(unused, tr, dev, encode, make_evaluator(get_task("sst2"), encode, LENGTH), out / "unused",
                      TrainConfig(lr=1e-3, batch_size=16, max_length=LENGTH, max_steps=2, eval_every=0,
                                  progress=False),
                      loss_fn=lambda net, b: net(b["input_ids"], attention_mask=b["attention_mask"])
                      .pooled_output.pow(2).mean())
    record["unused_steps"] = trainer.fit()["steps"]
    record["classifier_moved"] = float((unused.classifier.weight.detach() - before).abs().max())
    # 5. the command line, as torchrun runs it: the uninterrupted run of the kill-and-resume test
    from binlab.cli import main
    record["cli_rc"] = main(cli_args(out / "cli"))
    (out / f"record-{rank}.json").write_text(json.dumps(record))
    D.shutdown()


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, list[dict]]:
    """The folder of the pair's runs and what each of the two processes recorded."""
    out = tmp_path_factory.mktemp("pair")
    ctx = mp.start_processes(_pair_worker, args=(2, _free_port(), str(out)), nprocs=2, join=False,
                             start_method="spawn")
    deadline = time.time() + 300
    while not ctx.join(timeout=1):
        if time.time() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("the two processes did not finish in 300 s")
    return out, [json.loads((out / f"record-{r}.json").read_text()) for r in range(2)]


# ----------------------------------------------------------------------------------------------------------
# the tests


def test_shards_are_disjoint_halves_and_the_last_small_batch_is_dropped_only_below_one_example_each():
    batch = torch.arange(10, 26)
    halves = [D.shard(batch, r, 2) for r in range(2)]
    assert [h.tolist() for h in halves] == [list(range(10, 18)), list(range(18, 26))]
    thirds = [D.shard(torch.arange(5), r, 3).tolist() for r in range(3)]
    assert thirds == [[0, 1], [2, 3], [4]]
    assert D.batches_per_epoch(69, 16, 1) == 5 and D.batches_per_epoch(69, 16, 2) == 5  # 5 examples: 3 + 2
    assert D.batches_per_epoch(65, 16, 2) == 4  # 1 example for 2 processes: dropped
    D.check_batch_size(16, 2)
    with pytest.raises(ValueError, match="--batch-size 15 .* 2 processes: use a multiple of 2"):
        D.check_batch_size(15, 2)
    assert D.backend(cuda=True) == "cpu:gloo,cuda:nccl" and D.backend(cuda=False) == "gloo"


def test_a_shard_scales_its_alpha_gradient_by_the_global_n():
    """Two halves of a batch, their alpha gradients averaged as DDP does, give the full batch's: with batch_share.
    Without it each half's 1/sqrt(N) is sqrt(2) too large (and Adam would hide it: it is blind to a constant factor)."""
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(8, 5, 6, generator=g), torch.randn(8, 5, 6, generator=g)

    def grad(rows, share=None):
        alpha = torch.tensor(0.8, requires_grad=True)
        with batch_share(share or 1.0):
            q = elastic(x[rows], alpha, num_bits=1, signed=True)
        (q * w[rows]).sum().div(len(range(8)[rows])).backward()  # the mean over this process's examples
        return float(alpha.grad)

    full = grad(slice(0, 8))
    averaged = (grad(slice(0, 4), 0.5) + grad(slice(4, 8), 0.5)) / 2
    naive = (grad(slice(0, 4)) + grad(slice(4, 8))) / 2
    assert averaged == pytest.approx(full, rel=1e-6)
    assert naive == pytest.approx(full * math.sqrt(2), rel=1e-6)
    with pytest.raises(ValueError, match="share of the global batch"):
        with batch_share(0):
            pass


def test_dropout_flag_overrides_the_models_dropout(tmp_path):
    from binlab.cli import build_parser
    from binlab.methods.pipeline import train_config_from_args

    argv = cli_args(tmp_path / "run")
    assert train_config_from_args(build_parser(argv).parse_args(argv)).dropout is None  # the model's own
    argv = cli_args(tmp_path / "run", "--dropout", "0.25")
    cfg = train_config_from_args(build_parser(argv).parse_args(argv))
    tr, dev, encode = data()
    m = model("finetune", encode.vocab_size)
    assert {d.p for d in m.modules() if isinstance(d, torch.nn.Dropout)} == {0.1}
    Trainer(m, tr, dev, encode, None, tmp_path / "run", cfg)
    assert {d.p for d in m.modules() if isinstance(d, torch.nn.Dropout)} == {0.25}
    assert m.config.hidden_dropout_prob == m.config.attention_probs_dropout_prob == 0.25  # what a saved copy says
    with pytest.raises(ValueError, match="TrainConfig.dropout must be in"):
        TrainConfig(dropout=1.0)


def test_calibration_is_broadcast_from_rank_0(pair):
    _, (r0, r1) = pair
    tr, _, encode = data()
    own = {}
    for rank in range(2):
        m = model("bit", encode.vocab_size)
        own[rank] = calibrate(m, encode(tr.texts_a[16 * rank:16 * rank + 16], None, LENGTH)).scales
    assert own[0] != pytest.approx(own[1], rel=1e-3), "the two calibration batches should give other scales"
    assert r0["scales"] == own[0] and r1["scales"] == own[0]


@pytest.mark.parametrize("kind", ["finetune", "bit"])
def test_two_processes_with_half_a_batch_each_match_one_process(pair, tmp_path, kind):
    out, records = pair
    with torch_threads(1):
        single = train(kind, tmp_path / kind)
    # the two processes saw disjoint halves of every global batch, which together are one process's batch
    seen = [r[f"seen_{kind}"] for r in records]
    assert len(seen[0]) == len(seen[1]) == len(single.seen) == 10
    for step, (a, b, full) in enumerate(zip(*seen, single.seen)):
        assert not set(a) & set(b) and a + b == full, f"step {step}: {a} + {b} is not {full}"
        assert (len(a), len(b)) == ((3, 2) if len(full) == 5 else (8, 8))
    # the same weights, to float rounding
    one, two = final_weights(tmp_path / kind), final_weights(out / kind)
    assert one.keys() == two.keys() == single.start.keys()
    diff = max(float((one[k].double() - two[k].double()).abs().max()) for k in one)
    moved = max(float((one[k].double() - single.start[k].double()).abs().max()) for k in one)
    print(f"{kind}: weights moved up to {moved:.3g}; 2 processes vs 1: largest difference {diff:.3g}")
    assert moved > 1000 * TOLERANCE, "the runs should move the weights far more than the tolerance"
    assert diff <= TOLERANCE, f"{kind}: 2 processes differ from 1 by {diff:.2e}"
    results = json.loads((out / kind / "results.json").read_text())
    assert results["world_size"] == 2 and results["steps"] == 10
    assert not (out / kind / "checkpoints" / "latest").read_text().startswith(".tmp")


def test_uneven_batches_and_resumes_with_another_process_count_are_refused(pair, tmp_path):
    out, records = pair
    assert all("--batch-size 15 is the global batch" in r["refusal"] and "multiple of 2" in r["refusal"]
               for r in records)
    tr, dev, encode = data()
    cfg = TrainConfig(lr=1e-3, epochs=2, batch_size=16, max_length=LENGTH, eval_every=0, save_every=1000, clip_lr=1e-3,
                      seed=0, dropout=0.0, progress=False)
    trainer = Trainer(model("finetune", encode.vocab_size), tr, dev, encode, None, out / "finetune", cfg)
    with pytest.raises(ValueError, match="written by a run on 2 process\\(es\\), this one has 1"):
        trainer.load_checkpoint()


def test_a_parameter_without_gradient_does_not_hang_the_reduction(pair):
    _, records = pair
    assert all(r["unused_steps"] == 2 and r["classifier_moved"] == 0.0 for r in records)


def _latest_step(out: Path) -> int:
    try:
        return int((out / "checkpoints" / "latest").read_text().strip().split("-")[1])
    except (OSError, ValueError, IndexError):
        return -1


def _kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and every process below it (torchrun starts its workers in sessions of their own), children
    first, and wait until none of them runs any more."""
    def children(p: int) -> list[int]:
        kids = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == p:
                kids.append(int(stat.parent.name))
        return kids

    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += children(p)
    for p in reversed(tree):
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)
    for p in tree:
        while True:
            try:
                state = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                break  # gone
            if state in ("Z", "X"):
                break  # dead, not reaped yet
            time.sleep(0.01)


def _torchrun(out: Path, *extra) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
            "--master-port", str(_free_port()), "-m", "binlab", *cli_args(out, *extra)]


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="finds torchrun's workers in /proc (Linux)")
def test_torchrun_killed_mid_epoch_then_resumed_gives_the_same_weights(pair, tmp_path):
    out, records = pair
    assert [r["cli_rc"] for r in records] == [0, 0]
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_torchrun(killed), env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while _latest_step(killed) < 2 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
    finally:
        _kill_tree(proc.pid)  # the launcher and both workers
        proc.wait(timeout=60)
    step = _latest_step(killed)
    assert 0 < step < 8 and step % 4 and not (killed / "results.json").exists(), f"not killed mid-epoch: {step}"
    res = subprocess.run(_torchrun(killed, "--resume"), env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert res.stdout.count(f"resumed from step {step} ") == 1, res.stdout[-2000:]  # where it was killed; rank 0 prints
    full, resumed = final_weights(out / "cli"), final_weights(killed)
    assert full.keys() == resumed.keys()
    for k in full:
        assert torch.equal(full[k], resumed[k]), f"{k} differs after the resume"
    a, b = (json.loads((d / "results.json").read_text()) for d in (out / "cli", killed))
    assert a["steps"] == b["steps"] == 8 and a["final"]["score"] == b["final"]["score"]
    assert a["config"]["dropout"] is None and a["world_size"] == 2
    assert (out / "cli" / "best_model" / "config.json").is_file()
