"""RPG_ED export: encode + decode_step through export(cfg), onnxruntime parity of both graphs, and
constrained beam search through onnxruntime == through PyTorch (genrec/generation/steps.py)."""

import json

import numpy as np
import pytest
import torch
from conftest import CONF
from hydra import compose, initialize_config_dir

from genrec.export.builders import graph_specs
from genrec.export.parity import ort_session
from genrec.export.pipeline import export
from genrec.export.seq2seq import is_seq2seq, random_history, sample_decode_step
from genrec.generation import PrefixConstraint, beam_search, beams_to_items
from genrec.generation.steps import onnx_steps, torch_steps
from genrec.models.rpg_ed import EOS, RPGED
from genrec.tokenizers.index import SemanticIDIndex

pytest.importorskip("onnxruntime")

TINY = dict(n_digit=3, codebook_size=8, n_user_buckets=16, max_history=6, d_model=32, n_heads=4,
            d_inner=64, encoder_layers=2, decoder_layers=2, dropout=0.0)
SHAPES = ("parity.shapes=[{batch:1,hist:1,beam:1,dec_past:1,enc_seq:1},"
          "{batch:3,hist:4,beam:4,dec_past:2,enc_seq:5},{batch:5,hist:6,beam:10,dec_past:3,enc_seq:7}]")


def _net() -> RPGED:
    torch.manual_seed(0)
    return RPGED(**TINY).eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(net, out_dir, summary, manifest): a tiny RPG_ED exported by export(cfg) from a checkpoint
    laid out as training writes it (genrec_config, hyper_parameters.net_config, net.* weights)."""
    tmp = tmp_path_factory.mktemp("rpg_ed_export")
    net = _net()
    ckpt = {"genrec_config": {"model": net.export_config()}, "epoch": 0, "global_step": 0,
            "hyper_parameters": {"net_config": net.export_config()},
            "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}}
    torch.save(ckpt, tmp / "best.ckpt")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("export", overrides=[f"ckpt_path={tmp / 'best.ckpt'}", f"out_dir={tmp / 'export'}",
                                           SHAPES])
    summary = export(cfg)
    manifest = json.loads((tmp / "export" / "manifest.json").read_text())
    return net, tmp / "export", summary, manifest


def test_only_encoder_decoders_get_the_seq2seq_graphs():
    assert [s.name for s in graph_specs(_net())] == ["encode", "decode_step"]
    assert not is_seq2seq(torch.nn.Linear(2, 2))


def test_sample_histories_are_left_padded_with_a_real_item_per_row():
    history = random_history(16, 5, 3, 8, torch.Generator().manual_seed(0))  # [16, 5, 3]
    real = history[..., 0] >= 0  # [16, 5]
    assert real[:, -1].all() and real[0].all() and (~real).any()  # newest always real; some padding
    assert (real.long().diff(dim=1) >= 0).all()  # padding only on the left
    assert ((history >= 0).all(-1) | (history == -1).all(-1)).all()  # whole items padded
    with pytest.raises(ValueError, match="dec_past"):
        sample_decode_step(_net(), {"batch": 1, "beam": 1, "dec_past": 4, "enc_seq": 2}, torch.Generator())


def test_both_graphs_pass_parity_in_both_precisions(exported):
    _, _, summary, manifest = exported
    assert summary["passed"] and summary["graphs"] == ["encode", "decode_step"]
    for name, graph in manifest["graphs"].items():
        for precision, rtol in (("fp32", 1e-4), ("fp16", 1e-2)):
            variant = graph["variants"][precision]
            assert variant["parity"]["passed"], (name, precision, variant["parity"]["per_output"])
            assert variant["parity"]["max_rel_error"] <= rtol
            assert variant["tensorrt_ops_supported"], variant["tensorrt_op_problems"]
            assert len(variant["parity"]["shapes"]) == 3
            assert variant["signature"]["outputs"][0]["dtype"] == "float32"  # log-probs stay FP32
    decode = manifest["graphs"]["decode_step"]
    assert decode["axes"] == ["batch", "beam", "enc_seq", "dec_past"]
    dims = {v["name"]: v["shape"] for v in decode["variants"]["fp32"]["signature"]["outputs"]}
    assert dims["present_kv"][5] == "dec_past + 1" and dims["log_probs"][:2] == ["batch", "beam"]
    assert manifest["graphs"]["encode"]["axes"] == ["batch", "hist"]


def _catalogue(n_items: int, seed: int = 0) -> np.ndarray:
    """item_id2tokens [n_items + 1, 3]: distinct random codes of 3 digits x 8, row 0 = -1."""
    packed = torch.randperm(8**3, generator=torch.Generator().manual_seed(seed))[:n_items]
    codes = torch.stack([packed // 64, packed // 8 % 8, packed % 8], 1)  # [n_items, 3]
    return np.concatenate([np.full((1, 3), -1), codes.numpy()]).astype(np.int64)


def _search(step_fn, state, reorder_fn, constraint: PrefixConstraint, batch: int, beam: int):
    return beam_search(step_fn, state, batch, TINY["n_digit"] + 1, beam, constraint.allowed, reorder_fn)


@pytest.mark.parametrize("n_items", [40, 4])  # 4: fewer valid items than beams
def test_onnxruntime_beam_search_returns_the_pytorch_items(exported, n_items):
    net, out_dir, _, _ = exported
    item_id2tokens = _catalogue(n_items)
    cfg = net.config
    constraint = PrefixConstraint(item_id2tokens, cfg.codebook_size, cfg.vocab_size,
                                  [cfg.digit_range(d)[0] for d in range(cfg.n_digit)], eos_token=EOS)
    index = SemanticIDIndex(item_id2tokens, cfg.codebook_size)
    gen = torch.Generator().manual_seed(1)
    users = torch.randint(0, 10**6, (6,), generator=gen)
    history = random_history(6, 5, cfg.n_digit, cfg.codebook_size, gen)  # [6, 5, 3]
    ref = _search(*torch_steps(net, users, history), constraint, 6, 10)
    sessions = (ort_session(out_dir / "encode.onnx"), ort_session(out_dir / "decode_step.onnx"))
    got = _search(*onnx_steps(*sessions, users, history), constraint, 6, 10)
    ref_items, got_items = beams_to_items(ref, index, constraint), beams_to_items(got, index, constraint)
    assert torch.equal(got_items, ref_items)
    assert torch.equal(got.sequences, ref.sequences)
    torch.testing.assert_close(got.scores, ref.scores, rtol=0, atol=1e-5)
    valid = (ref_items > 0).sum(1)  # [B]
    assert (valid == min(n_items, 10)).all()
    assert torch.isinf(ref.scores[:, n_items:]).all() if n_items < 10 else torch.isfinite(ref.scores).all()


def test_fp16_graphs_drive_the_same_search_within_fp16_tolerance(exported):
    net, out_dir, _, _ = exported
    cfg = net.config
    item_id2tokens = _catalogue(40)
    constraint = PrefixConstraint(item_id2tokens, cfg.codebook_size, cfg.vocab_size,
                                  [cfg.digit_range(d)[0] for d in range(cfg.n_digit)], eos_token=EOS)
    gen = torch.Generator().manual_seed(2)
    users, history = torch.randint(0, 10**6, (6,), generator=gen), random_history(6, 5, 3, 8, gen)
    ref = _search(*torch_steps(net, users, history), constraint, 6, 10)
    sessions = (ort_session(out_dir / "encode.fp16.onnx"), ort_session(out_dir / "decode_step.fp16.onnx"))
    got = _search(*onnx_steps(*sessions, users, history), constraint, 6, 10)
    torch.testing.assert_close(got.scores, ref.scores, rtol=0, atol=2e-2)  # 4 steps of fp16 log-probs
    assert torch.equal(got.sequences[:, 0], ref.sequences[:, 0])  # the best item


def test_onnx_reorder_refuses_a_parent_of_another_user(exported):
    net, out_dir, _, _ = exported
    sessions = (ort_session(out_dir / "encode.onnx"), ort_session(out_dir / "decode_step.onnx"))
    users, history = torch.arange(2), random_history(2, 3, 3, 8, torch.Generator().manual_seed(0))
    step, state, reorder = onnx_steps(*sessions, users, history)
    _, state = step(None, state)
    reorder(state, torch.tensor([0, 0, 1, 1]))  # two beams per user, parents of their own user
    with pytest.raises(ValueError, match="within each user"):
        reorder(state, torch.tensor([0, 1, 1, 1]))
