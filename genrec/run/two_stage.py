"""Two-stage evaluation of Phoenix: retrieval top-K from a candidate index, re-ordered by the ranker.

    python evaluate.py ckpt_path=<ranker ckpt> retrieval_ckpt=<retrieval ckpt> \\
        [two_stage.retrieve_k=100 two_stage.index=exact|ivf|hnsw]

Both checkpoints must be Phoenix runs (a PhoenixRanker and a PhoenixRetrieval) of the same data:
the same data source and the same model_kwargs (item, user, author and surface counts, actions).
The test rows of the ranker's data config are evaluated on the CPU:

1. retrieval: the user tower's vector searches the index of every catalogue item's candidate-tower
   vector (genrec/serving/index.py); the user's history is removed by over-fetching K + |history|
   and filtering (the held-out item itself is never removed, as in full_ranking_ranks), K kept;
2. ranking: the ranker scores those K candidates (the request's surface for all) and the task's
   final score (sum of action weights x activated outputs) orders them.

The held-out item's rank: retrieved -> its position in the final order; not retrieved -> its exact
retrieval rank over the catalogue, at least K. So HR@k for k <= K is exact and a target the index
missed is a miss at every k <= K, even when the exact search would have ranked it higher.

Logged (flat keys, RankingMetrics): `retrieval/test/{hr,ndcg}@k, mrr` (exact full ranking, retrieval
alone), `two_stage/test/...` (k <= K), `ranker/test/sampled/...` and `ranker/test/auc/<action>`
(the ranker on the target + the sampled negatives of the data module, as its own test pass),
`latency/test/retrieval_ms` (user tower + search + filter) and `latency/test/ranking_ms` (ranker +
final score), ms per user, median over batches; `ann/test/recall@K` (top-K of the index against
the exact top-K, before filtering) when the index is approximate. metrics.json is written only
after the whole pass succeeded.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from genrec.metrics import RankingMetrics, full_ranking_ranks, rank_of_target
from genrec.rank_zero_log import get_logger
from genrec.run.checkpoint import CONFIG_KEY, CheckpointError, build_net, build_task, read_checkpoint
from genrec.run.evaluation import check_item_count, plot_curves
from genrec.run.report import print_metrics_table, split_key
from genrec.serving.index import KINDS, CandidateIndex
from genrec.tasks.base import net_inputs
from genrec.tasks.head_metrics import is_defined
from genrec.tasks.retrieval import catalogue_vectors
from genrec.validation import ConfigError, check_range, check_writable

log = get_logger(__name__)

RANKER = "genrec.models.phoenix.PhoenixRanker"
RETRIEVAL = "genrec.models.phoenix.PhoenixRetrieval"
# what both checkpoints must agree on (PhoenixDataModule.model_kwargs)
DATA_KEYS = ("n_items", "n_users", "n_authors", "n_surfaces", "actions", "regression_actions")
# ranker rows scored at once: rows * L^2 attention cells at most (L = 1 + S + K)
MAX_ATTENTION_CELLS = 1 << 25


@dataclasses.dataclass
class TwoStageSettings:
    """conf/evaluate.yaml `two_stage:`."""

    retrieve_k: int = 100
    index: str = "exact"
    nlist: int | None = None
    nprobe: int = 16
    hnsw_m: int = 32
    ef_search: int = 64

    def __post_init__(self) -> None:
        check_range("two_stage.retrieve_k", self.retrieve_k, lo=1)
        if self.index not in KINDS:
            raise ConfigError(f"two_stage.index={self.index!r}: expected one of {', '.join(KINDS)}")
        check_range("two_stage.nlist", self.nlist, lo=1, optional=True)
        for name in ("nprobe", "hnsw_m", "ef_search"):
            check_range(f"two_stage.{name}", getattr(self, name), lo=1)

    def build_index(self, vectors: torch.Tensor, ids: torch.Tensor) -> CandidateIndex:
        return CandidateIndex.build(vectors, ids, kind=self.index, nlist=self.nlist, nprobe=self.nprobe,
                                    hnsw_m=self.hnsw_m, ef_search=self.ef_search)


# ---- the two stages, one batch ----
def retrieve(index: CandidateIndex, users: torch.Tensor, history: torch.Tensor | None,
             target: torch.Tensor, k: int, n_items: int) -> tuple[torch.Tensor, torch.Tensor]:
    """users float [B, D]; history int [B, H] (0-padded) or None -> (candidates int64 [B, k] in
    retrieval order, valid bool [B, k]); a slot left without an item (history removed from a small
    catalogue, or an approximate index that found fewer) holds 0 and valid False."""
    n_hist = int((history > 0).sum(1).max()) if history is not None else 0
    _, ids = index.search(users.numpy(), min(len(index), k + n_hist))  # [B, F] best first, -1 = none
    ids = torch.from_numpy(ids)  # [B, F]
    blocked = torch.zeros(len(ids), n_items + 1, dtype=torch.bool)  # [B, n_items + 1]
    if history is not None:
        blocked.scatter_(1, history, True)
    blocked[:, 0] = True  # padding (and the index's "nothing found")
    blocked.scatter_(1, target.unsqueeze(1), False)  # a re-consumed target stays an answer
    hidden = blocked.gather(1, ids.clamp(min=0)) | (ids < 0)  # [B, F]
    keep = torch.sort(hidden.to(torch.int8), dim=1, stable=True).indices[:, :k]  # [B, k] first unhidden
    valid = ~hidden.gather(1, keep)  # [B, k]
    return ids.gather(1, keep).masked_fill(~valid, 0), valid


def two_stage_ranks(final: torch.Tensor, candidates: torch.Tensor, valid: torch.Tensor,
                    target: torch.Tensor, exact_ranks: torch.Tensor,
                    exact_finite: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """final float [B, K] ranker scores of candidates int [B, K] (valid bool [B, K]); exact_ranks
    [B] the target's full-catalogue retrieval ranks -> (ranks [B], finite [B]): the position among
    the candidates when retrieved, else max(exact rank, K), so it misses every k <= K."""
    k = candidates.shape[1]
    final = final.masked_fill(~valid, float("-inf"))  # [B, K] empty slots never beat the target
    is_target = (candidates == target.unsqueeze(1)) & valid  # [B, K]
    retrieved = is_target.any(1)  # [B]
    ranked, finite = rank_of_target(final, is_target.to(torch.int8).argmax(1))  # [B], [B]
    missed = exact_ranks.clamp(min=k)  # [B]
    return torch.where(retrieved, ranked, missed), torch.where(retrieved, finite, exact_finite)


def slice_rows(batch, rows: slice):
    """The batch (a dataclass of tensors or None) restricted to `rows`."""
    fields = (f.name for f in dataclasses.fields(batch))
    return dataclasses.replace(batch, **{name: getattr(batch, name)[rows] for name in fields
                                         if isinstance(getattr(batch, name), torch.Tensor)})


def row_chunks(batch, n_candidates: int) -> Iterator:
    """The batch in row slices small enough that the ranker's [rows, L, L] attention stays bounded."""
    length = 1 + batch.hist_items.shape[1] + n_candidates
    step = max(1, MAX_ATTENTION_CELLS // (length * length))
    return (slice_rows(batch, slice(i, i + step)) for i in range(0, len(batch), step))


def ranker_scorer(task: nn.Module, item_authors: torch.Tensor) -> Callable:
    """(batch, candidates int [B, K]) -> the task's final scores float [B, K] of those candidates."""
    def score(batch, candidates: torch.Tensor) -> torch.Tensor:
        request = batch.cand_surfaces[:, :1] if batch.cand_surfaces is not None else torch.zeros_like(
            candidates[:, :1])  # [B, 1] the surface the feed is built for
        view = dataclasses.replace(batch, cand_items=candidates, cand_authors=item_authors[candidates],
                                   cand_surfaces=request.expand_as(candidates), labels=None)
        return torch.cat([task.scores(rows) for rows in row_chunks(view, candidates.shape[1])])  # [B, K]
    return score


# ---- one pass over the test rows ----
@dataclasses.dataclass
class PassState:
    """What a two-stage pass accumulates over its batches."""

    retrieval: RankingMetrics
    two_stage: RankingMetrics
    retrieval_ms: list[float] = dataclasses.field(default_factory=list)  # per batch, ms per user
    ranking_ms: list[float] = dataclasses.field(default_factory=list)
    ann_hits: float = 0.0  # sum over users of ANN recall@K
    users: int = 0


def two_stage_pass(retrieval_net: nn.Module, score: Callable, batches: Iterable,
                   catalogue: tuple[torch.Tensor, torch.Tensor], settings: TwoStageSettings,
                   ks: list[int], mask_history: bool = True, on_batch: Callable | None = None) -> dict:
    """Retrieval alone (exact, full catalogue) and retrieval -> `score` (batch, candidates [B, K]
    -> final [B, K]) over `batches`; `on_batch(batch)` runs after each (the ranker's own metrics).
    Returns the flat metrics described in the module docstring (ranker metrics aside)."""
    items, authors = catalogue  # [N], [N]
    table = catalogue_vectors(retrieval_net, items, authors)  # [n_items + 1, D], row 0 zero
    n_items, k = table.shape[0] - 1, settings.retrieve_k
    if k > len(items):
        raise ConfigError(f"two_stage.retrieve_k={k}: the catalogue holds only {len(items)} items")
    exact = CandidateIndex.build(table[items], items, kind="exact")
    index = exact if settings.index == "exact" else settings.build_index(table[items], items)
    state = PassState(RankingMetrics(ks, "retrieval/test/"),
                      RankingMetrics([q for q in ks if q <= k], "two_stage/test/"))
    for batch in batches:
        history = batch.history if mask_history else None
        t0 = time.perf_counter()
        users = retrieval_net.user_embed(**net_inputs(retrieval_net.user_embed, batch.model_inputs())).float()
        candidates, valid = retrieve(index, users, history, batch.target, k, n_items)  # [B, K] each
        t1 = time.perf_counter()
        final = score(batch, candidates).float()  # [B, K]
        t2 = time.perf_counter()
        scores = users @ table.T  # [B, n_items + 1]
        scores[:, 0] = float("-inf")
        exact_ranks, exact_finite = full_ranking_ranks(scores, batch.target, history)  # [B], [B]
        state.retrieval.update(exact_ranks, exact_finite)
        state.two_stage.update(*two_stage_ranks(final, candidates, valid, batch.target, exact_ranks,
                                                exact_finite))
        if index is not exact:
            state.ann_hits += index.recall_against(exact, users.numpy(), k) * len(batch)
        state.retrieval_ms.append((t1 - t0) * 1e3 / len(batch))
        state.ranking_ms.append((t2 - t1) * 1e3 / len(batch))
        state.users += len(batch)
        if on_batch is not None:
            on_batch(batch)
    return pass_metrics(state, settings)


def pass_metrics(state: PassState, settings: TwoStageSettings) -> dict:
    if state.users == 0:
        raise ValueError("two-stage evaluation: the test split has no rows")
    metrics = {k: float(v) for m in (state.retrieval, state.two_stage) for k, v in m.compute().items()}
    metrics["latency/test/retrieval_ms"] = statistics.median(state.retrieval_ms)
    metrics["latency/test/ranking_ms"] = statistics.median(state.ranking_ms)
    if settings.index != "exact":
        metrics[f"ann/test/recall@{settings.retrieve_k}"] = state.ann_hits / state.users
    return metrics


def ranker_test_metrics(task: nn.Module) -> dict[str, float]:
    """The ranker task's own test metrics (sampled ranks, per-action AUC / MSE / MAE) after its
    `evaluate(batch, "test")` ran on every batch, as `ranker/test/...`; then reset."""
    out = {f"ranker/{k}": float(v) for k, v in task.metrics["test_sampled"].compute().items()}
    for key, metric in task.head_metrics.items():
        if key.startswith("test_") and metric.update_count and is_defined(metric):
            out[f"ranker/{task.head_keys[key]}"] = float(metric.compute())
        metric.reset()
    task.metrics["test_sampled"].reset()
    return out


# ---- the checkpoints ----
def _model_target(ckpt: dict) -> str:
    return str(ckpt["hyper_parameters"]["net_config"].get("_target_", "?"))


def check_pair(ranker: dict, ranker_path: Path, retrieval: dict, retrieval_path: Path) -> None:
    """A PhoenixRanker and a PhoenixRetrieval trained on the same data, else CheckpointError."""
    found = (_model_target(ranker), _model_target(retrieval))
    if found != (RANKER, RETRIEVAL):
        swap = " (swapped? ckpt_path takes the ranker)" if found == (RETRIEVAL, RANKER) else ""
        raise CheckpointError(f"two-stage evaluation needs ckpt_path={ranker_path} to hold a {RANKER} and "
                              f"retrieval_ckpt={retrieval_path} a {RETRIEVAL}; found {found[0]} and "
                              f"{found[1]}{swap}")
    a, b = (c["hyper_parameters"]["net_config"] for c in (ranker, retrieval))
    differ = {key: (a.get(key), b.get(key)) for key in DATA_KEYS if a.get(key) != b.get(key)}
    src_a, src_b = (_source(c) for c in (ranker, retrieval))
    if src_a != src_b:
        differ["data.source"] = (src_a, src_b)
    if differ:
        detail = "; ".join(f"{key}: {x!r} vs {y!r}" for key, (x, y) in differ.items())
        raise CheckpointError(f"{ranker_path} (ranker) and {retrieval_path} (retrieval) were trained on "
                              f"different data ({detail}): item ids would mean other items")


def _source(ckpt: dict) -> dict:
    """The run's data source config without file locations (the same data may move)."""
    source = dict((ckpt[CONFIG_KEY].get("data") or {}).get("source") or {})
    return {k: v for k, v in source.items() if "path" not in k and "dir" not in k}


def _settings(cfg: DictConfig) -> TwoStageSettings:
    given = cfg.get("two_stage") or {}
    given = OmegaConf.to_container(given) if OmegaConf.is_config(given) else dict(given)
    unknown = sorted(set(given) - {f.name for f in dataclasses.fields(TwoStageSettings)})
    if unknown:
        raise ConfigError(f"two_stage: unknown keys {unknown}")
    return TwoStageSettings(**given)


def evaluate_two_stage(cfg: DictConfig) -> dict:
    """conf/evaluate.yaml with retrieval_ckpt set: the metrics above, written to
    <output_dir or the ranker run>/two_stage/metrics.json and printed."""
    settings = _settings(cfg)
    ranker_path, retrieval_path = Path(cfg.ckpt_path), Path(cfg.retrieval_ckpt)
    out_dir = Path(cfg.output_dir) if cfg.get("output_dir") else ranker_path.parent.parent / "two_stage"
    check_writable("output_dir", out_dir)
    unsafe = bool(cfg.get("allow_unsafe_checkpoint", False))
    ranker_ckpt = read_checkpoint(ranker_path, unsafe)
    retrieval_ckpt = read_checkpoint(retrieval_path, unsafe)
    check_pair(ranker_ckpt, ranker_path, retrieval_ckpt, retrieval_path)
    run_cfg = OmegaConf.create(ranker_ckpt[CONFIG_KEY])
    if cfg.get("data_overrides"):
        run_cfg.data = OmegaConf.merge(run_cfg.data, cfg.data_overrides)
    k = settings.retrieve_k
    ks = sorted(set(range(1, min(int(cfg.ks_max), k) + 1)) | {k})
    task, run_cfg = build_task(ranker_ckpt, ranker_path, task_overrides={"ks": ks}, run_cfg=run_cfg)
    retrieval_net = build_net(retrieval_ckpt, retrieval_path)
    datamodule = instantiate(run_cfg.data)
    check_item_count(ranker_ckpt, datamodule, ranker_path)
    check_item_count(retrieval_ckpt, datamodule, retrieval_path)
    task.eval()
    with torch.inference_mode():
        metrics = two_stage_pass(
            retrieval_net, ranker_scorer(task, datamodule.item_authors()), datamodule.test_dataloader(),
            datamodule.catalogue(), settings, ks, mask_history=bool(task.hparams.get("mask_history", True)),
            on_batch=lambda batch: ranker_evaluate(task, batch))
        metrics |= ranker_test_metrics(task)
    write_report(metrics, settings, ks, out_dir, f"two-stage evaluation of {ranker_path.name} <- "
                 f"{retrieval_path.name} (K {k}, {settings.index})")
    return metrics


def ranker_evaluate(task: nn.Module, batch) -> None:
    """The ranker task's own test step on the batch's candidates (target + sampled negatives)."""
    for rows in row_chunks(batch, batch.cand_items.shape[1]):
        task.evaluate(rows, "test")


def write_report(metrics: dict, settings: TwoStageSettings, ks: list[int], out_dir: Path, title: str) -> None:
    record = {**metrics, "two_stage/settings": dataclasses.asdict(settings)}
    (out_dir / "metrics.json").write_text(json.dumps(record, indent=2, sort_keys=True))
    plot_curves({k: v for k, v in metrics.items() if not k.startswith("ann/")}, ks,
                out_dir / "metrics_at_k.png", title=title)
    shown_k = {"", "5", "10", "20", str(settings.retrieve_k)}
    print_metrics_table({k: v for k, v in metrics.items() if (p := split_key(k)) and p[2] in shown_k},
                        title=title)
    log.info("wrote %s", out_dir.resolve())
