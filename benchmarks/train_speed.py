"""Speed of lcp's training loop on the CPU: the default (NCHW) memory layout against channels-last.

For each zoo model, unpruned and cut to 0.5 of the MACs by the global ranking (what fine-tuning trains; for
DenseNet-40 also by removing dense connections, what ads and lwp fine-tune), with
and without distillation from the unpruned network (``lcp prune``'s default recovery distils), the same
``lcp.training.finetune`` steps (SGD Nesterov, batch ``--batch`` of random 32x32 images: speed does not depend
on the pixels) run with ``channels_last=False`` and ``channels_last=True``, alternating, ``--rounds`` times after
one warm-up run of each. A row holds the median seconds per step of each layout and their ratio (above 1:
channels-last is faster). Rows are written to ``--out`` as they are measured, in place of the row with the same
model, network, distillation, batch and threads. Time it on a quiet machine.

    python benchmarks/train_speed.py [--out benchmarks/results/train_speed.csv] [--threads 2]
    python benchmarks/train_speed.py --models resnet56 --rounds 3 --steps 10
    python benchmarks/train_speed.py --models resnet56 --networks "global 0.5" --profile   # where the time goes
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from engine_speed import fmt, machine  # noqa: E402

MODELS = ["resnet20", "resnet56", "mobilenetv2", "densenet40"]
KEYS = ["model", "network", "kd", "batch", "threads"]
COLUMNS = KEYS + [
    "nchw_s_per_step",
    "channels_last_s_per_step",
    "speedup",
    "rounds",
    "steps",
    "machine",
    "torch",
    "date",
]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated zoo models")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=8, help="training steps per timed run")
    ap.add_argument("--rounds", type=int, default=3, help="timed runs of each layout, alternating")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--networks",
        default="unpruned,global 0.5",
        help="comma-separated: unpruned, global 0.5, connections 0.5 (densenet40 only)",
    )
    ap.add_argument("--profile", action="store_true", help="print the top ops of one run of each layout instead")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/train_speed.csv")
    return ap.parse_args(argv)


def seconds_per_step(net: nn.Module, teacher: nn.Module | None, batches: list, channels_last: bool) -> float:
    from lcp.training.train import finetune

    model = copy.deepcopy(net)
    t0 = time.perf_counter()
    res = finetune(model, lambda epoch: batches, epochs=1, teacher=teacher, progress=False, channels_last=channels_last)
    if res["channels_last"] != channels_last:  # the layout check refused it: the row would time NCHW twice
        raise SystemExit(f"{type(net).__name__} does not train channels-last (its outputs or its teacher's differ)")
    return (time.perf_counter() - t0) / len(batches)


def print_profile(title: str, net: nn.Module, teacher: nn.Module | None, batches: list) -> None:
    from torch.profiler import ProfilerActivity, profile

    for cl in (False, True):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            seconds_per_step(net, teacher, batches, cl)
        print(f"\n{title}, {'channels-last' if cl else 'NCHW'}, {len(batches)} steps:")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8))


def connection_cut(base: nn.Module, x: torch.Tensor) -> nn.Module:
    """DenseNet-40 with a seeded random set of dense connections removed, projected to 0.5 of the MACs (what ads
    and lwp fine-tune: each pruned consumer gathers the input channels it keeps)."""
    import numpy as np

    from lcp.engine.connections import build

    cg = build(base, x)
    rng = np.random.default_rng(0)
    return cg.apply(cg.project(rng.random(cg.n) < 0.5, rng.random(cg.n), budget=0.5))


def measure(name: str, args: argparse.Namespace) -> list[dict]:
    import lcp
    from lcp.models.zoo import ZOO

    torch.manual_seed(0)
    base = ZOO[name]().eval()
    x = torch.randn(2, 3, 32, 32)
    networks = {
        "unpruned": lambda: base,
        "global 0.5": lambda: lcp.prune(copy.deepcopy(base), x, budget=0.5, method="global").model,
        "connections 0.5": lambda: connection_cut(base, x),
    }
    g = torch.Generator().manual_seed(0)
    batches = [
        (torch.randn(args.batch, 3, 32, 32, generator=g), torch.randint(0, 10, (args.batch,), generator=g))
        for _ in range(args.steps)
    ]
    rows = []
    for network in [n.strip() for n in args.networks.split(",")]:
        if network not in networks or (network == "connections 0.5" and name != "densenet40"):
            continue
        net = networks[network]()
        for kd in (False, True):
            teacher = copy.deepcopy(base).eval() if kd else None
            for cl in (False, True):  # warm-up: allocator, oneDNN primitive caches
                seconds_per_step(net, teacher, batches[:2], cl)
            if args.profile:
                print_profile(f"{name}, {network}, kd {'yes' if kd else 'no'}", net, teacher, batches)
                continue
            times: dict[bool, list[float]] = {False: [], True: []}
            for r in range(args.rounds):
                for cl in (False, True) if r % 2 == 0 else (True, False):
                    times[cl].append(seconds_per_step(net, teacher, batches, cl))
            a, b = statistics.median(times[False]), statistics.median(times[True])
            rows.append(
                dict(model=name, network=network, kd="yes" if kd else "no", batch=args.batch,
                     threads=torch.get_num_threads(), nchw_s_per_step=a, channels_last_s_per_step=b,
                     speedup=a / b, rounds=args.rounds, steps=args.steps)
            )  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    from lcp.io import upsert_csv_row

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise SystemExit(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    stamp = {"machine": machine(), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {stamp['machine']}", flush=True)
    for name in models:
        for row in measure(name, args):  # none with --profile
            row.update(stamp)
            upsert_csv_row(args.out, {k: fmt(row.get(k)) for k in COLUMNS}, KEYS, first=COLUMNS)
            print(
                f"{name:<12} {row['network']:<11} kd {row['kd']:<3} NCHW {row['nchw_s_per_step']:.3f} s/step, "
                f"channels-last {row['channels_last_s_per_step']:.3f} s/step: {row['speedup']:.2f}x",
                flush=True,
            )
    if not args.profile:
        print(f"updated {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
