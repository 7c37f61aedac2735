"""Phoenix serving costs: (a) the candidate index (exact vs IVF vs HNSW), (b) ranker candidates scored
per second, (c) recorded two-stage evaluations.

    python benchmarks/phoenix.py                                 # (a) + (b)
    python benchmarks/phoenix.py --parts index --sizes 10000 100000 1000000
    python benchmarks/phoenix.py --record-run synthetic=outputs/two_stage_run   # (c) only, no timing

(a) N clustered random unit vectors, D 64 (centres N(0, I), one per 1,000 vectors, at least 16; each
vector = centre + `--spread` * N(0, I), normalised: the shape of trained item vectors), queries drawn
around the same centres but not indexed. Per kind: build seconds (`--build-threads`),
recall@10/100/1000 against IndexFlatIP over `--recall-queries` queries, query latency at batch 1
and 64 (`--threads`, faiss OpenMP).
IVF: nlist 4 * sqrt(N), nprobe `--nprobe`; HNSW: M `--hnsw-m`, efSearch `--ef-search` (faiss raises
it to k for k > efSearch, so recall@1000 searches with ef 1000).
(b) PhoenixRanker (conf/model/phoenix_ranker.yaml size: 128-dim, 2 layers, 2 heads) at random weights,
history 128, C candidates per user, batch `--ranker-batch`: candidates scored per second (eager, no grad)
with 1 and 2 torch threads.
(c) `--record-run NAME=RUN_DIR` copies an `evaluate.py ... retrieval_ckpt=...` run's metrics.json into
the JSON's `two_stage` block, keeping what the JSON already holds.
Writes benchmarks/results/phoenix.json and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import faiss
import numpy as np
import torch
from common import ROOT
from inference import _cpu

from genrec.serving.index import CandidateIndex, time_search

RECALL_KS = (10, 100, 1000)


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--parts", nargs="+", choices=("index", "ranker"), default=["index", "ranker"])
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--spread", type=float, default=1.0)
    p.add_argument("--kinds", nargs="+", choices=("exact", "ivf", "hnsw"), default=["exact", "ivf", "hnsw"])
    p.add_argument("--nprobe", type=int, default=16)
    p.add_argument("--hnsw-m", type=int, default=32)
    p.add_argument("--ef-search", type=int, default=64)
    p.add_argument("--recall-queries", type=int, default=200)
    p.add_argument("--query-batches", type=int, nargs="+", default=[1, 64])
    p.add_argument("--threads", type=int, default=1, help="faiss / torch threads while timing queries")
    p.add_argument("--build-threads", type=int, default=2)
    p.add_argument("--min-time", type=float, default=1.0)
    p.add_argument("--min-iters", type=int, default=5)
    p.add_argument("--candidates", type=int, nargs="+", default=[32, 128, 512, 1024])
    p.add_argument("--ranker-threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--ranker-batch", type=int, default=1)
    p.add_argument("--history", type=int, default=128)
    p.add_argument("--record-run", metavar="NAME=RUN_DIR", action="append", default=[],
                   help="add a finished two-stage evaluate.py run; no timing is made")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "phoenix.json"))
    return p.parse_args()


def clustered_unit_vectors(n: int, centres: np.ndarray, spread: float,
                           rng: np.random.Generator) -> np.ndarray:
    """float32 [n, dim], unit rows: a random centre each, plus `spread` * N(0, I), normalised."""
    x = centres[rng.integers(0, len(centres), n)]  # [n, dim]
    x = x + spread * rng.standard_normal(x.shape, dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def index_options(kind: str, args: argparse.Namespace) -> dict:
    return {"exact": {}, "ivf": {"nprobe": args.nprobe},
            "hnsw": {"hnsw_m": args.hnsw_m, "ef_search": args.ef_search}}[kind]


def index_rows(n: int, args: argparse.Namespace) -> list[dict]:
    """(a) at one size: one row per kind."""
    rng = np.random.default_rng(n)
    # queries come from the same centres as the indexed vectors (users near the item clusters they
    # like); queries from other centres sit equidistant from everything, which no ANN index serves
    centres = rng.standard_normal((max(16, n // 1000), args.dim)).astype(np.float32)  # [clusters, D]
    vectors = clustered_unit_vectors(n, centres, args.spread, rng)  # [n, D]
    queries = clustered_unit_vectors(max(args.recall_queries, max(args.query_batches) * 4), centres,
                                     args.spread, np.random.default_rng([n, 1]))  # [Q, D]
    ids = np.arange(1, n + 1)
    ks = [k for k in RECALL_KS if k <= n]
    exact, rows = None, []
    for kind in args.kinds if "exact" in args.kinds else ["exact", *args.kinds]:
        faiss.omp_set_num_threads(args.build_threads)
        t0 = time.perf_counter()
        index = CandidateIndex.build(vectors, ids, kind=kind, **index_options(kind, args))
        build_s = time.perf_counter() - t0
        exact = index if kind == "exact" else exact
        faiss.omp_set_num_threads(args.threads)
        recall = {f"recall@{k}": index.recall_against(exact, queries[:args.recall_queries], k) for k in ks}
        timing = {f"batch{b}": time_search(index, queries, k=10, batch=b, min_time=args.min_time,
                                           min_iters=args.min_iters) for b in args.query_batches}
        options = index_options(kind, args) | ({"nlist": index.index.nlist} if kind == "ivf" else {})
        rows.append({"n": n, "dim": args.dim, "kind": kind, "options": options, "build_s": build_s,
                     **recall, "search_k10": timing})
        print(f"  N {n:>9,d} {kind:5s}: build {build_s:6.1f} s, "
              + ", ".join(f"{k} {v:.3f}" for k, v in recall.items()) + ", "
              + ", ".join(f"batch {t['batch']} {t['p50_ms']:.3f} ms" for t in timing.values()), flush=True)
    return rows


def index_table(rows: list[dict]) -> str:
    batches = list(rows[0]["search_k10"])
    lines = ["| N | index | options | build s | recall@10 | recall@100 | recall@1000 | "
             + " | ".join(f"k=10 {b.removeprefix('batch')} queries p50 ms" for b in batches)
             + " | ms per query (largest batch) |",
             "|--:|---|---|--:|--:|--:|--:|" + "--:|" * len(batches) + "--:|"]
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    for r in rows:
        opts = ", ".join(f"{k} {v}" for k, v in r["options"].items()) or "-"
        lines.append(f"| {r['n']:,} | {r['kind']} | {opts} | {r['build_s']:.1f} | "
                     + " | ".join(fmt(r.get(f"recall@{k}")) for k in RECALL_KS) + " | "
                     + " | ".join(f"{r['search_k10'][b]['p50_ms']:.3f}" for b in batches)
                     + f" | {r['search_k10'][batches[-1]]['ms_per_query']:.4f} |")
    return "\n".join(lines)


def ranker_net(args: argparse.Namespace) -> torch.nn.Module:
    """PhoenixRanker at the size of conf/model/phoenix_ranker.yaml, every released action, random weights."""
    from genrec.data.phoenix_actions import PHOENIX_ACTIONS  # noqa: PLC0415
    from genrec.models.phoenix import PhoenixRanker  # noqa: PLC0415

    torch.manual_seed(0)
    return PhoenixRanker(n_items=100_000, n_users=100_000, n_authors=10_000, n_surfaces=8,
                         actions=list(PHOENIX_ACTIONS[:-1]), regression_actions=[PHOENIX_ACTIONS[-1]],
                         embedding_dim=128, num_layers=2, num_heads=2, max_history=args.history,
                         dropout=0.0).eval()


def ranker_inputs(net: torch.nn.Module, batch: int, history: int, candidates: int) -> dict:
    g = torch.Generator().manual_seed(candidates)
    ints = lambda high, *shape: torch.randint(1, high, shape, generator=g)  # noqa: E731
    cfg = net.config
    return {"users": ints(cfg.n_users, batch), "hist_items": ints(cfg.n_items, batch, history),
            "hist_authors": ints(cfg.n_authors, batch, history),
            "hist_actions": (torch.rand(batch, history, len(cfg.actions), generator=g) < 0.2).float(),
            "hist_surfaces": ints(cfg.n_surfaces, batch, history),
            "cand_items": ints(cfg.n_items, batch, candidates),
            "cand_authors": ints(cfg.n_authors, batch, candidates),
            "cand_surfaces": ints(cfg.n_surfaces, batch, 1).expand(batch, candidates)}


def ranker_block(args: argparse.Namespace) -> dict:
    """(b) candidates scored per second, eager, per candidate count and thread count."""
    from inference import timed  # noqa: PLC0415

    net, rows = ranker_net(args), []
    for threads in args.ranker_threads:
        torch.set_num_threads(threads)
        for c in args.candidates:
            feeds = ranker_inputs(net, args.ranker_batch, args.history, c)
            with torch.inference_mode():
                t = timed(lambda f=feeds: net.activate(net(**f)), args.min_time, args.min_iters)
            rate = args.ranker_batch * c / t["mean_ms"] * 1e3
            rows.append({"threads": threads, "candidates": c, "batch": args.ranker_batch,
                         "history": args.history, **t, "candidates_per_s": rate})
            print(f"  ranker {threads} thread(s) C {c:5d}: {t['p50_ms']:.2f} ms, "
                  f"{rows[-1]['candidates_per_s']:,.0f} candidates/s", flush=True)
    torch.set_num_threads(args.threads)
    return {"model": net.export_config(), "rows": rows, "table": ranker_table(rows)}


def ranker_table(rows: list[dict]) -> str:
    threads = sorted({r["threads"] for r in rows})
    by = {(r["candidates"], r["threads"]): r for r in rows}
    head = " | ".join(f"{t} thread(s): p50 ms / candidates per s" for t in threads)
    lines = [f"| candidates | {head} |",
             "|--:|" + "--:|" * len(threads)]
    for c in sorted({r["candidates"] for r in rows}):
        cells = (f"{by[c, t]['p50_ms']:.2f} / {by[c, t]['candidates_per_s']:,.0f}" for t in threads)
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def recorded_run(run_dir: Path) -> dict:
    """(c) A finished two-stage `evaluate.py` run: its metrics.json as written."""
    path = run_dir / "metrics.json" if run_dir.is_dir() else run_dir
    metrics = json.loads(path.read_text())
    if not any(k.startswith("two_stage/test/") for k in metrics):
        raise SystemExit(f"{path}: not a two-stage evaluation (no two_stage/test/... keys); run "
                         "evaluate.py ckpt_path=<ranker> retrieval_ckpt=<retrieval> first")
    return {"metrics": metrics, "path": str(path)}


def two_stage_table(runs: dict) -> str:
    lines = ["| run | index, K | retrieval HR@10 / NDCG@10 | two-stage HR@10 / NDCG@10 | HR@K | "
             "ANN recall@K | retrieval / ranking ms per user |", "|---|---|--:|--:|--:|--:|--:|"]
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    for name, run in runs.items():
        m = run["metrics"]
        settings = m.get("two_stage/settings", {})
        k = settings.get("retrieve_k")
        lines.append(f"| {name} | {settings.get('index')}, {k} | {fmt(m.get('retrieval/test/hr@10'))} / "
                     f"{fmt(m.get('retrieval/test/ndcg@10'))} | {fmt(m.get('two_stage/test/hr@10'))} / "
                     f"{fmt(m.get('two_stage/test/ndcg@10'))} | {fmt(m.get(f'two_stage/test/hr@{k}'))} | "
                     f"{fmt(m.get(f'ann/test/recall@{k}'))} | {m['latency/test/retrieval_ms']:.3f} / "
                     f"{m['latency/test/ranking_ms']:.3f} |")
    return "\n".join(lines)


def machine(args: argparse.Namespace, load_before: float) -> dict:
    return {"cpu": _cpu(), "avx512_bf16": "avx512_bf16" in Path("/proc/cpuinfo").read_text(),
            "cores": os.cpu_count(), "threads": args.threads, "build_threads": args.build_threads,
            "load_average_1m": [load_before, os.getloadavg()[0]], "python": platform.python_version(),
            "torch": torch.__version__, "faiss": faiss.__version__}


def command(args: argparse.Namespace) -> str:
    return "python benchmarks/phoenix.py " + " ".join(
        f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
        for k, v in vars(args).items() if k not in ("out", "record_run"))


def main() -> None:
    args = parse()
    out = Path(args.out)
    result = json.loads(out.read_text()) if out.is_file() else {}

    def save() -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")

    if args.record_run:
        runs = result.setdefault("two_stage", {})
        for item in args.record_run:
            name, run_dir = item.split("=", 1)
            runs[name] = recorded_run(Path(run_dir))
        print(two_stage_table(runs))
        save()
    tables = []
    for part in [] if args.record_run else args.parts:  # each block says when, how, on what
        load_before = os.getloadavg()[0]  # the machine may be shared: say how busy it was
        block = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                 "command": command(args)}
        if part == "index":  # saved after each size: a long run keeps what it measured
            rows = block.setdefault("rows", [])
            for n in args.sizes:
                rows += index_rows(n, args)
                result["index"] = block | {"table": index_table(rows), "machine": machine(args, load_before)}
                save()
        else:
            result["ranker"] = block | ranker_block(args) | {"machine": machine(args, load_before)}
            save()
        tables.append(result[part]["table"])
    print("\n\n".join(tables))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
