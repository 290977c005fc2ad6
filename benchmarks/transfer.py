"""Does a pruned structure found on CIFAR-10 transfer to another task? (ADS's claim; docs/agents.md)

Task B is the six animal classes of CIFAR-10 (bird, cat, deer, dog, frog, horse) as a 6-way task: a folder of
links to ``$LCP_DATA/cifar10`` under ``--work``. Its network is the shared CIFAR-10 ResNet-20 with a new 6-way
classifier, trained on task B's training images (lcp's held-out split left out) for ``--base-epochs``. Then, on
task B, every row through ``lcp prune`` with its default recovery (BatchNorm recalibration, 3 fine-tuning epochs
distilled from the unpruned task-B network) and the row's seed:

- ``transfer``: ``--structure-from`` the CIFAR-10 run of ``--source-method`` at ``--budget`` (searched once, seed 0,
  on the CIFAR-10 checkpoint; no fine-tuning there);
- ``uniform``: ``--method uniform`` at the MACs ratio the transferred structure keeps;
- ``<source-method>``: the same method searched on task B itself (what searching again would give);
- ``ceiling``: the unpruned task-B network through the same recovery (``--method uniform --budget 1``).

Rows go to ``--out`` (appended atomically, keyed by row, seed, source method, budget, task-B epochs and
``--round-to``; a rerun skips finished rows, the run folders resume)::

    source ../shared/offline-env.sh
    python benchmarks/transfer.py --seeds 0,1,2 --out benchmarks/results/transfer_resnet20.csv
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from lcp.io import upsert_csv_row

ROOT = Path(__file__).resolve().parents[1]
ANIMALS = ("bird", "cat", "deer", "dog", "frog", "horse")
KEYS = ("row", "seed", "source_method", "budget", "base_epochs", "round_to")


def task_folder(work: Path) -> Path:
    """Task B as an ImageFolder of links: train/ and test/ with the animal classes of $LCP_DATA/cifar10."""
    src = Path(os.environ.get("LCP_DATA", "")) / "cifar10"
    if not (src / "train").is_dir():
        raise SystemExit("error: $LCP_DATA/cifar10 is missing (source ../shared/offline-env.sh)")
    root = work / "animals6"
    for split in ("train", "test"):
        for c in ANIMALS:
            link = root / split / c
            if not link.exists():
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to((src / split / c).resolve(), target_is_directory=True)
    return root


def base_model(work: Path, data: Path, epochs: float, threads: int) -> Path:
    """The CIFAR-10 ResNet-20 given a 6-way classifier and trained on task B (cached in ``work``)."""
    ckpt = work / f"resnet20_animals6_e{epochs:g}.pt"
    if ckpt.is_file():
        return ckpt
    import torch

    import lcp
    from lcp.training.data import load_data

    torch.manual_seed(0)
    weights = Path(os.environ["LCP_WEIGHTS"]) / "resnet20_cifar10.pt"
    trained = lcp.create_model("resnet20", checkpoint=weights).state_dict()
    model = lcp.create_model("resnet20", num_classes=len(ANIMALS))  # every weight but the classifier's kept
    own = model.state_dict()
    model.load_state_dict({k: v for k, v in trained.items() if own[k].shape == v.shape}, strict=False)
    bundle = load_data(data)
    t0 = time.perf_counter()
    lcp.finetune(model, bundle, epochs=epochs, lr=0.05, seed=0, progress=False, num_threads=threads)
    tmp = ckpt.with_suffix(".tmp")
    torch.save(model.state_dict(), tmp)
    tmp.replace(ckpt)
    print(f"task-B network trained for {epochs:g} epochs in {time.perf_counter() - t0:.0f} s: {ckpt}", flush=True)
    return ckpt


def prune(args: list[str], out: Path, threads: int) -> pd.Series:
    """One ``lcp prune`` run (resumed if its folder exists); its report row."""
    if (out / "report.csv").is_file():
        return pd.read_csv(out / "report.csv").iloc[0]
    cmd = [
        sys.executable,
        "-m",
        "lcp.cli",
        "prune",
        *args,
        "--out",
        str(out),
        "--threads",
        str(threads),
        "--no-progress",
    ]
    if out.is_dir() and any(out.iterdir()):
        cmd.append("--resume")
    print("$ " + " ".join(cmd), flush=True)
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"error: {' '.join(cmd)} failed: {(done.stderr or done.stdout).strip()[-500:]}")
    return pd.read_csv(out / "report.csv").iloc[0]


def _key(r: pd.Series) -> tuple[str, int, str, float, float, int]:
    """A row's identity: rows from before these columns were amc at 0.5 with any width (``source`` says so)."""

    def given(name: str, default: object) -> object:
        v = r.get(name)
        return default if v is None or (isinstance(v, float) and pd.isna(v)) else v

    source = str(given("source", "amc on cifar10 at 0.5"))
    method, budget = source.split(" on ")[0], float(source.split(" at ")[1].split()[0])
    return (
        str(r["row"]),
        int(r["seed"]),
        str(given("source_method", method)),
        float(given("budget", budget)),
        float(given("base_epochs", 3)),
        int(given("round_to", 1)),
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="0", help="comma-separated seeds of the task-B rows")
    p.add_argument("--budget", type=float, default=0.5, help="MACs budget of the CIFAR-10 search (default 0.5)")
    p.add_argument("--source-method", default="amc", help="method that finds the structure (default amc)")
    p.add_argument("--rows", default="transfer,uniform,searched,ceiling", help="which rows (comma-separated)")
    p.add_argument("--base-epochs", type=float, default=3, help="task-B training of the unpruned network")
    p.add_argument(
        "--round-to", type=int, default=1, help="widths in multiples of N on both tasks (default 1: any width)"
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "transfer")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "transfer" / "transfer_resnet20.csv")
    a = p.parse_args(argv)
    a.work.mkdir(parents=True, exist_ok=True)
    data = task_folder(a.work)
    done = pd.read_csv(a.out) if a.out.is_file() else pd.DataFrame(columns=list(KEYS))
    have = {_key(r) for _, r in done.iterrows()}
    m = a.source_method
    rounding = ["--round-to", str(a.round_to)]

    source = a.work / f"cifar10-{m}-b{a.budget:g}{'' if a.round_to == 1 else f'-r{a.round_to}'}"
    src_args = [
        "--model",
        "resnet20",
        "--method",
        m,
        "--budget",
        str(a.budget),
        "--finetune-epochs",
        "0",
        "--reconstruct-images",
        "0",
        *rounding,
    ]
    src = prune([*src_args, "--seed", "0"], source, a.threads)
    ckpt = base_model(a.work, data, a.base_epochs, a.threads)
    task = ["--model", "resnet20", "--data", str(data), "--checkpoint", str(ckpt), *rounding]
    # a task-B run depends on the source's method and budget, the task-B network's training and the rounding
    setting = f"{m}-b{a.budget:g}-e{a.base_epochs:g}-r{a.round_to}"
    ratio = float(src["macs_ratio"])

    for seed in [int(s) for s in a.seeds.split(",")]:
        for row in a.rows.split(","):
            if (row, seed, m, float(a.budget), float(a.base_epochs), a.round_to) in have:
                continue
            out = a.work / f"animals6-{setting}-{row}-seed{seed}"
            if row == "transfer":
                r = prune([*task, "--structure-from", str(source), "--seed", str(seed)], out, a.threads)
            elif row == "uniform":
                r = prune(
                    [*task, "--method", "uniform", "--budget", f"{ratio:.6f}", "--seed", str(seed)], out, a.threads
                )
            elif row == "searched":
                r = prune([*task, "--method", m, "--budget", str(a.budget), "--seed", str(seed)], out, a.threads)
            elif row == "ceiling":
                r = prune([*task, "--method", "uniform", "--budget", "1", "--seed", str(seed)], out, a.threads)
            else:
                raise SystemExit(f"error: unknown row {row!r} (transfer, uniform, searched, ceiling)")
            rec = {
                "row": row,
                "seed": seed,
                "method": r["method"],
                "source": f"{m} on cifar10 at {a.budget:g} ({src['top1_pruned_noft']:.2f}% there before fine-tuning)",
                "macs_ratio": float(r["macs_ratio"]),
                "params_ratio": float(r["params_ratio"]),
                "top1_base": float(r["top1_base"]),
                "top1_pruned_noft": float(r["top1_pruned_noft"]),
                "top1_pruned": float(r["top1_pruned"]),
                "finetune_epochs": float(r["finetune_epochs"]),
                "search_s": float(r["search_s"]),
                "finetune_s": float(r["finetune_s"]),
                "base_epochs": a.base_epochs,
                "source_method": m,
                "budget": a.budget,
                "round_to": a.round_to,
                "run": str(out.relative_to(ROOT) if out.is_relative_to(ROOT) else out),
            }
            upsert_csv_row(a.out, rec, keys=KEYS)
            print(
                f"{row:>9} seed {seed}: MACs {rec['macs_ratio']:.3f}, top-1 {rec['top1_pruned_noft']:.2f}% (BN recal)"
                f" -> {rec['top1_pruned']:.2f}%",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
