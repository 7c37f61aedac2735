"""Human-readable reports: the rich metrics table printed at the end of train/evaluate, and the
value a Hydra sweeper optimises."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from genrec.validation import ConfigError

# the evaluation passes whose metrics are reported, and the baselines a task may add beside the model
PHASES = ("test", "val")


class MissingMetricError(ConfigError, KeyError):
    """`optimized_metric` names a key the run did not produce."""

    def __str__(self) -> str:  # KeyError would quote the sentence
        return str(self.args[0])


def optimized_value(metrics: dict, key: str | None) -> float | None:
    """metrics[key] for a sweeper; None when key is None; MissingMetricError naming what exists."""
    if key is None:
        return None
    if key not in metrics:
        available = ", ".join(sorted(k for k in metrics if isinstance(metrics[k], int | float)))
        raise MissingMetricError(f"optimized_metric={key}: this run produced no such metric "
                                 "(..._best keys come from callbacks.best_metrics; optimized_metric=null "
                                 f"returns none); available: {available or 'none'}")
    return float(metrics[key])


def check_optimized_metric(cfg) -> None:
    """Before training: a `..._best` optimized_metric needs the callback that logs it, so a run
    with callbacks=none fails now rather than after fitting (MissingMetricError)."""
    key = cfg.get("optimized_metric")
    if not key or not str(key).endswith("_best"):
        return
    targets = [str(c.get("_target_", "")) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    if not any(t.endswith("BestValidationMetrics") for t in targets):
        raise MissingMetricError(f"optimized_metric={key}: no callback logs ..._best keys in this run "
                                 "(callbacks.best_metrics is off); set optimized_metric=null or "
                                 "keep callbacks.best_metrics")


def split_key(key: str) -> tuple[str, str, str] | None:
    """'popularity/test/sampled/recall@10' -> ('popularity test sampled', 'recall', '10').

    Returns (column, metric name, K or ''): the column is the scorer (model, or the baseline
    prefix before the phase), the phase and the protocol path; None for keys of no phase.
    """
    parts = key.split("/")
    phase_at = next((i for i, p in enumerate(parts[:-1]) if p in PHASES), None)
    if phase_at is None:
        return None
    scorer = "/".join(parts[:phase_at]) or "model"
    protocol = "/".join(parts[phase_at + 1:-1])
    name, _, k = parts[-1].partition("@")
    column = " ".join(p for p in (scorer, parts[phase_at], protocol) if p)
    return column, name, k


def _metric_order(metric: str) -> tuple:
    """@K families first (alphabetical, by K), then single-number metrics (mrr, auc, loss)."""
    name, _, k = metric.partition("@")
    return (not k, name, int(k) if k.isdigit() else 0)


def _column_order(column: str) -> tuple:
    scorer, phase, *protocol = column.split(" ")
    return (scorer != "model", scorer, PHASES.index(phase), bool(protocol), protocol)


def print_metrics_table(metrics: dict, title: str = "test metrics") -> None:
    """One row per metric name (every one logged: hr@K, ndcg@K, recall@K, auc, loss, ...);
    one column per scorer x phase x protocol (model test, model test sampled, popularity test...).
    Validation keys (`val/...`, incl. the best pass's `..._best`) get their own columns."""
    cells: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        parsed = split_key(key) if isinstance(value, int | float) else None
        if parsed is None:
            continue
        column, name, k = parsed
        if name.endswith("_best") or k.endswith("_best"):
            column, name, k = f"{column} best", name.removesuffix("_best"), k.removesuffix("_best")
        metric = name.upper() + (f"@{k}" if k else "")
        cells.setdefault(metric, {})[column] = float(value)
    columns = sorted({c for row in cells.values() for c in row}, key=_column_order)
    table = Table(title=title)
    table.add_column("metric")
    for col in columns:
        table.add_column(col, justify="right")
    for metric in sorted(cells, key=_metric_order):
        table.add_row(metric, *(f"{cells[metric][c]:.4f}" if c in cells[metric] else "-" for c in columns))
    console = Console()
    if not console.is_terminal:  # a log file or pipe: never squeeze the columns into 80 characters
        console = Console(width=max(80, 14 + 16 * len(columns)))
    console.print(table)
