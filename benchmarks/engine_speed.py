"""Speed of the channel engine (CPU): planning alone, and the full prune of 24 architectures.

1. ``plan``: building the channel graph and a global plan to ``--budget`` (default 0.5), without surgery
   (``lcp.engine.graph.build_graph`` + ``lcp.engine.cost.CostModel`` + l2 importance + ``lcp.cut.ranking.plan``)
   for the zoo
   ResNet-56 at 32x32 and timm's ResNet-50 at 224x224; the median of each phase is reported too.
2. ``prune``: the full ``lcp.prune(model, x, budget=--budget, method="global")`` (graph, plan, surgery,
   verification against the masked original and MACs/params re-count) for lcp's CIFAR zoo models at 32x32
   and 20 timm models at their default input size (``pretrained_cfg["input_size"]``), with the MACs before
   and after, the ratio and the verification error.

Every time is the median of ``--repeats`` runs (default 5; min and max are in the CSV). Models are built
with random weights (``pretrained=False``, seed 0) and pruned in eval mode (``--train-mode`` keeps the
train mode timm gives them; ghostnet_100 then fails, see tests/engine/test_real_models.py). A model that fails
gets a row with ``status`` = the error and the run goes on.

Each row is written to ``--out`` as soon as it is measured, in place of the row with the same task, model,
input, threads, budget and mode (eval or train); the other rows stay, so a run of a few models updates their
rows of the table. Every row records the machine, the torch version and the date it was measured.

    python benchmarks/engine_speed.py [--out benchmarks/results/engine_speed.csv] [--threads 1]
    python benchmarks/engine_speed.py --models resnet56,resnet50 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]

ZOO_MODELS = ["resnet20", "resnet56", "mobilenetv2", "densenet40"]
TIMM_MODELS = [
    "resnet18",
    "resnet50",
    "mobilenetv2_100",
    "mobilenetv3_large_100",
    "efficientnet_b0",
    "regnetx_002",
    "regnety_004",
    "densenet121",
    "ghostnet_100",
    "convnext_atto",
    "repvgg_a0",
    "mixnet_s",
    "dla34",
    "cspresnet50",
    "res2net50_14w_8s",
    "rexnet_100",
    "hrnet_w18_small",
    "resnext26ts",
    "dpn48b",
    "efficientnetv2_rw_t",
]
PLAN_CASES = [("resnet56", 32), ("resnet50", 224)]
COLUMNS = [
    "task",
    "model",
    "input",
    "threads",
    "budget",
    "mode",
    "repeats",
    "median_s",
    "min_s",
    "max_s",
    "graph_s",
    "cost_s",
    "importance_s",
    "plan_s",
    "macs_base",
    "macs_pruned",
    "ratio",
    "params_base",
    "params_pruned",
    "verify_err",
    "units",
    "groups",
    "status",
    "machine",
    "torch",
    "date",
]
# a row replaces the row of --out that agrees on these (the settings that change what is timed)
KEYS = ("task", "model", "input", "threads", "budget", "mode")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--out",
        type=Path,
        default=ROOT / "benchmarks" / "results" / "engine_speed.csv",
        help="CSV to update, a row at a time (default benchmarks/results/engine_speed.csv)",
    )
    p.add_argument("--repeats", type=int, default=5, help="runs per measurement; the median is reported")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: stable timings on a shared machine; 0 = torch's choice)",
    )
    p.add_argument("--budget", type=float, default=0.5, help="fraction of MACs kept (default 0.5)")
    p.add_argument("--models", default="", help="comma-separated subset of the 24 models (default: all)")
    p.add_argument("--skip-plan", action="store_true", help="skip the plan-only timings")
    p.add_argument("--skip-prune", action="store_true", help="skip the full-prune timings")
    p.add_argument("--train-mode", action="store_true", help="prune the models in train mode (as built)")
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------------- models


def build(name: str) -> tuple[nn.Module, tuple[int, int, int]]:
    """A model with random weights (seed 0) and its default input size (C, H, W)."""
    torch.manual_seed(0)
    if name in ZOO_MODELS:
        try:
            from lcp.models.factory import create_model, model_info

            return create_model(name, num_classes=10), tuple(model_info(name).input_size)
        except ImportError:
            from lcp.models.zoo import ZOO

            return ZOO[name](num_classes=10), tuple(getattr(ZOO[name], "input_size", (3, 32, 32)))
    import timm

    model = timm.create_model(name, num_classes=10, pretrained=False)
    return model, tuple(model.pretrained_cfg["input_size"])


# ------------------------------------------------------------------------------------------------- timing


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def stats(times: list[float]) -> dict[str, float]:
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times)}


def bench_plan(name: str, size: int, args: argparse.Namespace) -> dict:
    """build_graph + CostModel + importance + plan, no surgery; the median of every phase and of the total."""
    from lcp.cut import importance as imp
    from lcp.cut.ranking import plan
    from lcp.engine.cost import CostModel
    from lcp.engine.graph import build_graph

    model, _ = build(name)
    if not args.train_mode:
        model.eval()
    x = torch.randn(1, 3, size, size)
    phases: dict[str, list[float]] = {k: [] for k in ("graph_s", "cost_s", "importance_s", "plan_s", "total")}
    for _ in range(args.repeats):
        t_graph, graph = timed(lambda: build_graph(model, x))
        t_cost, cost = timed(lambda: CostModel(graph))  # noqa: B023  (each lambda runs at once)
        t_imp, scores = timed(lambda: imp.unit_scores(graph, imp.filter_scores(graph, "l2"), "mean"))  # noqa: B023
        t_plan, p = timed(lambda: plan(graph, cost, scores, budget=args.budget, method="global"))  # noqa: B023
        for k, v in zip(phases, (t_graph, t_cost, t_imp, t_plan, t_graph + t_cost + t_imp + t_plan)):
            phases[k].append(v)
    row = {
        "task": "plan",
        "model": name,
        "input": f"3x{size}x{size}",
        **stats(phases.pop("total")),
        **{k: statistics.median(v) for k, v in phases.items()},
        "macs_base": p.macs_base,
        "macs_pruned": p.macs,
        "ratio": p.macs / p.macs_base,
        "params_base": p.params_base,
        "params_pruned": p.params,
        "units": len(graph.units),
        "groups": len(graph.groups),
        "status": "ok",
    }
    return row


def bench_prune(name: str, args: argparse.Namespace) -> dict:
    import lcp

    model, input_size = build(name)
    if not args.train_mode:
        model.eval()
    x = torch.randn(1, *input_size)
    row: dict[str, Any] = {"task": "prune", "model": name, "input": "x".join(map(str, input_size))}
    times = []
    try:
        for _ in range(args.repeats):
            t, res = timed(lambda: lcp.prune(model, x, budget=args.budget, method="global"))
            times.append(t)
    except Exception as e:  # one failing model must not stop the benchmark
        msg = str(e).splitlines()[0] if str(e) else ""
        row.update(status=f"{type(e).__name__}: {msg}"[:300], repeats=len(times))
        return row
    p = res.plan
    row.update(
        stats(times),
        macs_base=p.macs_base,
        macs_pruned=p.macs,
        ratio=p.macs / p.macs_base,
        params_base=p.params_base,
        params_pruned=p.params,
        verify_err=res.verification.max_rel_error,
        units=len(res.graph.units),
        groups=len(res.graph.groups),
        status="ok" if res.verification.ok else "verification failed",
    )
    return row


# ------------------------------------------------------------------------------------------------- output


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def machine() -> str:
    """The CPU's model name and count (``/proc/cpuinfo`` where there is one)."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            name = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), name)
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} CPUs"


def write_row(row: dict, path: Path) -> None:
    """Put ``row`` into the CSV at ``path`` in place of the row with the same ``KEYS`` (rewritten atomically)."""
    from lcp.io import upsert_csv_row

    line = {k: fmt(row.get(k)) for k in COLUMNS}
    upsert_csv_row(path, line, KEYS, first=COLUMNS)


def print_table(rows: list[dict]) -> None:
    plan_rows = [r for r in rows if r["task"] == "plan"]
    if plan_rows:
        print("\nchannel graph + 50% global plan, no surgery (median of runs, seconds)")
        print(
            f"{'model':<12} {'input':<10} {'total':>7} {'graph':>7} {'cost':>7} {'import':>7} {'plan':>7} "
            f"{'units':>6} {'groups':>6} {'ratio':>7}"
        )
        for r in plan_rows:
            print(
                f"{r['model']:<12} {r['input']:<10} {r['median_s']:7.3f} {r['graph_s']:7.3f} {r['cost_s']:7.3f} "
                f"{r['importance_s']:7.3f} {r['plan_s']:7.3f} {r['units']:6d} {r['groups']:6d} {r['ratio']:7.4f}"
            )
    prune_rows = [r for r in rows if r["task"] == "prune"]
    if prune_rows:
        print("\nfull prune to 50% MACs, global ranking (median of runs, seconds; MACs in millions)")
        print(
            f"{'model':<22} {'input':<10} {'time':>7} {'MACs base':>10} {'MACs pruned':>11} {'ratio':>7} "
            f"{'verify err':>10}  status"
        )
        for r in prune_rows:
            if r.get("median_s") is None:
                print(f"{r['model']:<22} {r['input']:<10} {'-':>7} {'':>10} {'':>11} {'':>7} {'':>10}  {r['status']}")
                continue
            print(
                f"{r['model']:<22} {r['input']:<10} {r['median_s']:7.2f} {r['macs_base'] / 1e6:10.2f} "
                f"{r['macs_pruned'] / 1e6:11.2f} {r['ratio']:7.4f} {r['verify_err']:10.2e}  {r['status']}"
            )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    models = [m.strip() for m in args.models.split(",") if m.strip()] or ZOO_MODELS + TIMM_MODELS
    unknown = [m for m in models if m not in ZOO_MODELS + TIMM_MODELS]
    if unknown:
        raise SystemExit(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(ZOO_MODELS + TIMM_MODELS)}")
    print(
        f"torch {torch.__version__}, {threads} thread(s), {os.cpu_count()} CPUs, {platform.processor() or ''}, "
        f"{args.repeats} runs per measurement",
        flush=True,
    )
    stamp = {
        "threads": threads,
        "budget": args.budget,
        "mode": "train" if args.train_mode else "eval",
        "machine": machine(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }
    rows: list[dict] = []

    def keep(row: dict) -> dict:
        row.update(stamp, repeats=row.get("repeats", args.repeats))
        write_row(row, args.out)  # at once: an interrupted run keeps the rows it measured
        rows.append(row)
        return row

    if not args.skip_plan:
        for name, size in PLAN_CASES:
            if args.models and name not in models:
                continue
            row = keep(bench_plan(name, size, args))
            print(f"plan  {name:<22} {row['input']:<10} {row['median_s']:7.3f} s", flush=True)
    if not args.skip_prune:
        for name in models:
            row = keep(bench_prune(name, args))
            t = f"{row['median_s']:7.2f} s" if row.get("median_s") is not None else row["status"]
            print(f"prune {name:<22} {row['input']:<10} {t}", flush=True)
    print_table(rows)
    print(f"\nupdated {args.out} ({len(rows)} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
