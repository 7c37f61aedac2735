"""Step adapters: one encoder-decoder behind the beam-search step interface (genrec/generation/beam.py),
run by PyTorch or by its exported `encode` / `decode_step` graphs in onnxruntime, so the same
`beam_search(step_fn, init_state, batch_size, n_steps, beam_size, allowed_fn, reorder_fn)` call
drives either:

    step_fn, state, reorder_fn = torch_steps(net, users, history)            # or onnx_steps(...)
    out = beam_search(step_fn, state, len(users), n_digit + 1, 10, constraint.allowed, reorder_fn)

The model needs `prefill(users, history) -> (log_probs, cache)` and
`decode(tokens, cache) -> (log_probs, cache)`; the graphs are genrec/export/seq2seq.py's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from genrec.generation.beam import ReorderFn, StepFn


def torch_steps(net: torch.nn.Module, users: torch.Tensor,
                history: torch.Tensor) -> tuple[StepFn, object, ReorderFn]:
    """(step_fn, init_state, reorder_fn) over net.prefill / net.decode; the state is the model's
    cache, reordered by `cache.reorder(parents)` (genrec/models/cache.py KVCache; call 0 encodes
    users int64 [B] and history int64 [B, H, n_digit])."""

    def step(tokens: torch.Tensor | None, cache):
        with torch.no_grad():
            return net.prefill(users, history) if tokens is None else net.decode(tokens, cache)

    def reorder(cache, index: torch.Tensor):
        # after the first step a parent is always a beam of the same user (beam_search's
        # invariant), whose fixed cross K/V is identical: only the growing part moves
        if len(index) == cache.kv.shape[2] and hasattr(cache, "reorder_within_groups"):
            return cache.reorder_within_groups(index)
        return cache.reorder(index)  # B users -> B * beam rows: every part follows

    return step, None, reorder


@dataclass
class OnnxState:
    """self_kv [L, 2, R, H, P, Dh] (R = B * rows_per_user), cross_kv [L, 2, B, H, S, Dh] and
    enc_valid [B, S] per user (a beam parent never leaves its user, so they are never reordered)."""

    self_kv: np.ndarray
    cross_kv: np.ndarray
    enc_valid: np.ndarray
    rows_per_user: int


def _feeds(session, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Inputs in the dtypes the session declares (an FP16 graph takes its K/V in FP16)."""
    dtypes = {i.name: _ORT_DTYPES[i.type] for i in session.get_inputs()}
    return {k: np.ascontiguousarray(v, dtype=dtypes[k]) for k, v in arrays.items()}


_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
               "tensor(bool)": np.bool_}


def onnx_steps(encode, decode_step, users: torch.Tensor | np.ndarray,
               history: torch.Tensor | np.ndarray) -> tuple[StepFn, object, ReorderFn]:
    """(step_fn, init_state, reorder_fn) over two onnxruntime sessions (encode, decode_step);
    log-probs come back as float32 torch tensors [R, V], the state as an OnnxState."""
    users, history = np.asarray(users), np.asarray(history)
    b = len(users)

    def step(tokens: torch.Tensor | None, state: OnnxState | None):
        if tokens is None:
            log_probs, present, cross, valid = encode.run(
                None, _feeds(encode, {"users": users, "history": history}))
            return torch.from_numpy(log_probs), OnnxState(present, cross, valid, 1)
        beam = state.rows_per_user
        kv = state.self_kv
        past = kv.reshape(*kv.shape[:2], b, beam, *kv.shape[3:])  # [L, 2, B, beam, H, P, Dh]
        feeds = {"tokens": tokens.cpu().numpy().reshape(b, beam), "past_kv": past,
                 "cross_kv": state.cross_kv, "enc_valid": state.enc_valid}
        # log_probs [B, beam, V], present [L, 2, B, beam, H, P + 1, Dh]
        log_probs, present = decode_step.run(None, _feeds(decode_step, feeds))
        kv = present.reshape(*present.shape[:2], b * beam, *present.shape[4:])  # [L, 2, R, H, P + 1, Dh]
        state = OnnxState(kv, state.cross_kv, state.enc_valid, beam)
        return torch.from_numpy(log_probs.reshape(b * beam, -1)), state

    def reorder(state: OnnxState, index: torch.Tensor) -> OnnxState:
        index = index.cpu().numpy()  # [B * beam] parent row of each new row
        beam = len(index) // b
        users_of = np.repeat(np.arange(b), beam)  # [B * beam]
        if len(index) != b * beam or (index // state.rows_per_user != users_of).any():
            raise ValueError("onnx_steps: a reorder may only pick parents within each user's rows "
                             "(the cross K/V is kept per user)")
        return OnnxState(np.take(state.self_kv, index, axis=2), state.cross_kv, state.enc_valid, beam)

    return step, None, reorder
