"""RPG_ED on Amazon Beauty: generation throughput with and without the KV cache, training cost,
and (with --full) the full runs next to SASRec CE.

    python benchmarks/rpg_ed.py                  # cheap part: (a) + (b), minutes on 2 CPU cores
    python benchmarks/rpg_ed.py --full           # + the full experiments (hours on 2 CPU cores)

(a) users/s of beam-10 constrained generation on real Beauty validation histories, through the
    KV cache (net.prefill / net.decode via genrec.generation.steps.torch_steps) and through a step
    function that recomputes the whole model over the prefix every step
    (net(users, history, decoder_input=prefix)); both return the same items (asserted).
(b) seconds per training epoch and peak RSS: a plain loop (seq2seq_loss + the experiment's
    optimizer) over `--train-batches` batches, extrapolated to the epoch's batch count.
Both at the experiment's size and at the reference size (conf/model/rpg_ed.yaml, d 448, 4 + 4
layers); the reference model is untrained (throughput does not depend on the weights). Each size
runs in its own process, so its peak RSS is its own.
(c) --full: experiment=rpg_ed_beauty with residual k-means and with OPQ codes, and
    experiment=sasrec_beauty_ce, each through genrec.run.training.train: test Recall/NDCG@5/10
    (one held-out item, so HR@K = Recall@K), median s/epoch, minutes.
Writes benchmarks/results/rpg_ed.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import (  # benchmarks/common.py (this folder is on sys.path)
    compose_experiment,
    epoch_log,
    in_child,
    peak_rss_mb,
)

ROOT = Path(__file__).resolve().parent.parent
SIZES = {"experiment": [], "reference": ["model.d_model=448", "model.n_heads=8", "model.d_inner=1024",
                                         "model.encoder_layers=4", "model.decoder_layers=4",
                                         "model.n_user_buckets=10000", "data.maxlen=50"]}
FULL_RUNS = {"rpg_ed_rkmeans": ("rpg_ed_beauty", ["data.semantic_ids.method=rkmeans"]),
             "rpg_ed_opq": ("rpg_ed_beauty", ["data.semantic_ids.method=opq"]),
             "sasrec_ce": ("sasrec_beauty_ce", [])}
TEST_KEYS = ("hr@5", "hr@10", "ndcg@5", "ndcg@10")


def recompute_steps(net, users, history):
    """A step function without a cache: every step runs net(users, history, decoder_input=prefix)
    over the whole prefix (encoder included); the state is (prefix [R, t], users [R], history [R, ...])."""
    import torch

    from genrec.models.rpg_ed import BOS

    def step(tokens, state):
        if tokens is None:
            prefix = torch.full((users.shape[0], 1), BOS, dtype=torch.long)  # [B, 1]
            state = (prefix, users, history)
        else:
            prefix = torch.cat([state[0], tokens], 1)  # [R, t + 1]
            state = (prefix, state[1], state[2])
        with torch.no_grad():
            logits = net(state[1], state[2], decoder_input=state[0])  # [R, t + 1, V]
        return logits[:, -1].log_softmax(-1), state

    def reorder(state, index):
        return tuple(x[index] for x in state)

    return step, None, reorder


def _generate(net, users, history, index, constraint, beam: int, cached: bool):
    from genrec.generation.beam import beam_search
    from genrec.generation.generator import generate_items
    from genrec.generation.items import beams_to_items

    if cached:
        return generate_items(net, users, history, index, constraint, beam)[0]
    step, state, reorder = recompute_steps(net, users, history)
    out = beam_search(step, state, len(users), index.n_digit, beam, constraint.allowed, reorder)
    return beams_to_items(out, index, constraint)


def measure_size(experiment: str, overrides: list[str], batch: int, gen_batches: int, beam: int,
                 train_batches: int, queue) -> None:
    """(a) and (b) for one model size, in its own process."""
    import lightning as L
    import torch
    from hydra.utils import instantiate

    from genrec.generation.trie import PrefixConstraint
    from genrec.run.training import build_components
    from genrec.tasks.semantic_id import seq2seq_loss

    cfg = compose_experiment(experiment, Path(tempfile.mkdtemp()),
                             [f"data.eval_batch_size={batch}", *overrides])
    L.seed_everything(cfg.seed, workers=True)
    datamodule, task = build_components(cfg)
    net, index = task.net, datamodule.index
    c = net.config
    constraint = PrefixConstraint(index.item_id2tokens, c.codebook_size, c.vocab_size,
                                  [c.digit_range(d)[0] for d in range(c.n_digit)])
    result = {"params": sum(p.numel() for p in net.parameters()), "d_model": c.d_model,
              "layers": f"{c.encoder_layers}+{c.decoder_layers}", "heads": c.n_heads}

    # (a) generation: the same validation batches through both step functions
    net.eval()
    batches = []
    for i, b in enumerate(datamodule.val_dataloader()):
        if i == gen_batches:
            break
        batches.append(b)
    users_total = sum(len(b.users) for b in batches)
    for cached in (True, False):
        start, cpu_start = time.perf_counter(), time.process_time()
        items = [_generate(net, b.users, b.history_codes, index, constraint, beam, cached) for b in batches]
        seconds = time.perf_counter() - start
        result["cached" if cached else "recompute"] = {"users": users_total, "seconds": seconds,
                                                       "users_per_s": users_total / seconds,
                                                       "cpu_seconds": time.process_time() - cpu_start}
        if cached:
            reference_items = items
        else:
            same = all(torch.equal(a, b) for a, b in zip(items, reference_items, strict=True))
            assert same, "beam search with and without the KV cache returned different items"
    result["cache_speedup"] = result["cached"]["users_per_s"] / result["recompute"]["users_per_s"]
    n_val = len(datamodule.val_dataloader().dataset)
    result["val_users"] = n_val
    result["val_pass_seconds_extrapolated"] = n_val / result["cached"]["users_per_s"]
    result["peak_rss_mb_after_generation"] = peak_rss_mb()

    # (b) training: a plain loop over `train_batches` batches, extrapolated to the epoch
    net.train()
    optimizer = instantiate(cfg.task.optimizer)(params=net.parameters())
    loader = datamodule.train_dataloader()
    seconds, cpu_seconds, losses = [], [], []
    it = iter(loader)
    for _ in range(train_batches + 1):  # the first batch is warm-up, not timed
        b = next(it)
        start, cpu_start = time.perf_counter(), time.process_time()
        loss = seq2seq_loss(net, b)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seconds.append(time.perf_counter() - start)
        cpu_seconds.append(time.process_time() - cpu_start)
        losses.append(loss.item())
    per_batch = statistics.median(seconds[1:])
    result.update({"train_batches_timed": train_batches, "train_batch_size": cfg.data.batch_size,
                   "train_batches_per_epoch": len(loader), "s_per_batch": per_batch,
                   "s_per_epoch_extrapolated": per_batch * len(loader),
                   "cpu_s_per_batch": statistics.median(cpu_seconds[1:]),
                   "torch_threads": torch.get_num_threads(), "train_loss_first_last": [
                       losses[0], losses[-1]], "peak_rss_mb": peak_rss_mb()})
    queue.put(result)


def full_run(experiment: str, overrides: list[str], run_dir: str, queue) -> None:
    from genrec.run.training import train

    cfg = compose_experiment(experiment, Path(run_dir), overrides)
    start = time.perf_counter()
    metrics = train(cfg)
    log = epoch_log(Path(run_dir))
    epoch_s = [r["time/epoch_seconds"] for r in log if "time/epoch_seconds" in r]
    queue.put({"test": {k: metrics.get(f"test/{k}") for k in TEST_KEYS},
               "val_best_ndcg@10": metrics.get("val/ndcg@10_best"),
               "epochs_run": len(epoch_s), "s_per_epoch": statistics.median(epoch_s) if epoch_s else None,
               "minutes": (time.perf_counter() - start) / 60, "peak_rss_mb": peak_rss_mb(),
               "overrides": overrides})


def recorded_run(run_dir: Path) -> dict:
    """A finished `python train.py experiment=... logger=csv` run, in full_run's layout (peak RSS
    is not known from the files)."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    log = epoch_log(run_dir)
    epoch_s = [r["time/epoch_seconds"] for r in log if "time/epoch_seconds" in r]
    minutes = max((r["time/elapsed_minutes"] for r in log if "time/elapsed_minutes" in r), default=None)
    val = [{"epoch": int(r["epoch"]) + 1, "ndcg@10": r["val/ndcg@10"], "hr@10": r.get("val/hr@10"),
            "loss": r.get("val/loss")} for r in log if "val/ndcg@10" in r]
    return {"test": {k: metrics.get(f"test/{k}") for k in TEST_KEYS},
            "popularity_test": {k: metrics.get(f"popularity/test/{k}") for k in TEST_KEYS},
            "val_best_ndcg@10": metrics.get("val/ndcg@10_best"), "validation": val,
            "epochs_run": len(epoch_s), "s_per_epoch": statistics.median(epoch_s) if epoch_s else None,
            "minutes": minutes, "peak_rss_mb": None, "data": metrics.get("data"),
            "run_dir": str(run_dir)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default="rpg_ed_beauty")
    parser.add_argument("--batch", type=int, default=64, help="users per generation batch")
    parser.add_argument("--gen-batches", type=int, default=2, help="generation batches per size")
    parser.add_argument("--beam", type=int, default=10)
    parser.add_argument("--train-batches", type=int, default=10, help="timed training batches per size")
    parser.add_argument("--sizes", nargs="*", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--full", action="store_true", help="also run the full experiments (hours)")
    parser.add_argument("--record-run", metavar="NAME=RUN_DIR", action="append", default=[],
                        help="add a finished train.py run (logger=csv) to the JSON's full runs, keeping "
                             "what the JSON already holds; no measurement is made")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "rpg_ed.json"))
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    args = parser.parse_args()

    result = {"experiment": args.experiment, "beam": args.beam, "overrides": args.overrides,
              "note": "s/epoch extrapolated from train_batches_timed batches; val pass extrapolated "
                      "from cached users/s", "sizes": {}, "full": {}}
    if args.record_run:
        result = json.loads(Path(args.out).read_text()) if Path(args.out).is_file() else result
        for item in args.record_run:
            name, run_dir = item.split("=", 1)
            result["full"][name] = recorded_run(Path(run_dir))
        args.sizes, args.full = [], False
    for size in args.sizes:
        result["sizes"][size] = in_child(measure_size, args.experiment, SIZES[size] + args.overrides,
                                          args.batch, args.gen_batches, args.beam, args.train_batches)
    if args.full:
        for name, (experiment, overrides) in FULL_RUNS.items():
            run_dir = tempfile.mkdtemp(prefix=f"bench-{name}-")
            result["full"][name] = in_child(full_run, experiment, overrides + args.overrides, run_dir)
    _table(result)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    from genrec.rank_zero_log import get_logger

    get_logger(__name__).info("wrote %s", args.out)


def _table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"RPG_ED on Beauty ({result['experiment']}, beam {result['beam']})")
    table.add_column("measure")
    for size in result["sizes"]:
        table.add_column(size, justify="right")
    rows = [("d_model / layers / heads", lambda r: f"{r['d_model']} / {r['layers']} / {r['heads']}"),
            ("parameters (M)", lambda r: f"{r['params'] / 1e6:.2f}"),
            ("users/s, KV cache", lambda r: f"{r['cached']['users_per_s']:.1f}"),
            ("users/s, recompute", lambda r: f"{r['recompute']['users_per_s']:.1f}"),
            ("cache speed-up", lambda r: f"{r['cache_speedup']:.2f}x"),
            ("val pass (s, extrapolated)", lambda r: f"{r['val_pass_seconds_extrapolated']:.0f}"),
            ("s / train batch", lambda r: f"{r['s_per_batch']:.3f}"),
            ("s / epoch (extrapolated)", lambda r: f"{r['s_per_epoch_extrapolated']:.0f}"),
            ("CPU s / train batch (all threads)", lambda r: f"{r['cpu_s_per_batch']:.3f}"),
            ("peak RSS (MB)", lambda r: f"{r['peak_rss_mb']:.0f}")]
    for name, fmt in rows:
        table.add_row(name, *(fmt(r) for r in result["sizes"].values()))
    console = Console()
    if result["sizes"]:
        console.print(table)
    if result["full"]:
        full = Table(title="Full runs (test, full ranking; HR@K = Recall@K)")
        for col in ("run", *TEST_KEYS, "s/epoch", "epochs", "minutes"):
            full.add_column(col, justify="right")
        rows = [(name, r["test"], r) for name, r in result["full"].items()]
        rows += [(f"{name}: popularity", r["popularity_test"], None) for name, r in result["full"].items()
                 if r.get("popularity_test")]
        for name, test, r in rows:
            scores = (f"{test[k]:.4f}" if test[k] is not None else "-" for k in TEST_KEYS)
            full.add_row(name, *scores, f"{r['s_per_epoch']:.0f}" if r and r["s_per_epoch"] else "-",
                         str(r["epochs_run"]) if r else "",
                         f"{r['minutes']:.1f}" if r and r["minutes"] else "")
        console.print(full)


if __name__ == "__main__":
    sys.exit(main())
