"""Options of the recovery after a cut (declared once): fine-tuning, distillation, BatchNorm recalibration."""

from __future__ import annotations

from dataclasses import dataclass

from lcp.options import at_least, fraction, option, or_auto, positive

AUTO_REFIT_IMAGES = 1024  # what reconstruct_images "auto" refits a cut that is not fine-tuned on


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
    channels_last: bool = option(
        True,
        "train (fine-tuning, and a baseline trained for lack of weights) in the channels-last memory layout on a CPU "
        "where the model allows it (faster for most networks, docs/training.md; --no-channels-last: NCHW; a resumed "
        "run keeps its checkpoint's layout; the search's candidates choose their own layout)",
        signature=False,
    )
    recal_batches: int = option(20, "BatchNorm recalibration batches", check=at_least(0), signature=False)
    reconstruct_images: int | str = option(
        "auto",
        "refit the pruned dense layers by least squares to the original's outputs on this many training images, "
        f"before BatchNorm recalibration (0: off; auto: {AUTO_REFIT_IMAGES} for a cut that is not fine-tuned, "
        "--finetune-epochs 0, else off: after the default fine-tuning the refit did not help)",
        check=or_auto(at_least(0)),
    )


def refit_images(options: RecoveryOptions) -> int:
    """The images ``run.recover`` refits the cut on: ``reconstruct_images`` with ``auto`` resolved
    (``AUTO_REFIT_IMAGES`` when ``finetune_epochs`` is 0, else 0)."""
    if options.reconstruct_images == "auto":
        return AUTO_REFIT_IMAGES if options.finetune_epochs == 0 else 0
    return int(options.reconstruct_images)
