"""Human-readable reports: the rich metrics table printed at the end of train/evaluate."""

from __future__ import annotations

import re

from rich.console import Console
from rich.table import Table

_KEY = re.compile(
    r"^(?:(?P<baseline>popularity)/)?test/(?:(?P<sampled>sampled)/)?(?P<metric>[a-z]+)(?:@(?P<k>\d+))?$"
)


def _order(metric: str) -> tuple:
    name, _, k = metric.partition("@")
    return (name == "MRR", name, int(k) if k else 0)


def print_metrics_table(metrics: dict, title: str = "test metrics") -> None:
    """One row per metric; columns model/popularity x full/sampled protocol."""
    cells: dict[str, dict[str, float]] = {}
    columns: list[str] = []
    for key, value in metrics.items():
        m = _KEY.match(key)
        if m is None:
            continue
        col = f"{'popularity' if m['baseline'] else 'model'} {'sampled' if m['sampled'] else 'full'}"
        metric = m["metric"].upper() + (f"@{m['k']}" if m["k"] else "")
        cells.setdefault(metric, {})[col] = float(value)
        if col not in columns:
            columns.append(col)
    columns.sort(key=lambda c: (c.startswith("popularity"), c.endswith("sampled")))
    table = Table(title=title)
    table.add_column("metric")
    for col in columns:
        table.add_column(col, justify="right")
    for metric in sorted(cells, key=_order):
        table.add_row(metric, *(f"{cells[metric][c]:.4f}" if c in cells[metric] else "-" for c in columns))
    Console().print(table)
