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
from genrec.validation import ConfigError

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


def test_shard_sampler_with_lengths_visits_its_shard_shortest_first():
    lengths = np.random.default_rng(2).integers(1, 50, 301)
    shards = [list(ShardSampler(range(301), num_replicas=3, rank=r, lengths=lengths)) for r in range(3)]
    assert [sorted(s) for s in shards] == [list(range(r, 301, 3)) for r in range(3)]
    assert all(list(lengths[s]) == sorted(lengths[s]) for s in shards)


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


def _bucketed(lengths, batch, window, world=1, rank=0, epoch=0, seed=42):
    sampler = EpochShuffleSampler(range(len(lengths)), num_replicas=world, rank=rank, seed=seed,
                                  lengths=lengths, batch_size=batch, bucket_window=window)
    sampler.set_epoch(epoch)
    return np.array([i for i, _ in sampler])


def test_bucketed_batches_hold_similar_lengths_and_every_row_once():
    lengths = np.random.default_rng(0).integers(1, 201, 1003)  # 1003 = 31 batches of 32 + 11
    order = _bucketed(lengths, batch=32, window=8)
    assert sorted(order) == list(range(1003))
    batches = [order[i : i + 32] for i in range(0, 1003, 32)]
    assert len(batches[-1]) == 11  # the short batch stays last, so loader batches stay aligned
    plain = np.random.default_rng([42, 0]).permutation(1003)
    padded = sum(32 * lengths[b].max() for b in batches[:-1])
    padded_plain = sum(32 * lengths[plain[i : i + 32]].max() for i in range(0, 992, 32))
    assert padded < 0.7 * padded_plain  # ~0.6 for windows of 8 batches of uniform lengths
    # full batches come out in random order, not shortest first
    maxima = [lengths[b].max() for b in batches[:-1]]
    assert maxima != sorted(maxima)
    assert not np.array_equal(_bucketed(lengths, 32, 8, epoch=1), order)
    np.testing.assert_array_equal(_bucketed(lengths, 32, 8), order)  # seeded by (seed, epoch)


def test_bucketed_ranks_take_strides_of_the_same_global_batch():
    lengths = np.random.default_rng(1).integers(1, 201, 640)
    order = _bucketed(lengths, batch=64, window=4)
    r0, r1 = (_bucketed(lengths, 64, 4, world=2, rank=r) for r in (0, 1))
    for k in range(10):  # rank r's loader batch k (32 rows) is its half of global batch k
        glob = set(order[k * 64 : (k + 1) * 64])
        assert set(r0[k * 32 : (k + 1) * 32]) | set(r1[k * 32 : (k + 1) * 32]) == glob


def test_bucket_window_needs_row_lengths(tmp_path):
    with pytest.raises(ValueError, match="one length per dataset row"):
        EpochShuffleSampler(range(5), lengths=np.ones(4), batch_size=2, bucket_window=2)
    datamodule, _ = build_components(compose_config(tmp_path, ["data.bucket_window=4"]))
    dataset = NextItemTrainDataset(datamodule.split, maxlen=20)
    row_lengths = [len(dataset[i]["items"]) for i in range(len(dataset))]
    np.testing.assert_array_equal(dataset.row_lengths(), row_lengths)
    evaluation = datamodule.build_eval_dataset("val")
    row_lengths = [len(evaluation[u]["items"]) for u in range(len(evaluation))]
    np.testing.assert_array_equal(evaluation.row_lengths(), row_lengths)
    assert len(list(datamodule.train_dataloader())) == len(datamodule.train_dataloader())
    datamodule.make_train_dataset = lambda **kwargs: list(range(10))  # a dataset without row_lengths
    with pytest.raises(ConfigError, match="data.bucket_window=4 needs"):
        datamodule.train_dataloader()


def test_evaluation_ordered_by_length_gives_the_same_metrics(tmp_path):
    import lightning as L

    results = []
    for window in (0, 4):
        L.seed_everything(0)
        datamodule, task = build_components(compose_config(tmp_path, [f"data.bucket_window={window}"]))
        trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                            enable_checkpointing=False, enable_model_summary=False)
        results.append(trainer.validate(task, datamodule=datamodule, verbose=False)[0])
    users = list(datamodule.val_dataloader().sampler)
    assert users != sorted(users)  # the second pass really ran in another order
    assert results[0]["val/ndcg@10"] > 0 and results[1] == pytest.approx(results[0], abs=1e-6)


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
