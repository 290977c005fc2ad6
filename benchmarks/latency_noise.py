"""How noisy is a paired latency ratio on this machine? The experiments behind docs/latency.md's "Why the cut
times a network until it is known to 1.25%" (one thread, batch 64 unless said).

    python benchmarks/latency_noise.py drift        # ResNet-56 at 0.26 of the MACs, timed for 4 minutes
    python benchmarks/latency_noise.py interleave   # rounds of 6 timings against single interleaved passes
    python benchmarks/latency_noise.py repeat-cut   # trained MobileNetV2: a 0.5 batch-64 latency cut, re-timed 4x

``repeat-cut`` needs the data and checkpoints ($LCP_DATA, $LCP_WEIGHTS: source ../shared/offline-env.sh).
"""

from __future__ import annotations

import argparse
import statistics
import time
from unittest import mock

import torch

import lcp
import lcp.cut.latency as L
import lcp.cut.pruner as P
from lcp.cut.pruner import prune_graph

SIZE = (3, 32, 32)


def _resnet56_cut(budget: float = 0.26):
    m = lcp.create_model("resnet56").eval()
    return m, prune_graph(lcp.build_graph(m, torch.zeros(1, *SIZE)), budget=budget).model.eval()


def drift(seconds: float = 240) -> None:
    m, r = _resnet56_cut()
    t0 = time.time()
    while time.time() - t0 < seconds:
        a = L.paired_latency(r, m, SIZE, batch=64, n_threads=1, repeats=30)
        b = L.paired_latency(r, m, SIZE, batch=1, n_threads=1, repeats=30)
        print(
            "%4.0fs b64 ratio %.4f base %.1f ms rounds %s | b1 ratio %.4f base %.2f ms"
            % (
                time.time() - t0,
                a["ratio"],
                a["reference_ms"],
                [round(x, 3) for x in a["rounds"]],
                b["ratio"],
                b["reference_ms"],
            ),
            flush=True,
        )


def _interleaved(model, ref, batch: int, n: int) -> tuple[float, float]:
    x = torch.randn(batch, *SIZE)
    tm, tr = [], []
    with L.threads(1), torch.inference_mode():
        for i in range(n + 2):
            for mm, t in ((ref, tr), (model, tm)):
                t0 = time.perf_counter()
                mm(x)
                dt = time.perf_counter() - t0
                if i >= 2:
                    t.append(dt)
    pair = statistics.median([a / b for a, b in zip(tm, tr)])
    return statistics.median(tm) / statistics.median(tr), pair


def interleave(times: int = 8) -> None:
    m, r = _resnet56_cut()
    A, B, C = [], [], []
    t0 = time.time()
    for _ in range(times):
        A.append(L.paired_latency(r, m, SIZE, batch=64, n_threads=1, repeats=30)["ratio"])
        b, c = _interleaved(r, m, 64, 30)
        B.append(b)
        C.append(c)
        print("%4.0fs A %.4f B %.4f C %.4f" % (time.time() - t0, A[-1], b, c), flush=True)
    for name, v in (("rounds5x6", A), ("interleaved ratio of medians", B), ("interleaved median of pair ratios", C)):
        med = statistics.median(v)
        print(
            name,
            "median %.4f spread %.1f%% sd %.1f%%"
            % (med, 100 * (max(v) - min(v)) / med, 100 * statistics.stdev(v) / med),
        )


def repeat_cut() -> None:
    from lcp.run.config import PruneConfig
    from lcp.run.load import load_model_and_data

    loaded = load_model_and_data(PruneConfig(model="mobilenetv2", data="cifar10"), log=lambda *a, **k: None)
    m = loaded.model.eval()
    g = lcp.build_graph(m, torch.zeros(1, *SIZE))
    orig = L.paired_latency
    t0 = time.time()

    def logged(model, ref, *a, **k):
        t = orig(model, ref, *a, **k)
        print(
            "%4.0fs cut timing: id %d ratio %.4f ms %.1f ref %.1f rounds %s"
            % (
                time.time() - t0,
                id(model) % 10000,
                t["ratio"],
                t["median_ms"],
                t["reference_ms"],
                [round(x, 3) for x in t["rounds"]],
            ),
            flush=True,
        )
        return t

    # the cut calls the name lcp.cut.pruner imported (``from lcp.cut.latency import paired_latency``): patched
    # there (and in lcp.cut.latency, for whatever looks it up at call time), every timing it takes is logged
    with mock.patch.object(P, "paired_latency", logged), mock.patch.object(L, "paired_latency", logged):
        res = prune_graph(g, budget=0.5, budget_type="latency", latency={"batch": 64, "n_threads": 1, "repeats": 30})
    print("accepted id", id(res.model) % 10000, res.info, flush=True)
    for _ in range(4):
        t = orig(res.model, m, SIZE, batch=64, n_threads=1, repeats=200, rounds=20)
        print(
            "%4.0fs retime ratio %.4f ms %.1f ref %.1f err %.4f"
            % (time.time() - t0, t["ratio"], t["median_ms"], t["reference_ms"], L.median_error(t["rounds"])),
            flush=True,
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiment", choices=("drift", "interleave", "repeat-cut"))
    a = p.parse_args()
    {"drift": drift, "interleave": interleave, "repeat-cut": repeat_cut}[a.experiment]()


if __name__ == "__main__":
    main()
