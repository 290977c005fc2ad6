"""Fine-tuning under torchrun: the process group and each rank's device."""

from __future__ import annotations

import os

import torch


def distributed(device: str | torch.device | None = None) -> tuple[int, int]:
    """(world size, rank) when launched by torchrun; (1, 0) otherwise. The first call joins the process group:
    nccl for a run on a CUDA ``device``, gloo otherwise (``LCP_DDP_BACKEND`` overrides); a CUDA run's rank then
    works on the GPU of its ``LOCAL_RANK`` (``cuda`` means that GPU from here on: nccl refuses two ranks on one)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not torch.distributed.is_available():
        return 1, 0
    if not torch.distributed.is_initialized():
        cuda = device is not None and torch.device(device).type == "cuda"
        if cuda and torch.cuda.device_count() > 1:  # one visible GPU per rank (CUDA_VISIBLE_DEVICES): nothing to pick
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
        torch.distributed.init_process_group(os.environ.get("LCP_DDP_BACKEND") or ("nccl" if cuda else "gloo"))
    return torch.distributed.get_world_size(), torch.distributed.get_rank()
