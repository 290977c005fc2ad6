"""Ultralytics YOLO built from its yaml (random weights, no download) pruned by its traceable parts.

torch.fx cannot trace a ``DetectionModel`` whole (its layers run one by one in Python, its C2f blocks iterate a
chunk, its Detect head unpacks tensor shapes), so ``lcp.prune`` prunes the parts that trace (the bottlenecks
inside the C2f blocks, SPPF, the Detect head's per-level branches), each to the budget of its own MACs and
verified, and returns the whole detector. Needs ``pip install ultralytics`` (not a dependency of lcp).

    python benchmarks/yolo_parts.py --cfg yolov8n.yaml --size 128 --budget 0.5
"""

from __future__ import annotations

import argparse
import time

import torch

import lcp


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cfg", default="yolov8n.yaml", help="an Ultralytics model yaml")
    p.add_argument("--size", type=int, default=128, help="example image size")
    p.add_argument("--budget", type=float, default=0.5)
    p.add_argument("--ignore", action="append", default=[], help="module-name glob kept whole (e.g. 'model.22.*')")
    args = p.parse_args(argv)
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = DetectionModel(args.cfg, verbose=False).eval()
    x = torch.rand(1, 3, args.size, args.size)
    t0 = time.perf_counter()
    result = lcp.prune(model, x, budget=args.budget, ignore=args.ignore)
    with torch.no_grad():
        same = [tuple(a.shape) for a in result.model(x)[:1]] == [tuple(a.shape) for a in model(x)[:1]]
    print(f"{args.cfg} at {args.size} px, budget {args.budget:g}: {len(result.parts)} parts pruned and verified")
    print(f"parts: {', '.join(result.parts)}")
    print(
        f"MACs of the parts: {result.macs_ratio:.3f} kept; whole model: {lcp.count_macs(model, x) / 1e6:.1f}M -> "
        f"{lcp.count_macs(result.model, x) / 1e6:.1f}M; params {result.params_base / 1e6:.3f}M -> "
        f"{result.params_pruned / 1e6:.3f}M ({result.params_ratio:.3f}); output shape unchanged: {same}; "
        f"{time.perf_counter() - t0:.1f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
