"""Summaries of the studies' numbers and the pieces their reports share.

Public: mean_std(values) -> dict, correction_summary(metric_rows) -> dict, fmt_num(x, digits, missing),
fmt_pm(stats, digits), start_end_text(start, end, ...), markdown_row(cells), markdown_table(header, rows)
-> list[str], save_plot(path, draw) -> str | None.
The correction rate (teacher replacements / generated tokens per step, CONTRACT.md §7, last claim)
is summarised here once for every study: its "start" and "end" are the means over the first and
the last 10% of the steps.
"""
from __future__ import annotations

import os
import statistics
from pathlib import Path
from typing import Callable, Sequence


def mean_std(values: list[float]) -> dict:
    """Mean and sample standard deviation (n - 1); std is None below two values."""
    vals = [float(v) for v in values if v is not None]
    return {"mean": statistics.fmean(vals) if vals else None,
            "std": statistics.stdev(vals) if len(vals) >= 2 else None, "n": len(vals), "values": vals}


def correction_summary(metric_rows: list[dict]) -> dict:
    """A training run's correction-rate curve ([step, rate] per metrics.jsonl row) with its start and end:
    the means over the first and the last 10% of the steps (at least one step each); None without steps."""
    curve = [[m["step"], m["correction_rate"]] for m in metric_rows]
    n = max(1, len(curve) // 10)
    return {"correction_curve": curve,
            "correction_rate_start": statistics.fmean(c for _, c in curve[:n]) if curve else None,
            "correction_rate_end": statistics.fmean(c for _, c in curve[-n:]) if curve else None}


def fmt_num(x: float | None, digits: int = 3, missing: str = "—") -> str:
    """x with `digits` decimals, or `missing` for None."""
    return missing if x is None else f"{x:.{digits}f}"


def fmt_pm(stats: dict, digits: int = 3) -> str:
    """A mean_std() record as 'mean ± std' ('mean' alone below two values, '—' without any)."""
    if stats["mean"] is None:
        return "—"
    return f"{stats['mean']:.{digits}f}" + (f" ± {stats['std']:.{digits}f}" if stats["std"] is not None else "")


def start_end_text(start: float | None, end: float | None, *, digits: int = 3, arrow: str = " → ",
                   missing: str = "—") -> str:
    """'0.310 → 0.120' for a correction rate's start and end, `missing` when either is None."""
    if start is None or end is None:
        return missing
    return f"{start:.{digits}f}{arrow}{end:.{digits}f}"


def markdown_row(cells: Sequence[str]) -> str:
    """One markdown table row ('| a | b |'; an empty cell is '| |')."""
    return "|" + "|".join(f" {c} " if c != "" else " " for c in cells) + "|"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A markdown table's lines: the header, the separator, one line per row of cells."""
    return [markdown_row(header), "|" + "---|" * len(header), *(markdown_row(r) for r in rows)]


def save_plot(path: str | Path, draw: Callable) -> str | None:
    """Draw with matplotlib (Agg) into a PNG written atomically; None when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = draw(plt)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)
    return str(path)
