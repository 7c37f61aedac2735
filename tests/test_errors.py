"""Issue 13: bad input ends in one named sentence, a bad resume touches nothing, outputs are
checked before the work, and a checkpoint with a pickle payload is refused without running it."""

from __future__ import annotations

import errno
import functools
import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY, TINY_DATA, compose_config
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.loggers import CSVLogger
from omegaconf import OmegaConf

import genrec.run.training as training
from genrec.data.datamodule import SequenceDataModule
from genrec.export.pipeline import find_checkpoint
from genrec.models.sasrec import SASRecConfig
from genrec.models.tisasrec import TiSASRecConfig
from genrec.run.callbacks import AtomicCheckpointIO, DiskFullError
from genrec.run.checkpoint import CONFIG_KEY, CheckpointError, ConfigInCheckpoint, read_checkpoint
from genrec.run.cli import one_line, run_cli
from genrec.run.evaluation import evaluate
from genrec.run.resume import check_resume, keep_csv_history
from genrec.tasks.next_item import NextItemTask
from genrec.validation import ConfigError, check_creatable, check_range

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
ENV.pop("HYDRA_FULL_ERROR", None)
ENV.pop("GENREC_DEBUG", None)


# ---- numeric ranges, checked when the object is built, naming the field ----
@pytest.mark.parametrize(("field", "value", "message"), [
    ("num_blocks", -1, "model.num_blocks=-1: must be an integer >= 1"),
    ("num_blocks", 0, "model.num_blocks=0: must be an integer >= 1"),
    ("hidden_units", "abc", "model.hidden_units='abc': must be an integer >= 1"),
    ("hidden_units", 0, "model.hidden_units=0: must be an integer >= 1"),
    ("hidden_units", 2.5, "model.hidden_units=2.5: must be an integer"),
    ("num_heads", 0, "model.num_heads=0: must be an integer >= 1"),
    ("num_heads", 3, "model.hidden_units=32: must be divisible by model.num_heads=3"),
    ("maxlen", 0, "model.maxlen=0: must be an integer >= 1"),
    ("dropout", 1.0, "model.dropout=1.0: must be a number >= 0 and < 1"),
    ("dropout", -0.1, "model.dropout=-0.1"),
    ("dropout", "x", "model.dropout='x': must be a number"),
    ("mhc_expansion", 0, "model.mhc_expansion=0"),
    ("mhc_sinkhorn_iters", 0, "model.mhc_sinkhorn_iters=0"),
    ("init_std", -1.0, "model.init_std=-1.0"),
    ("n_items", 0, "model.n_items=0"),
])
def test_model_config_ranges_name_the_field(field, value, message):
    fields = {"n_items": 10, "hidden_units": 32, field: value}
    with pytest.raises(ConfigError, match=re.escape(message)):
        SASRecConfig(**fields)
    with pytest.raises(ConfigError, match=re.escape(message)):
        TiSASRecConfig(**fields)  # the subclass keeps the checks


def test_tisasrec_time_span_and_valid_configs():
    with pytest.raises(ConfigError, match="model.time_span=0: must be an integer >= 1"):
        TiSASRecConfig(n_items=5, time_span=0)
    assert SASRecConfig(n_items=5, hidden_units=64, num_heads=4, dropout=0, init_std=0.02).num_heads == 4
    assert check_range("x", 3, lo=1) == 3
    with pytest.raises(ConfigError, match="x=True"):
        check_range("x", True, lo=0)  # a bool is not a number here


@pytest.mark.parametrize(("field", "value"), [
    ("maxlen", 0), ("maxlen", -5), ("batch_size", 0), ("eval_batch_size", 0), ("num_workers", -1),
    ("kcore", -1), ("min_length", 2), ("sampled_negatives", -1), ("maxlen", "abc"), ("batch_size", 1.5),
])
def test_data_ranges_name_the_field(field, value):
    with pytest.raises(ConfigError, match=rf"^data\.{field}="):
        SequenceDataModule(source=None, **{field: value})


@pytest.mark.parametrize(("args", "message"), [
    ({"ks": [0, 10]}, r"task.ks\[0\]=0"),
    ({"ks": []}, "task.ks"),
    ({"ks": "abc"}, "task.ks"),
    ({"weight_decay": -0.1}, "task.weight_decay=-0.1"),
    ({"optimizer": functools.partial(torch.optim.Adam, lr=0)}, "task.optimizer.lr=0"),
    ({"optimizer": functools.partial(torch.optim.Adam, lr="fast")}, "task.optimizer.lr='fast'"),
])
def test_task_ranges_name_the_field(args, message):
    kwargs = {"net": None, "optimizer": functools.partial(torch.optim.Adam, lr=1e-3), **args}
    with pytest.raises(ConfigError, match=message):
        NextItemTask(**kwargs)


def test_hydra_wrapped_config_error_is_one_line_and_unexpected_errors_are_not():
    with pytest.raises(InstantiationException) as info:
        instantiate({"_target_": "genrec.models.sasrec.SASRec", "n_items": 5, "num_blocks": -1})
    assert one_line(info.value) == "model.num_blocks=-1: must be an integer >= 1"
    assert one_line(ZeroDivisionError("x")) is None  # unanticipated: keeps its traceback
    assert one_line(OSError(errno.ENOSPC, "No space left on device", "/mnt/x")) == "no space left on /mnt/x"


# ---- outputs checked before the expensive work; disk full in one line ----
def test_unwritable_checkpoint_dir_fails_before_any_data_or_training(tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("")  # a directory below a file cannot be made, even as root
    cfg = compose_config(tmp_path, [f"callbacks.model_checkpoint.dirpath={blocker}/checkpoints"])

    def never(*args, **kwargs):
        raise AssertionError("data and model were built before the output check")

    monkeypatch.setattr(training, "build_components", never)
    with pytest.raises(ConfigError, match=r"model_checkpoint.dirpath=.*a_file/checkpoints: .*not writable"):
        training.train(cfg)
    cfg = compose_config(tmp_path, [])
    cfg.paths.output_dir = str(blocker / "run")
    with pytest.raises(ConfigError, match=r"paths.output_dir=.*not writable"):
        training.train(cfg)


def test_hydra_run_dir_below_a_file_is_refused_without_creating_anything(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match=r"hydra.run.dir=.*a_file/x/y: .*a_file is a file"):
        check_creatable("hydra.run.dir", blocker / "x" / "y")
    check_creatable("hydra.run.dir", tmp_path / "new" / "run")
    assert not (tmp_path / "new").exists()


def test_evaluate_checks_output_dir_before_reading_the_checkpoint(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    cfg = compose_config(tmp_path, [f"ckpt_path={tmp_path / 'missing.ckpt'}", f"output_dir={blocker}/eval"],
                         config_name="evaluate")
    with pytest.raises(ConfigError, match="output_dir=.*not writable"):  # not the missing checkpoint
        evaluate(cfg)


def test_disk_full_while_saving_says_where_in_one_line(tmp_path, monkeypatch):
    io, path = AtomicCheckpointIO(), tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"step": 1}, path)

    def full(obj, f, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(DiskFullError) as info:
        io.save_checkpoint({"step": 2}, path)
    monkeypatch.undo()
    assert one_line(info.value).startswith(f"no space left on {path.parent}")
    assert torch.load(path, weights_only=True)["step"] == 1  # the earlier checkpoint survives
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]


# ---- untrusted checkpoints ----
class _Payload:
    """Unpickling this creates `marker`: what an attacker's checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_checkpoint_with_a_pickle_payload_is_refused_and_never_runs(tmp_path):
    marker, evil = tmp_path / "MARKER", tmp_path / "evil.ckpt"
    torch.save({CONFIG_KEY: {}, "state_dict": {}, "global_step": 1, "x": _Payload(marker)}, evil)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match=r"evil.ckpt: holds pickled .*allow_unsafe_checkpoint=true"):
        read_checkpoint(evil)
    with pytest.raises(CheckpointError, match="refused"):
        check_resume(["train.py", f"ckpt_path={evil}"], ROOT / "conf")
    with pytest.raises(CheckpointError, match="refused"):
        keep_csv_history([CSVLogger(tmp_path / "csv")], str(evil))
    assert not marker.exists()
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(b"not a checkpoint")  # a broken file is not called a pickle payload
    with pytest.raises(CheckpointError, match=r"corrupt.ckpt: not a readable PyTorch checkpoint"):
        read_checkpoint(corrupt)
    # the documented opt-in loads it (and so runs it), with a warning naming the file
    read_checkpoint(evil, allow_unsafe=True)
    assert marker.exists()


def test_genrec_checkpoints_hold_plain_data_only(tmp_path):
    """Lightning puts the task's hparams (a Hydra partial optimizer, ListConfigs) in every
    checkpoint; ConfigInCheckpoint stores them as plain config, so weights_only=True loads."""
    cfg = compose_config(tmp_path, [])
    optimizer = instantiate(cfg.task.optimizer)
    checkpoint = {"state_dict": {"w": torch.ones(2)},
                  "hyper_parameters": {"optimizer": optimizer, "ks": OmegaConf.create([5, 10])}}
    ConfigInCheckpoint(cfg.model).on_save_checkpoint(None, None, checkpoint)
    torch.save(checkpoint, tmp_path / "c.ckpt")
    loaded = torch.load(tmp_path / "c.ckpt", weights_only=True)
    assert loaded["hyper_parameters"]["optimizer"] == {"_target_": "torch.optim.adam.Adam", "_partial_": True,
                                                       "lr": 0.001, "betas": [0.9, 0.98]}
    assert loaded["hyper_parameters"]["ks"] == [5, 10]


# ---- resume: a config that does not fit the checkpoint fails before Hydra writes anything ----
def _fake_run(tmp_path: Path, overrides: list[str]) -> Path:
    cfg = compose_config(tmp_path, overrides)
    stored = {"model": OmegaConf.to_container(cfg.model, resolve=True),
              "data": OmegaConf.to_container(cfg.data.source, resolve=True)}
    stored["data"] = {"source": stored["data"], "kcore": cfg.data.kcore, "min_length": cfg.data.min_length}
    path = tmp_path / "run" / "checkpoints" / "last.ckpt"
    path.parent.mkdir(parents=True)
    torch.save({CONFIG_KEY: stored, "state_dict": {}}, path)
    return path


def test_check_resume_names_the_field_that_differs(tmp_path):
    tiny = [*TINY_DATA, *TINY]
    path = _fake_run(tmp_path, [])
    check_resume(["train.py", f"ckpt_path={path}", *tiny, "trainer.max_epochs=9"], ROOT / "conf")  # fits
    with pytest.raises(ConfigError, match=r"hidden_units=16 does not fit the checkpoint .*hidden_units=32"):
        check_resume(["train.py", f"ckpt_path={path}", *tiny, "model.hidden_units=16"], ROOT / "conf")
    with pytest.raises(ConfigError, match=r"model._target_='genrec.models.tisasrec.TiSASRec'"):
        check_resume(["train.py", f"ckpt_path={path}", *tiny, "model=tisasrec"], ROOT / "conf")
    with pytest.raises(ConfigError, match=r"data.source.n_items=99 does not fit"):
        check_resume(["train.py", f"ckpt_path={path}", *tiny, "data.source.n_items=99"], ROOT / "conf")
    with pytest.raises(CheckpointError, match="last.ckpt does not exist"):
        check_resume(["train.py", "ckpt_path=last", f"hydra.run.dir={tmp_path / 'nothing'}"], ROOT / "conf")


def _run(script: str, args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, script, *args], cwd=ROOT, env=env or ENV,
                          capture_output=True, text=True, timeout=300)


def test_run_cli_turns_anticipated_errors_into_one_line(monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.delenv("GENREC_DEBUG", raising=False)

    @run_cli
    def fails(err):
        raise err

    with pytest.raises(SystemExit) as info:
        fails(ConfigError("model.num_blocks=-1: must be an integer >= 1"))
    assert info.value.code == "model.num_blocks=-1: must be an integer >= 1"  # exit status 1
    with pytest.raises(SystemExit, match="^missing.ckpt: checkpoint file does not exist$"):
        fails(CheckpointError("missing.ckpt: checkpoint file does not exist"))
    with pytest.raises(ZeroDivisionError):  # unanticipated: the traceback stays
        fails(ZeroDivisionError("bug"))
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(ConfigError):  # everything, with its traceback
        fails(ConfigError("x"))


@pytest.mark.slow
def test_cli_prints_one_line_and_exits_nonzero(tmp_path):
    args = [*TINY_DATA, *TINY, "data.maxlen=0", f"hydra.run.dir={tmp_path / 'run'}",
            f"paths.data_dir={tmp_path / 'data'}"]
    proc = _run("train.py", args)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert lines[-1] == "data.maxlen=0: must be an integer >= 1"
    assert [line for line in lines if "data.maxlen" in line] == lines[-1:]  # one sentence, once
    assert "Traceback" not in proc.stdout + proc.stderr
    full = _run("train.py", args, env={**ENV, "HYDRA_FULL_ERROR": "1"})
    assert full.returncode == 1 and "Traceback" in full.stderr and "data.maxlen=0" in full.stderr
    # a failed ckpt_path=last stops before Hydra: no empty run folder left behind
    gone = tmp_path / "never"
    proc = _run("train.py", ["ckpt_path=last", f"hydra.run.dir={gone}"])
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1
    assert "ckpt_path=last" in proc.stderr and not gone.exists()


@pytest.mark.slow
def test_resume_mismatch_leaves_the_run_byte_identical_and_evaluate_export_name_the_problem(tmp_path):
    cfg = compose_config(tmp_path, ["trainer.max_epochs=1", "logger=csv"])
    metrics = training.train(cfg)
    run = Path(cfg.paths.output_dir)
    (run / ".hydra").mkdir()
    (run / ".hydra" / "overrides.yaml").write_text("[]\n")

    def digest() -> dict[str, str]:
        return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(run.rglob("*")) if p.is_file()}

    before = digest()
    assert {"config.yaml", "csv/hparams.yaml", "csv/metrics.csv", ".hydra/overrides.yaml"} <= set(before)
    tiny = [*TINY_DATA, *(t for t in TINY if t != "logger=none"), "logger=csv",
            f"paths.data_dir={tmp_path / 'data'}"]
    for bad in ([f"ckpt_path={run}/checkpoints/last.ckpt", "model.hidden_units=16"],
                ["ckpt_path=last", f"hydra.run.dir={run}", "model=tisasrec"]):
        proc = _run("train.py", [*tiny, *bad])
        assert proc.returncode == 1, proc.stderr[-2000:]
        assert len(proc.stderr.strip().splitlines()) == 1 and "does not fit the checkpoint" in proc.stderr
        assert digest() == before

    best = Path(metrics["best_checkpoint"])
    eval_cfg = compose_config(tmp_path, [f"ckpt_path={best}", f"output_dir={tmp_path / 'eval'}",
                                         "progress_bar=false", "+data_overrides.source.n_items=100"],
                              config_name="evaluate")
    with pytest.raises(CheckpointError, match=r"trained with n_items=120, but the data .* gives n_items=100"):
        evaluate(eval_cfg)

    best.unlink()
    with pytest.raises(CheckpointError, match=rf"best checkpoint {best} is recorded in .* but missing"):
        find_checkpoint(str(run), None)
