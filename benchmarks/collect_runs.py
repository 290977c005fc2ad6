"""Append the result of finished ``lcp prune`` runs to a results CSV (e.g. ``results/depth_resnet56.csv``): one row per
run folder, from its ``report.csv`` and ``layers.csv``, with the exact command that made it and the machine.

    python benchmarks/collect_runs.py --out benchmarks/results/depth_resnet56.csv --machine "2-core VM, 1 thread" \\
        --command "lcp prune --model resnet56 ... --out runs/lat/lcp_depth" runs/lat/lcp_depth

Each ``--command`` goes with the folder in the same position. Rows are appended atomically; a row with the same
command replaces the old one.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from lcp.errors import LcpError
from lcp.io import upsert_csv_row

COLUMNS = [
    "command",
    "budget_type",
    "budget",
    "macs_ratio",
    "blocks_removed",
    "top1_pruned_noft",
    "top1_pruned",
    "finetune_epochs",
    "latency_quiet_ratio",
    "latency_base_ms",
    "latency_pruned_ms",
    "speedup",
    "search_s",
    "machine",
]


def run_row(folder: Path, command: str, machine: str) -> dict:
    """The row of one run folder: its report's columns, and the residual blocks it removed (groups of
    ``layers.csv`` whose channels all went: with ``--depth`` a branch leaves with its inner group)."""
    report, layers = folder / "report.csv", folder / "layers.csv"
    if not report.is_file() or not layers.is_file():
        raise LcpError(f"{folder} is not a finished lcp prune run (no report.csv and layers.csv)")
    with open(report, newline="") as f:
        rep = next(csv.DictReader(f))
    with open(layers, newline="") as f:
        emptied = sum(1 for r in csv.DictReader(f) if int(r["channels_after"]) == 0)
    row = {k: rep.get(k, "") for k in COLUMNS}
    row.update(command=command, blocks_removed=emptied, machine=machine, latency_quiet_ratio="")
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folders", nargs="+", type=Path, help="finished lcp prune output folders")
    p.add_argument("--out", type=Path, required=True, help="CSV to append to")
    p.add_argument("--command", action="append", required=True, help="the command of each folder, in order")
    p.add_argument("--machine", required=True, help="the machine and its load, for every row")
    args = p.parse_args(argv)
    if len(args.command) != len(args.folders):
        p.error("give one --command per folder")
    try:
        for folder, command in zip(args.folders, args.command):
            upsert_csv_row(args.out, run_row(folder, command, args.machine), keys=("command",), first=COLUMNS)
    except LcpError as e:
        print(f"collect_runs: {e}")
        return 2
    print(f"{len(args.folders)} row(s) in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
