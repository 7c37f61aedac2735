"""Build semantic IDs from the command line.

    python -m genrec.tokenizers --source checkpoint --ckpt outputs/.../best.ckpt --method rkmeans --out DIR
    python -m genrec.tokenizers --source text --dataset beauty --method opq --out DIR   # needs genrec[text]

Writes item_id2tokens.npy, tokens2item.npz and semantic_ids.json to --out and logs the collision
count and the code utilisation per digit.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from genrec.rank_zero_log import get_logger
from genrec.run.cli import run_cli
from genrec.tokenizers.build import TokenizerConfig, build_semantic_ids
from genrec.tokenizers.embeddings import ITEM_TABLE_KEY, checkpoint_item_embeddings, text_item_embeddings
from genrec.tokenizers.item_text import beauty_item_texts, movielens_item_texts

log = get_logger("genrec.tokenizers")
STAGES = ("embeddings", "fit", "encode", "resolve", "save")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m genrec.tokenizers", description=__doc__.split("\n")[0])
    p.add_argument("--source", choices=("checkpoint", "text"), required=True)
    p.add_argument("--ckpt", help="checkpoint whose item table is embedded (--source checkpoint)")
    p.add_argument("--emb-key", default=ITEM_TABLE_KEY, help="state_dict key of the item table")
    p.add_argument("--allow-unsafe-checkpoint", action="store_true",
                   help="load a checkpoint with weights_only=False (only for files you trust)")
    p.add_argument("--dataset", choices=("beauty", "ml-1m"), help="item text to embed (--source text)")
    p.add_argument("--shared-data", default="../shared/data", help="folder of the public data files")
    p.add_argument("--sequences", help="processed .npz of the dataset (its raw item ids fix the item order); "
                   "default: raw ids 1..n, as genrec numbers Beauty.txt and ml-1m.txt")
    p.add_argument("--cache-dir", help="where text embeddings are cached (default: beside --sequences, "
                   "else data/processed/<dataset>)")
    p.add_argument("--method", choices=("opq", "rkmeans"), default="rkmeans")
    p.add_argument("--n-digit", type=int, default=4)
    p.add_argument("--codebook-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--niter", type=int, default=25, help="k-means iterations per codebook")
    p.add_argument("--normalize", action="store_true", help="L2-normalise embeddings first")
    p.add_argument("--threads", type=int, default=None, help="faiss OpenMP threads")
    p.add_argument("--out", required=True, help="output folder")
    return p.parse_args(argv)


def _raw_item_ids(args: argparse.Namespace, n_default: int) -> np.ndarray:
    if args.sequences:
        from genrec.data.interactions import Sequences
        return Sequences.load(Path(args.sequences)).raw_item_ids
    return np.arange(1, n_default + 1)


def item_texts(args: argparse.Namespace) -> list[str]:
    root = Path(args.shared_data)
    if args.dataset == "beauty":
        attributes = root / "beauty-5core-s3rec/Beauty_item2attributes.json"
        return beauty_item_texts(root / "beauty-5core-meta", attributes, _raw_item_ids(args, 12101))
    if args.dataset == "ml-1m":
        mapping = root / "ml-1m-sasrec/sas_to_original_items.txt"
        movies = root / "ml-1m-grouplens-meta/movies.dat"
        return movielens_item_texts(movies, mapping, _raw_item_ids(args, 3416))
    raise SystemExit("error: --source text needs --dataset beauty|ml-1m")


def load_embeddings(args: argparse.Namespace) -> tuple[np.ndarray, dict]:
    if args.source == "checkpoint":
        if not args.ckpt:
            raise SystemExit("error: --source checkpoint needs --ckpt PATH")
        emb = checkpoint_item_embeddings(args.ckpt, args.emb_key, args.allow_unsafe_checkpoint)
        return emb, {"source": "checkpoint", "ckpt": str(args.ckpt), "emb_key": args.emb_key}
    texts = item_texts(args)
    default_cache = Path(args.sequences).parent if args.sequences else Path("data/processed") / args.dataset
    emb = text_item_embeddings(texts, args.cache_dir or default_cache)
    return emb, {"source": "text", "dataset": args.dataset}


def report(meta: dict) -> None:
    util = ", ".join(f"{u:.1%}" for u in meta["utilisation"])
    before = ", ".join(f"{u:.1%}" for u in meta["utilisation_before"])
    log.info("collisions before resolution: %d items (%d shared codes, at most %d items on one code); "
             "moved by freed trailing digits: %s", meta["collisions"], meta["shared_codes"],
             meta["max_bucket"], meta["moved_by_freed_digits"] or "{}")
    log.info("code utilisation per digit: %s (before resolution: %s)", util, before)
    log.info("faiss fit %.2f s, whole build %.2f s", meta["fit_seconds"], meta["build_seconds"])


@run_cli
def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    cfg = TokenizerConfig(args.method, args.n_digit, args.codebook_size, args.seed, args.niter,
                          args.normalize, args.threads)
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TimeElapsedColumn())
    with Progress(*columns) as bar:
        task = bar.add_task("semantic IDs: embeddings", total=len(STAGES))

        def advance(done: str) -> None:
            nxt = STAGES[STAGES.index(done) + 1] if done != STAGES[-1] else "done"
            bar.update(task, advance=1, description=f"semantic IDs: {nxt}")

        emb, meta = load_embeddings(args)
        advance("embeddings")
        index = build_semantic_ids(emb, cfg, on_stage=advance, meta={**meta, "n_embeddings": len(emb)})
        out = index.save(args.out)
        advance("save")
    log.info("wrote %s: %d items x %d digits (inverted index %.1f MB)", out, index.n_items, index.n_digit,
             index.inverted_nbytes / 1e6)
    report(index.meta)
    return index.meta


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
