"""What the default refit of a cut that is not fine-tuned costs (``lcp prune --finetune-epochs 0``, whose
``--reconstruct-images auto`` refits on 1,024 training images): the wall time of ``lcp.training.reconstruct`` on a
plain global cut of a model, with random images (the time does not depend on what the images show).

    python benchmarks/refit_cost.py --model tv:resnet50 --image-size 224 --threads 2

Prints one line: model, budget, layers refitted of those considered, images used (fewer than asked where their
activations would pass the refit's 1 GiB), seconds. Time it on a quiet machine.
"""

from __future__ import annotations

import argparse
import time

import torch

import lcp
from lcp.training.options import AUTO_REFIT_IMAGES
from lcp.training.reconstruct import reconstruct


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tv:resnet50", help="a zoo, timm or tv: model name (random weights)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--budget", type=float, default=0.5, help="fraction of the MACs the global cut keeps")
    p.add_argument("--images", type=int, default=AUTO_REFIT_IMAGES)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = lcp.create_model(a.model).eval()
    size = (3, a.image_size, a.image_size)
    result = lcp.prune(model, torch.zeros(1, *size), budget=a.budget, method="global")
    batches = [(torch.randn(64, *size), torch.zeros(64, dtype=torch.long)) for _ in range(-(-a.images // 64))]
    t0 = time.perf_counter()
    done = reconstruct(result.model, model, result.graph, result.plan.removed, batches, images=a.images)
    seconds = time.perf_counter() - t0
    print(
        f"{a.model} at {a.image_size} px, budget {a.budget:g}, {a.threads} thread(s): refitted {done['layers']} of "
        f"{done['candidates']} layers on {done['images']} images in {seconds:.1f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
