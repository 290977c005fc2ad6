"""Learning curves of the search agents from their episode files: one PNG, one Markdown table.

Each run is ``LABEL=PATH``: an ``agent.csv`` an ``lcp prune --method lfgcl|amc`` run or a compare search wrote
(reward: minus the held-out loss), or a ``controller.csv`` of ``--method ads|lwp`` (reward: held-out top-1, plus
lwp's cost term; every episode is a learning one, there is no warm-up).
The figure shows the reward per episode (dots, coloured by phase) and its moving mean over 25 episodes; the
table gives, per run, the starting cuts' rewards, the mean reward of the warm-up episodes and of the first and
last 50 learning episodes, the best episode and its phase, and the search's seconds. A curve that rises from
the warm-up to the last learning episodes is an agent that learns on the real reward.

    python benchmarks/agent_curves.py \\
        "amc, resnet56, seed 0=runs/compare/.../amc-...-seed0-at0.5/agent.csv" --png docs/agents_curves.png
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

PHASE_COLORS = {"uniform": "#2ca02c", "uniform streams whole": "#9467bd", "warm-up": "#7f7f7f", "agent": "#1f77b4"}


def read_run(path: Path) -> list[dict]:
    """Rows of one ``agent.csv`` with numeric reward and seconds."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and "phase" not in rows[0] and "update" in rows[0]:  # a connection controller's episodes
        for r in rows:
            r["phase"] = "agent"
    if not rows or "phase" not in rows[0]:
        raise SystemExit(f"{path}: neither an agent.csv (lfgcl, amc) nor a controller.csv (ads, lwp)")
    for r in rows:
        r["reward"], r["seconds"] = float(r["reward"]), float(r["seconds"])
    return rows


def summary(label: str, rows: list[dict]) -> str:
    """One Markdown row: starts, warm-up mean, first/last 50 learning episodes, best episode, seconds."""
    reward = np.array([r["reward"] for r in rows])
    phase = [r["phase"] for r in rows]
    starts = ", ".join(f"{r['reward']:.3f}" for r in rows if r["phase"].startswith("uniform"))
    warm = reward[[p == "warm-up" for p in phase]]
    learn = reward[[p == "agent" for p in phase]]
    best = int(np.argmax(reward))
    first = f"{learn[:50].mean():.3f}" if len(learn) else "-"
    last = f"{learn[-50:].mean():.3f}" if len(learn) else "-"
    return (
        f"| {label} | {len(rows)} | {starts or '-'} | {f'{warm.mean():.3f}' if len(warm) else '-'} | {first} | {last} "
        f"| {reward[best]:.3f} (episode {best + 1}, {phase[best]}) | {sum(r['seconds'] for r in rows):.0f} |"
    )


def plot(runs: list[tuple[str, list[dict]]], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.0, 3.2 * len(runs)), layout="constrained")
    FigureCanvasAgg(fig)
    for i, (label, rows) in enumerate(runs):
        ax = fig.add_subplot(len(runs), 1, i + 1)
        x = np.arange(1, len(rows) + 1)
        y = np.array([r["reward"] for r in rows])
        for ph, color in PHASE_COLORS.items():
            m = np.array([r["phase"] == ph for r in rows])
            if m.any():
                ax.scatter(x[m], y[m], s=9, alpha=0.6, color=color, label=ph)
        k = 25
        if len(y) >= k:
            ax.plot(x[k - 1 :], np.convolve(y, np.ones(k) / k, mode="valid"), color="#d62728", label="mean of 25")
        ax.step(x, np.maximum.accumulate(y), where="post", color="black", linewidth=1, label="best so far")
        ax.set_title(label, loc="left")
        ax.set_xlabel("episode")
        ax.set_ylabel("reward")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncols=3, loc="lower right")
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="LABEL=PATH to an agent.csv")
    p.add_argument("--png", type=Path, help="write the curves here")
    args = p.parse_args(argv)
    runs = []
    for spec in args.runs:
        label, sep, path = spec.rpartition("=")
        if not sep or not Path(path).is_file():
            raise SystemExit(f"{spec!r}: expected LABEL=PATH to an existing agent.csv")
        runs.append((label, read_run(Path(path))))
    print(
        "| run | episodes | starting cuts (uniform, streams whole) | warm-up mean | first 50 learning | "
        "last 50 learning | best | seconds |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for label, rows in runs:
        print(summary(label, rows))
    if args.png:
        plot(runs, args.png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
