"""DDP on the CPU (gloo, two processes): exact sharded evaluation, torchrun and Lightning-launched
training with one set of outputs, per-rank/per-epoch seeded sampling.

Lightning's `ddp` re-executes the current command for the other ranks, which inside pytest
would be pytest itself: the multi-process runs therefore go through train.py / evaluate.py in
a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, TINY, TINY_DATA, compose_config

from genrec.data.datasets import NextItemTrainDataset
from genrec.data.samplers import EpochSeededDataset, EpochShuffleSampler, ShardSampler
from genrec.run.checkpoint import read_checkpoint
from genrec.run.evaluation import evaluate
from genrec.run.training import build_components, train

BIN = Path(sys.executable).parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}


def _run(cmd: list[str], cwd: Path = ROOT, timeout: int = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def _torchrun(script: str, args: list[str], cwd: Path = ROOT) -> subprocess.CompletedProcess:
    # --standalone: a free port and a fresh run id, so concurrent test runs do not collide
    return _run([str(BIN / "torchrun"), "--standalone", "--nproc_per_node=2", str(ROOT / script), *args],
                cwd=cwd)


# ---- samplers (in process) ----
def test_shard_sampler_covers_every_user_once_for_any_world_size():
    for n in (1, 2, 7, 301):
        for world in (1, 2, 3):
            shards = [list(ShardSampler(range(n), num_replicas=world, rank=r)) for r in range(world)]
            assert sorted(i for s in shards for i in s) == list(range(n))
            assert [len(s) for s in shards] == [len(ShardSampler(range(n), world, r)) for r in range(world)]


def test_train_sampling_is_seeded_per_epoch_and_disjoint_across_ranks(tmp_path):
    datamodule, _ = build_components(compose_config(tmp_path, ["task.loss=bce"]))
    dataset = NextItemTrainDataset(datamodule.split, maxlen=20, negatives=True)
    n = len(dataset)

    def epoch(e: int, rank: int, world: int = 2, seed: int = 42) -> list[tuple[int, int]]:
        sampler = EpochShuffleSampler(dataset, num_replicas=world, rank=rank, seed=seed)
        sampler.set_epoch(e)
        return list(sampler)

    r0, r1 = epoch(0, 0), epoch(0, 1)
    assert len(r0) == len(r1) == (n + 1) // 2
    padding = 2 * len(r0) - n
    assert len({i for i, _ in r0} & {i for i, _ in r1}) == padding  # only the wrap-around repeats
    assert {i for i, _ in r0 + r1} == set(range(n))
    assert epoch(0, 0) == r0 and epoch(1, 0) != r0 and epoch(0, 0, seed=43) != r0
    plain_loop = EpochShuffleSampler(dataset, num_replicas=2, rank=0, seed=42)  # nobody calls set_epoch
    assert list(plain_loop) == r0 and list(plain_loop) == epoch(1, 0)

    seeded = EpochSeededDataset(dataset, seed=42)
    first = seeded[r0[0]]["negatives"]
    np.testing.assert_array_equal(seeded[r0[0]]["negatives"], first)  # a rerun draws the same
    assert not np.array_equal(seeded[(r0[0][0], 1)]["negatives"], first)  # the next epoch does not


# ---- multi-process (subprocess) ----
def test_two_process_evaluation_equals_one_process_on_an_odd_user_count(tmp_path):
    cfg = compose_config(tmp_path, ["data.source.n_users=301", "trainer.max_epochs=1",
                                    "callbacks.early_stopping=null"])
    best = train(cfg)["best_checkpoint"]
    eval_args = [f"ckpt_path={best}", "accelerator=cpu", "progress_bar=false", "ks_max=20"]
    one = evaluate(compose_config(tmp_path, [*eval_args, f"output_dir={tmp_path / 'one'}"],
                                  config_name="evaluate"))
    _torchrun("evaluate.py", [*eval_args, "devices=2", f"output_dir={tmp_path / 'two'}",
                              f"hydra.run.dir={tmp_path / 'hydra_eval'}"])
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert set(two) == set(one) and len(one) > 100
    assert two == pytest.approx(one, rel=0, abs=0)  # bit for bit: no user dropped or counted twice


def _single_run_dir(cwd: Path) -> Path:
    runs = [p for p in (cwd / "outputs").glob("*/*") if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def _assert_one_set_of_outputs(run: Path, stdout: str) -> dict:
    names = sorted(p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file())
    best = [n for n in names if n.startswith("checkpoints/best-")]
    assert len(best) == 1, names
    assert [n for n in names if n not in best] == [
        ".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml", "checkpoints/last.ckpt",
        "config.yaml", "csv/hparams.yaml", "csv/metrics.csv", "metrics.json", "train.log"], names
    assert stdout.count("test metrics (SASRec)") == 1  # one table, printed by rank zero
    return json.loads((run / "metrics.json").read_text())


DDP_ARGS = [*TINY_DATA, *(t for t in TINY if not t.startswith(("logger=", "trainer.max_epochs="))),
            "trainer=ddp", "logger=csv", "trainer.max_epochs=3", "task.optimizer.lr=0.005",
            "callbacks.early_stopping=null"]


@pytest.mark.slow
def test_torchrun_training_writes_one_run_and_lands_near_one_process(tmp_path):
    """No hydra.run.dir: the ranks must agree on rank zero's timestamped directory by themselves."""
    args = [*DDP_ARGS, f"paths.data_dir={tmp_path / 'data'}"]
    proc = _torchrun("train.py", args, cwd=tmp_path)
    two = _assert_one_set_of_outputs(_single_run_dir(tmp_path), proc.stdout)

    one = train(compose_config(tmp_path / "single", [a for a in args if a != "trainer=ddp"]))
    # the same global batch and data, split over two ranks: close, not equal (another sample order)
    for key in ("test/ndcg@10", "test/hr@10"):
        assert abs(two[key] - one[key]) < 0.03, (key, two[key], one[key])
    assert two["test/ndcg@10"] > two["popularity/test/ndcg@10"]


@pytest.mark.slow
def test_lightning_launched_ddp_writes_one_run(tmp_path):
    """`python train.py trainer=ddp trainer.devices=2`: Lightning starts rank 1 itself."""
    proc = _run([sys.executable, str(ROOT / "train.py"), *DDP_ARGS, "trainer.devices=2",
                 f"paths.data_dir={tmp_path / 'data'}"], cwd=tmp_path)
    metrics = _assert_one_set_of_outputs(_single_run_dir(tmp_path), proc.stdout)
    assert metrics["test/ndcg@10"] > metrics["popularity/test/ndcg@10"]


@pytest.mark.slow
def test_nan_on_one_rank_stops_both_ranks(tmp_path):
    """Rank 1 alone sees a NaN loss: both ranks must stop with the guard's message, none hang."""
    args = [*DDP_ARGS, f"paths.data_dir={tmp_path / 'data'}", f"hydra.run.dir={tmp_path / 'run'}",
            "+callbacks.fault._target_=tests.faults.PoisonWeightsAtStep", "+callbacks.fault.step=7",
            "+callbacks.fault.rank=1"]
    cmd = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node=2", str(ROOT / "train.py"), *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=180)
    assert proc.returncode != 0
    # genrec/run/cli.py: each rank ends in one line (torchrun adds its own summary)
    assert "train/loss is" in proc.stderr and "global step 7" in proc.stderr
    assert read_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")["global_step"] == 5
