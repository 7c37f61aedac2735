"""Semantic-ID tokenizers: item embeddings -> n_digit codes of codebook_size each, collision-free.

    index = build_semantic_ids(embeddings, TokenizerConfig(method="rkmeans"))  # [n_items, d] in
    index.save(out_dir); SemanticIDIndex.load(out_dir)
    index.item_id2tokens      # int64 [n_items + 1, n_digit], row 0 = -1 (padding item)
    index.codes_to_items(c)   # int [..., n_digit] -> item ids (0 = no such item)

CLI: `python -m genrec.tokenizers --help`.
"""

from genrec.tokenizers.build import TokenizerConfig, build_semantic_ids, code_utilisation
from genrec.tokenizers.index import SemanticIDIndex, check_capacity, pack_codes

__all__ = ["SemanticIDIndex", "TokenizerConfig", "build_semantic_ids", "check_capacity", "code_utilisation",
           "pack_codes"]
