"""What a search leaves in its output folder: ``search.csv``, ``search.png`` and ``search.json``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from lcp.io import PathLike, atomic_write_json, atomic_write_text
from lcp.methods.legr.evaluator import SearchResult
from lcp.report import plot_search


def write_search_csv(history: Sequence[dict[str, float]], path: PathLike) -> None:
    """``candidate,fitness,best,seconds`` per evaluated candidate, written atomically."""
    lines = ["candidate,fitness,best,seconds"]
    for h in history:
        lines.append(f"{int(h['candidate'])},{h['fitness']!r},{h['best']!r},{h['seconds']:.3f}")
    atomic_write_text(path, "\n".join(lines) + "\n")


def write_outputs(
    result: SearchResult, out_dir: PathLike, prior_seconds: float = 0.0, sensitivity_skipped: bool = False
) -> None:
    """``search.csv``, ``search.png`` (fitness per candidate and best so far) and ``search.json`` (how many
    candidates were evaluated, what stopped the search, its wall time and that of the sensitivity measurement
    before it) in ``out_dir``."""
    out = Path(out_dir)
    write_search_csv(result.history, out / "search.csv")
    atomic_write_json(
        out / "search.json",
        {
            "candidates_evaluated": result.evaluated,
            "stopped_by": result.stopped_by,
            "seconds": round(result.seconds, 1),
            "prior_seconds": round(prior_seconds, 1),
            "best_fitness": result.best_fitness,
            "identity_fitness": result.history[0]["fitness"] if result.history else None,
            # --search-stop has no time cap: it measures a sensitivity this run skipped, and may cut otherwise
            "reproduce_with": None if sensitivity_skipped else f"--search-stop {result.evaluated}",
            "sensitivity_skipped": sensitivity_skipped,
        },
    )
    plot_search(result.history, out / "search.png", title="search: held-out fitness (lower is better)", maximize=False)
