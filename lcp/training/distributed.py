"""Fine-tuning under torchrun: the process group and each rank's device."""

from __future__ import annotations

import os

import torch


def distributed(device: str | torch.device | None = None) -> tuple[int, int]:
    """(world size, rank) when launched by torchrun; (1, 0) otherwise. The first call joins the process group:
    nccl for a run on a CUDA ``device``, gloo otherwise (``LCP_DDP_BACKEND`` overrides)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not torch.distributed.is_available():
        return 1, 0
    if not torch.distributed.is_initialized():
        cuda = device is not None and torch.device(device).type == "cuda"
        torch.distributed.init_process_group(os.environ.get("LCP_DDP_BACKEND") or ("nccl" if cuda else "gloo"))
    return torch.distributed.get_world_size(), torch.distributed.get_rank()


def rank_device(dev: torch.device, world: int) -> torch.device:
    """Under torchrun, each rank's own GPU (``cuda:LOCAL_RANK``) for a run on ``cuda``: nccl refuses two ranks
    on one device."""
    if world <= 1 or dev.type != "cuda" or dev.index is not None:
        return dev
    dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    torch.cuda.set_device(dev)
    return dev
