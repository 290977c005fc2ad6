"""Options of the recovery after a cut (declared once): fine-tuning, distillation, BatchNorm recalibration."""

from __future__ import annotations

from dataclasses import dataclass

from lcp.options import at_least, fraction, option, positive


@dataclass
class RecoveryOptions:
    """How a pruned network recovers: the same stage for every method, the API and the command line (the API
    defaults to no fine-tuning: ``lcp.prune(finetune_epochs=0)``)."""

    finetune_epochs: int = option(3, "fine-tuning epochs after the cut", check=at_least(0))
    lr: float = option(0.01, "fine-tuning learning rate (cosine schedule)", check=positive)
    batch_size: int = option(128, "training batch size", check=at_least(1))
    kd: bool = option(True, "distil from the unpruned model while fine-tuning (on by default; --no-kd: labels only)")
    kd_weight: float = option(
        0.9, "weight w of the distillation term: (1 - w) cross-entropy + w T^2 KL at T = 4", check=fraction
    )
    recal_batches: int = option(20, "BatchNorm recalibration batches", check=at_least(0), signature=False)
    reconstruct_images: int = option(
        0,
        "refit the pruned dense layers by least squares to the original's outputs on this many training images, "
        "before BatchNorm recalibration (0: off)",
        check=at_least(0),
    )
