"""Training checkpoints: one safetensors file per run, replaced atomically after every epoch.

Model tensors under ``model.<key>``, optimizer state tensors under ``optim.<param index>.<name>``, RNG states under
``rng.*``; everything else (epoch, step, schedule, settings, history, non-tensor optimizer state) is JSON in the
file's metadata. No pickle anywhere.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lcp.errors import LcpError
from lcp.io import with_metadata_of
from lcp.training.images import atomic_write

_FORMAT = "lcp-train-checkpoint/1"


# ----------------------------------------------------------------------------------------- checkpoints


def _rng_state() -> dict[str, Tensor]:
    """torch's CPU (and CUDA, once a run has used it) RNG states; lcp's data order does not use any other RNG."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # a CPU run does not start CUDA to save them
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    return tensors


def _set_rng_state(tensors: dict[str, Tensor]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    n_cuda = sum(k.startswith("rng.cuda.") for k in tensors)
    if n_cuda and torch.cuda.is_available():  # the devices still visible (CUDA_VISIBLE_DEVICES may hide some)
        for i in range(min(n_cuda, torch.cuda.device_count())):
            torch.cuda.set_rng_state(tensors[f"rng.cuda.{i}"], i)


def save_checkpoint(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None, info: dict[str, Any]
) -> None:
    """Write model, optimizer state, RNG states and the JSON ``info`` to ``path`` atomically (safetensors)."""
    from safetensors.torch import save

    tensors: dict[str, Tensor] = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt_meta: dict[str, Any] = {}
    if optimizer is not None:
        sd = optimizer.state_dict()
        scalars: dict[str, dict[str, Any]] = {}
        for idx, st in sd["state"].items():
            for name, v in st.items():
                if isinstance(v, Tensor):
                    tensors[f"optim.{idx}.{name}"] = v
                else:
                    scalars.setdefault(str(idx), {})[name] = v
        opt_meta = {"param_groups": sd["param_groups"], "scalars": scalars}
    tensors.update(_rng_state())
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    meta = {"format": _FORMAT, "info": info, "optimizer": opt_meta}
    blob = save(tensors, metadata={"lcp": json.dumps(meta)})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: f.write(blob))


def load_checkpoint(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *, restore_rng: bool = False
) -> dict[str, Any]:
    """Load a :func:`save_checkpoint` file into ``model`` (and ``optimizer``, and torch's RNG if asked);
    return its ``info`` dict."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("lcp", "{}"))
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:
        why = type(exc).__name__
        raise LcpError(f"cannot read checkpoint {path} ({why}): delete it or start without --resume") from None
    if meta.get("format") != _FORMAT:
        raise LcpError(f"{path} is not an lcp training checkpoint: delete it or start without --resume")
    state = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(with_metadata_of(model, state))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        why = first[1].strip() if len(first) > 1 else first[0]
        raise LcpError(f"checkpoint {path} does not fit this model ({why}); start without --resume") from None
    if optimizer is not None and meta["optimizer"]:
        om = meta["optimizer"]
        st: dict[int, dict[str, Any]] = {}
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, idx, name = k.split(".", 2)
                st.setdefault(int(idx), {})[name] = v
        for idx, scalars in om["scalars"].items():
            st.setdefault(int(idx), {}).update(scalars)
        optimizer.load_state_dict({"state": st, "param_groups": om["param_groups"]})
    if restore_rng:
        _set_rng_state(tensors)
    return dict(meta["info"])
