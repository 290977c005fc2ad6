"""The search against itself: presets and optimizers at 0.5 of the MACs, no fine-tuning, several seeds.

Each cell is one ``lcp prune --finetune-epochs 0 --reconstruct-images 0`` run (its folder under ``--work``): the
search's held-out fitness (lower is better), test top-1 after BatchNorm recalibration, candidates evaluated and
wall time (the sensitivity measurement included) go to one CSV row, appended atomically; a rerun skips the rows
already there and resumes an interrupted run (``--resume``), so long references run in chunks. ``--markdown`` prints the
summary table of docs/search.md (mean ± sd over seeds) from the CSV.

A run is ``PRESET:OPTIMIZER[:CANDIDATES]`` (``fast:legr`` is the default search, ``legr:legr`` LeGR's 400-candidate
reference, ``fast:cma`` the default's members and time budget with CMA-ES instead of the evolution). Time the
runs on a quiet machine: the ``fast`` preset stops on wall time, so a loaded machine evaluates fewer candidates.

    source ../shared/offline-env.sh
    python benchmarks/search_table.py --models resnet56,mobilenetv2 --runs fast:legr,fast:cma,fast:ngopt \\
        --seeds 0,1,2 --threads 2
    python benchmarks/search_table.py --markdown
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd

from lcp.io import upsert_csv_row

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "search_fast_vs_legr.csv"
KEYS = ("model", "search_preset", "optimizer", "candidates_max", "budget", "round_to", "device", "seed")
COLUMNS = [
    *KEYS,
    "candidates",
    "best_fitness",
    "identity_fitness",
    "top1_pruned_noft",
    "macs_ratio",
    "search_s",
    "sensitivity_s",
    "threads",
    "device",
    "seconds_per_candidate",
    "host",
    "command",
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="resnet56,mobilenetv2", help="comma-separated zoo models")
    p.add_argument(
        "--runs",
        default="fast:legr",
        help="comma-separated PRESET:OPTIMIZER[:CANDIDATES] (default fast:legr; CANDIDATES overrides the preset's)",
    )
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--budget", type=float, default=0.5, help="fraction of the MACs kept (default 0.5)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="where the search runs (cpu, cuda, ...; default cpu)")
    p.add_argument(
        "--round-to", type=int, default=1, help="widths in multiples of N (default 1: any width, as the table's rows)"
    )
    p.add_argument("--out", type=Path, default=OUT, help=f"CSV of rows (default {OUT.relative_to(ROOT)})")
    p.add_argument("--work", type=Path, default=Path("runs/search_table"), help="run folders")
    p.add_argument("--markdown", action="store_true", help="print the summary table of --out and exit")
    return p.parse_args(argv)


def cell(model: str, preset: str, optimizer: str, most: int, seed: int, args: argparse.Namespace) -> dict:
    """Run (or resume) one search and read its row from the run folder (``most``: ``--candidates``, 0 for the
    preset's)."""
    device = args.device.replace(":", "")
    tag = f"{f'-c{most}' if most else ''}-b{args.budget:g}-r{args.round_to}{'' if device == 'cpu' else f'-{device}'}"
    folder = args.work / f"{model}-{preset}-{optimizer}{tag}-s{seed}"  # every setting the row's numbers depend on
    cmd = [
        "lcp", "prune", "--model", model, "--budget", f"{args.budget:g}", "--finetune-epochs", "0",
        "--reconstruct-images", "0", "--round-to", str(args.round_to), "--seed", str(seed),
        "--threads", str(args.threads),
        "--search-preset", preset, "--optimizer", optimizer,
        *(["--device", args.device] if args.device != "cpu" else []),
        *(["--candidates", str(most)] if most else []), "--out", str(folder),
    ]  # fmt: skip
    resume = folder.is_dir() and not (folder / "report.csv").is_file()
    run = [sys.executable, "-m", "lcp.cli", *cmd[1:], "--no-progress", *(["--resume"] if resume else [])]
    if not (folder / "report.csv").is_file():
        print(f"{' '.join(cmd)}{' (resumed)' if resume else ''}", flush=True)
        subprocess.run(run, check=True)
    report = pd.read_csv(folder / "report.csv").iloc[0]
    search = json.loads((folder / "search.json").read_text())
    return {
        "model": model,
        "search_preset": preset,
        "optimizer": optimizer,
        "candidates_max": most,
        "budget": args.budget,
        "round_to": args.round_to,
        "seed": seed,
        "candidates": search["candidates_evaluated"],
        "best_fitness": round(search["best_fitness"], 4),
        "identity_fitness": round(search["identity_fitness"], 4),
        "top1_pruned_noft": report["top1_pruned_noft"],
        "macs_ratio": report["macs_ratio"],
        "search_s": search["seconds"] + search["prior_seconds"],
        "sensitivity_s": search["prior_seconds"],
        "threads": args.threads,
        "device": _device_name(args.device),
        "seconds_per_candidate": round(search["seconds"] / max(1, search["candidates_evaluated"]), 3),
        "host": f"{platform.node()} ({os.cpu_count()} cores)",
        "command": shlex.join(cmd),
    }


def _device_name(device: str) -> str:
    """``cpu``, or the GPU's name (``cuda: NVIDIA H200``)."""
    if device.startswith("cuda"):
        import torch

        return f"cuda: {torch.cuda.get_device_name(torch.device(device))}"
    return device


def _filled(df: pd.DataFrame) -> pd.DataFrame:
    """Rows written before a column existed: the optimizer was legr, the candidates the preset's (0), the budget
    0.5, any width (``round_to`` 1), the CPU."""
    df = df.copy()
    df["optimizer"] = df["optimizer"].fillna("legr") if "optimizer" in df else "legr"
    df["candidates_max"] = df["candidates_max"].fillna(0).astype(int) if "candidates_max" in df else 0
    df["device"] = df["device"].fillna("cpu") if "device" in df else "cpu"
    df["budget"] = df["budget"].fillna(0.5).astype(float) if "budget" in df else 0.5
    df["round_to"] = df["round_to"].fillna(1).astype(int) if "round_to" in df else 1
    return df


def markdown(df: pd.DataFrame) -> str:
    """Mean ± sd over seeds per model, preset and optimizer."""
    lines = [
        "| model | preset | optimizer | seeds | candidates | best held-out fitness (mean ± sd) | test top-1, % "
        "(mean ± sd) | per seed | search s (mean, range) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    gpu = "device" in df and (df["device"].fillna("cpu") != "cpu").any()
    if gpu:
        lines[0] = lines[0].replace("| model |", "| model | device |", 1) + " s per candidate (mean) |"
        lines[1] += "---|---|"
    df = _filled(df)
    for (model, preset, opt, most, device, budget, round_to), g in df.groupby(
        ["model", "search_preset", "optimizer", "candidates_max", "device", "budget", "round_to"], sort=False
    ):
        other = (f" at {budget:g} of the MACs" if budget != 0.5 else "") + (
            f" (--round-to {round_to})" if round_to != 1 else ""
        )
        g = g.sort_values("seed")
        sd = lambda s: s.std(ddof=1) if len(s) > 1 else 0.0  # noqa: E731
        per = f" {(g['search_s'] - g['sensitivity_s']).sum() / g['candidates'].sum():.3f} |" if gpu else ""
        lines.append(
            f"| {model}{f' | {device}' if gpu else ''} | "
            f"`{preset}`{f' (--candidates {most})' if most else ''}{other} | "
            f"{opt} | {len(g)} | "
            f"{g['candidates'].min()}-{g['candidates'].max()} | "
            f"{g['best_fitness'].mean():.3f} ± {sd(g['best_fitness']):.3f} | "
            f"{g['top1_pruned_noft'].mean():.2f} ± {sd(g['top1_pruned_noft']):.2f} | "
            f"{', '.join(f'{x:.2f}' for x in g['top1_pruned_noft'])} | "
            f"{g['search_s'].mean():.0f} ({g['search_s'].min():.0f}-{g['search_s'].max():.0f}) |" + per
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.markdown:
        print(markdown(pd.read_csv(args.out)))
        return 0
    if not (os.environ.get("LCP_DATA") and os.environ.get("LCP_WEIGHTS")):
        print("search_table: set LCP_DATA and LCP_WEIGHTS (source ../shared/offline-env.sh)", file=sys.stderr)
        return 2
    done = pd.read_csv(args.out) if args.out.is_file() else pd.DataFrame(columns=COLUMNS)
    done = _filled(done)
    have = {tuple(str(r[k]) for k in KEYS) for _, r in done.iterrows()}
    device = _device_name(args.device)
    for model in args.models.split(","):
        for run in args.runs.split(","):
            preset, optimizer, most = [*run.split(":"), "", ""][:3]
            optimizer, most = optimizer or "legr", most or "0"
            for seed in (int(s) for s in args.seeds.split(",")):
                key = (model, preset, optimizer, most, str(float(args.budget)), str(args.round_to), device, str(seed))
                if key in have:
                    continue
                row = cell(model, preset, optimizer, int(most), seed, args)
                upsert_csv_row(args.out, row, keys=KEYS, first=COLUMNS)
                print(
                    f"{model} {run} seed {seed}: fitness {row['best_fitness']}, "
                    f"top-1 {row['top1_pruned_noft']}%, {row['candidates']} candidates, {row['search_s']:.0f} s",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
