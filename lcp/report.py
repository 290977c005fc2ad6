"""Run reports: one-row CSV summary, per-group layer CSV, plots and a terminal table.

Plots draw on a private Agg canvas (no pyplot, no global backend change), so
importing lcp never touches matplotlib and plotting works without a display.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd

from lcp.io import PathLike, atomic_path

if TYPE_CHECKING:
    from matplotlib.figure import Figure

REPORT_COLUMNS: list[str] = [
    "model",
    "dataset",
    "method",
    "importance",
    "budget_type",
    "budget",
    "macs_base",
    "macs_pruned",
    "macs_ratio",
    "params_base",
    "params_pruned",
    "params_ratio",
    "top1_base",
    "top1_pruned_noft",
    "top1_pruned",
    "finetune_epochs",
    "search_s",
    "prune_s",
    "finetune_s",
    "seed",
]

LAYER_COLUMNS: list[str] = ["group", "layers", "channels_before", "channels_after", "keep_ratio", "alpha", "kappa"]

_MAX_TICK_LABELS = 40


def _decimals(column: str) -> int | None:
    """Rounding used for a float column, by name; None keeps full precision."""
    if column == "verification_error" or column.endswith("rel_error"):  # ~1e-7: significant digits, not decimals
        return None
    if column.endswith(("_ratio", "_error")) or column == "speedup":
        return 4
    if column.startswith(("top1", "top5", "acc")):
        return 2
    if column.endswith("_ms"):
        return 3
    if column.endswith("_s"):
        return 1
    return None


def _round(column: str, value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, float) or not math.isfinite(value):
        return value
    places = _decimals(column)
    return value if places is None else round(value, places)


def _ordered(rows: Sequence[Mapping[str, Any]], first: Sequence[str]) -> list[str]:
    """``first`` followed by any other keys, in order of first appearance."""
    cols = list(first)
    for row in rows:
        cols.extend(k for k in row if k not in cols)
    return cols


def _frame(rows: Sequence[Mapping[str, Any]], first: Sequence[str]) -> pd.DataFrame:
    cols = _ordered(rows, first)
    clean = [{c: _round(c, _as_python(row.get(c))) for c in cols} for row in rows]
    return pd.DataFrame(clean, columns=cols)


def _as_python(value: Any) -> Any:
    """Turn numpy/torch scalars into Python numbers so rounding applies."""
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 0) == 0:
        return value.item()
    return value


def _write_csv(df: pd.DataFrame, path: PathLike) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def write_report(row: Mapping[str, Any], path: PathLike) -> pd.DataFrame:
    """Write a one-row CSV: ``REPORT_COLUMNS`` in order, then extra keys; returns the frame."""
    df = _frame([row], REPORT_COLUMNS)
    _write_csv(df, path)
    return df


def write_layers_csv(rows: Sequence[Mapping[str, Any]], path: PathLike) -> pd.DataFrame:
    """Write one row per channel group (``LAYER_COLUMNS`` then extras); returns the frame.

    ``layers`` may be a list of module names (joined with ";"); ``keep_ratio`` is
    computed from the channel counts when missing.
    """
    prepared = []
    for row in rows:
        r = dict(row)
        names = r.get("layers")
        if names is not None and not isinstance(names, str):
            r["layers"] = ";".join(str(n) for n in names)
        before, after = r.get("channels_before"), r.get("channels_after")
        if r.get("keep_ratio") is None and before and after is not None:
            r["keep_ratio"] = after / before
        prepared.append(r)
    df = _frame(prepared, LAYER_COLUMNS)
    _write_csv(df, path)
    return df


def _new_figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save_png(fig: Figure, path: PathLike) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)


def _short(name: str, limit: int = 28) -> str:
    if len(name) <= limit:
        return name
    keep = (limit - 1) // 2
    return f"{name[:keep]}…{name[-(limit - 1 - keep) :]}"


def plot_widths(layers: Sequence[tuple[str, int, int]], path: PathLike, title: str) -> None:
    """Bar chart of per-layer output widths before (grey) and after (blue) pruning, as PNG.

    Bars are overlaid so 150 layers stay readable; at most 40 names are shown.
    """
    n = len(layers)
    fig = _new_figure(min(24.0, max(8.0, 0.14 * n)), 5.0)
    ax = fig.add_subplot()
    x = list(range(n))
    before = [b for _, b, _ in layers]
    after = [a for _, _, a in layers]
    ax.bar(x, before, width=0.8, color="#c8c8c8", label="before", linewidth=0)
    ax.bar(x, after, width=0.8, color="#1f77b4", label="after", linewidth=0)
    step = max(1, math.ceil(n / _MAX_TICK_LABELS))
    ticks = x[::step]
    ax.set_xticks(ticks, [_short(layers[i][0]) for i in ticks], rotation=90, fontsize=7)
    ax.set_xlim(-0.6, max(n, 1) - 0.4)
    xlabel = "layer" if step == 1 else f"layer ({n} layers, 1 in {step} names shown)"
    ax.set_xlabel(xlabel)
    ax.set_ylabel("output channels")
    ax.set_title(title, loc="left")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    if n:  # legend above the axes, right, so it never hides bars
        ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncols=2, frameon=False)
    else:
        ax.text(0.5, 0.5, "no layers", ha="center", va="center", transform=ax.transAxes)
    _save_png(fig, path)


def plot_search(
    history: Sequence[Mapping[str, Any]],
    path: PathLike,
    title: str = "search",
    *,
    key: str = "fitness",
    maximize: bool = True,
    xlabel: str = "candidate",
) -> None:
    """Plot fitness per candidate (dots) and the best so far (line) as PNG.

    Entries whose ``key`` is missing, None or NaN (e.g. infeasible) are skipped.
    """
    xs: list[int] = []
    ys: list[float] = []
    for i, entry in enumerate(history, start=1):
        value = _as_python(entry.get(key))
        if isinstance(value, (int, float)) and math.isfinite(value):
            xs.append(i)
            ys.append(float(value))
    best: list[float] = []
    for y in ys:
        best.append(y if not best else (max if maximize else min)(best[-1], y))
    fig = _new_figure(8.0, 4.5)
    ax = fig.add_subplot()
    ax.scatter(xs, ys, s=10, alpha=0.6, color="#1f77b4", label=xlabel)
    ax.step(xs, best, where="post", color="#d62728", linewidth=1.5, label="best so far")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(key)
    ax.set_title(title, loc="left")
    ax.grid(alpha=0.3)
    if xs:
        ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncols=2, frameon=False)
    else:
        ax.text(0.5, 0.5, "no scored candidates", ha="center", va="center", transform=ax.transAxes)
    _save_png(fig, path)


def _fmt(column: str, value: Any) -> str:
    if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)):
        return "-"
    if isinstance(value, float):
        places = _decimals(column)
        return f"{value:.6g}" if places is None else f"{value:.{places}f}"
    return str(value)


def print_table(df: pd.DataFrame) -> str:
    """Compact plain-text table: ``name  value`` lines for one row, a grid otherwise."""
    if len(df) == 1:
        width = max((len(str(c)) for c in df.columns), default=0)
        row = df.iloc[0]
        return "\n".join(f"{str(c):<{width}}  {_fmt(str(c), row[c])}" for c in df.columns)
    cells = [[str(c) for c in df.columns]]
    for rec in df.itertuples(index=False, name=None):
        cells.append([_fmt(str(c), v) for c, v in zip(df.columns, rec)])
    widths = [max(len(r[j]) for r in cells) for j in range(len(df.columns))]
    right = [pd.api.types.is_numeric_dtype(df[c]) for c in df.columns]
    lines = ["  ".join(v.rjust(w) if r_ else v.ljust(w) for v, w, r_ in zip(r, widths, right)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
