"""Create any model by name (lcp zoo, torchvision with ``tv:``, timm), describe it, and load checkpoints.

Every user-facing failure becomes one :class:`~lcp.errors.LcpError` line.
"""

from __future__ import annotations

import difflib
import inspect
import logging
import os
import pickle
import re
import socket
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from lcp.errors import LcpError
from lcp.io import cache_dir, with_metadata_of
from lcp.models.zoo import IMAGENET_MEAN, IMAGENET_STD, ZOO

TV_PREFIX = "tv:"
_STRIP_PREFIXES = ("module.", "_orig_mod.")  # DataParallel / DDP, torch.compile
_HF_HINT = "use a timm name, or run once online to fill the Hugging Face cache"
T = TypeVar("T")


@dataclass(frozen=True)
class ModelInfo:
    """What a model expects as input; ``default_dataset`` is set for zoo models only."""

    name: str
    source: str  # 'zoo' | 'timm' | 'torchvision'
    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str
    crop_pct: float
    default_dataset: str | None = None


# ------------------------------------------------------------------------------------------- name resolution


def _tv_names() -> list[str]:
    import torchvision  # lazily: with torch._dynamo it adds seconds to every start
    import torchvision.models.detection
    import torchvision.models.segmentation

    tv = torchvision.models
    return [n for m in (tv, tv.detection, tv.segmentation) for n in tv.list_models(module=m)]


def resolve_name(name: str) -> tuple[str, str]:
    """Return ``(source, canonical name)`` or raise LcpError with close matches."""
    if name.lower() in ZOO:
        return "zoo", name.lower()
    if name.startswith(TV_PREFIX) and name[len(TV_PREFIX) :].lower() in _tv_names():
        return "torchvision", name.lower()
    import timm  # imported lazily: it adds ~2 s to startup and zoo models do not need it

    if name.startswith("hf-hub:"):
        return "timm", name
    if timm.is_model(name):
        canonical = timm.models.get_deprecated_models().get(name, name)
        if "." not in canonical or canonical in timm.list_pretrained():  # no tag, or a known tag
            return "timm", canonical
    candidates = [*ZOO, *timm.list_models(), *(TV_PREFIX + n for n in _tv_names())]
    if "." in name:
        candidates += timm.list_pretrained()
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.6)
    hint = f": did you mean {', '.join(close)}?" if close else " (use a zoo name, tv:NAME or a timm name)"
    raise LcpError(f"unknown model {name!r}{hint}")


def _fetch(what: str, fn: Callable[[], T], hint: str = "pass --checkpoint FILE", host: str | None = None) -> T:
    """Run a step that downloads from ``host``; network errors become one LcpError line. A host whose name does
    not resolve (no network, and no proxy that would resolve it) fails at once, not after the hub's retries."""
    proxied = any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"))
    if host is not None and not proxied:
        try:
            socket.getaddrinfo(host, 443)
        except OSError:
            raise LcpError(f"could not download {what} (offline?); {hint}") from None  # before the hub's retries
    hub_log = logging.getLogger("huggingface_hub")
    level = hub_log.level
    hub_log.setLevel(logging.ERROR)  # its retry warnings would precede the one line
    try:
        return fn()
    except OSError as e:  # URLError, HTTPError, huggingface_hub's LocalEntryNotFoundError are all OSErrors
        raise LcpError(f"could not download {what} (offline?); {hint}") from e
    finally:
        hub_log.setLevel(level)


# ------------------------------------------------------------------------------------------------ create_model


def create_model(
    name: str,
    num_classes: int | None = None,
    pretrained: bool = False,
    checkpoint: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build ``name``: a zoo name, ``tv:NAME`` (torchvision) or anything ``timm.create_model`` accepts.

    ``num_classes=None`` keeps the model's default (10 for the zoo). ``checkpoint`` is loaded strictly and
    replaces ``pretrained``. Zoo models take pretrained weights from :func:`default_checkpoint`; torchvision
    and timm download them, and a new ``num_classes`` re-initializes the classifier.
    """
    source, canonical = resolve_name(name)
    pretrained = pretrained and checkpoint is None
    if num_classes is not None:
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 0:
            raise LcpError(f"num_classes must be a whole number (0: no classifier), not {num_classes!r}")
        kwargs["num_classes"] = num_classes
    try:
        if source == "zoo":
            model = ZOO[canonical](**kwargs)
            if pretrained:
                checkpoint = str(_zoo_pretrained(canonical))
        elif source == "torchvision":
            model = _create_torchvision(canonical, pretrained, **kwargs)
        else:
            import timm

            what = f"pretrained weights for {canonical}" if pretrained else f"the config of {canonical}"
            hint = "pass --checkpoint FILE" if pretrained else _HF_HINT
            host = "huggingface.co" if pretrained or canonical.startswith("hf-hub:") else None
            model = _fetch(what, lambda: timm.create_model(canonical, pretrained=pretrained, **kwargs), hint, host)
    except TypeError as e:  # an argument the model's constructor does not take, or of the wrong type
        raise LcpError(f"cannot create {canonical} with {', '.join(kwargs) or 'no arguments'}: {e}") from None
    if checkpoint is not None:
        load_checkpoint(model, checkpoint, name=canonical)
    model.lcp_name = name if source == "timm" and name.startswith("hf-hub:") else canonical  # for lcp.save
    model.lcp_kwargs = dict(kwargs)  # lcp.save records them, so lcp.load rebuilds the same network
    return model


def _zoo_pretrained(name: str) -> Path:
    dataset = ZOO[name].dataset
    path = default_checkpoint(name, dataset)
    if path is None:
        raise LcpError(
            f"no pretrained {dataset} weights for {name}: put {name}_{dataset}.pt in $LCP_WEIGHTS "
            f"or {cache_dir() / 'weights'}, or pass --checkpoint FILE"
        )
    return path


def _create_torchvision(canonical: str, pretrained: bool, **kwargs: Any) -> nn.Module:
    """torchvision model; pretrained weights are loaded except tensors whose shape changed (a new head)."""
    import torchvision

    arch = canonical[len(TV_PREFIX) :]
    if (
        not pretrained
        and "weights_backbone" in inspect.signature(torchvision.models.get_model_builder(arch)).parameters
    ):
        kwargs.setdefault("weights_backbone", None)  # detectors and segmenters would download their backbone's
    model = torchvision.models.get_model(arch, **kwargs)
    if pretrained:
        weights = torchvision.models.get_model_weights(arch).DEFAULT
        state = _fetch(
            f"pretrained weights for {canonical}",
            lambda: weights.get_state_dict(progress=False),
            host="download.pytorch.org",
        )
        own = model.state_dict()
        model.load_state_dict({k: v for k, v in state.items() if k in own and own[k].shape == v.shape}, strict=False)
    return model


# -------------------------------------------------------------------------------------------------- model_info


def model_info(name: str) -> ModelInfo:
    """Input size, normalization and preprocessing of ``name`` (no weights are downloaded)."""
    source, canonical = resolve_name(name)
    if source == "zoo":
        e = ZOO[canonical]
        return ModelInfo(canonical, source, e.input_size, e.mean, e.std, "bilinear", 1.0, e.dataset)
    if source == "torchvision":
        import torchvision

        weights = torchvision.models.get_model_weights(canonical[len(TV_PREFIX) :]).DEFAULT
        kw = getattr(weights.transforms, "keywords", {})  # a functools.partial of ImageClassification
        crop, resize = kw.get("crop_size", 224), kw.get("resize_size", 256)
        interpolation = kw.get("interpolation", torchvision.transforms.InterpolationMode.BILINEAR).value
        return ModelInfo(canonical, source, (3, crop, crop), IMAGENET_MEAN, IMAGENET_STD, interpolation, crop / resize)
    import timm

    cfg = timm.get_pretrained_cfg(canonical)
    data = cfg.to_dict() if cfg is not None else _timm_data_config(canonical)
    return ModelInfo(
        canonical,
        source,
        tuple(data["input_size"]),
        tuple(data["mean"]),
        tuple(data["std"]),
        data["interpolation"],
        float(data["crop_pct"]),
    )


def _timm_data_config(name: str) -> dict[str, Any]:
    """Data config of a timm model without a registered pretrained cfg (e.g. ``hf-hub:``), built on meta."""
    import timm

    with torch.device("meta"):
        model = _fetch(f"the config of {name}", lambda: timm.create_model(name), _HF_HINT, "huggingface.co")
    return timm.data.resolve_data_config({}, model=model)


# --------------------------------------------------------------------------------------------------- checkpoints


def default_checkpoint(name: str, dataset: str) -> Path | None:
    """``$LCP_WEIGHTS/<name>_<dataset>.pt`` (or ``.safetensors``, as ``lcp prune`` caches a baseline it trained)
    if it exists, else the same file in ``cache_dir()/weights``, else None."""
    stem = f"{name}_{dataset}".replace("/", "_").replace(":", "_")
    roots = [Path(os.environ["LCP_WEIGHTS"]).expanduser()] if os.environ.get("LCP_WEIGHTS") else []
    files = (root / f"{stem}{ext}" for root in [*roots, cache_dir() / "weights"] for ext in (".pt", ".safetensors"))
    for path in files:
        if path.is_file():
            return path
    return None


def load_checkpoint(model: nn.Module, path: str | os.PathLike[str], name: str | None = None) -> nn.Module:
    """Load a state dict from ``path`` into ``model`` strictly; ``name`` is used in error messages.

    Accepts a raw state dict or a dict holding one under ``state_dict`` or ``model``, ``.pt``/``.pth`` or
    ``.safetensors``; strips ``module.`` prefixes. Arbitrary pickled objects are refused (``weights_only``).
    """
    state = read_state_dict(Path(path))
    state = {strip_prefix(k): v for k, v in state.items()}
    check_weights(state, model, f"checkpoint {path}")
    try:  # with the model's own module versions, which a safetensors file does not keep (MNASNet checks them)
        model.load_state_dict(with_metadata_of(model, state), strict=True)
    except (RuntimeError, ValueError) as e:  # ValueError: a module's own check of the state
        raise LcpError(_mismatch_message(model, state, name or type(model).__name__, e)) from None
    return model


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise LcpError(f"checkpoint {path} does not exist")
    if not path.is_file():
        raise LcpError(f"checkpoint {path} is not a file")
    if not os.access(path, os.R_OK):
        raise LcpError(f"cannot read checkpoint {path}: permission denied")
    if path.suffix == ".safetensors":
        import safetensors.torch

        try:
            return safetensors.torch.load_file(path, device="cpu")
        except Exception:
            raise LcpError(f"{path} is not a readable safetensors file (truncated or corrupt?)") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4" on plain pickles
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises RuntimeError, EOFError, KeyError, UnpicklingError... on bad files
        refused = isinstance(e, pickle.UnpicklingError) and re.search(r"GLOBAL (\S+)", str(e), re.IGNORECASE)
        if refused:
            raise LcpError(
                f"{path} needs to unpickle arbitrary Python objects ({refused.group(1)}), which is refused "
                "for safety; if you trust it, re-save it as a state dict: torch.save(model.state_dict(), FILE)"
            ) from None
        raise LcpError(f"{path} is not a readable PyTorch checkpoint (truncated or corrupt?)") from None
    if isinstance(obj, Mapping):
        obj = obj.get("state_dict", obj.get("model", obj))
    if not isinstance(obj, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise LcpError(f"{path} holds no state dict (want tensors by name, or a dict with 'state_dict' or 'model')")
    return dict(obj)


def check_weights(state: Mapping[str, torch.Tensor], model: nn.Module, where: str) -> None:
    """Refuse weights of the wrong kind for ``model`` (integer or boolean tensors for floating-point parameters)
    and non-finite values, before they are loaded (``load_state_dict`` would convert them silently); ``where``
    names the file in the one-line ``LcpError``."""
    own = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    for key, tensor in state.items():
        mine = own.get(key)
        if mine is None:
            continue  # load_state_dict names unexpected keys itself
        if mine.is_floating_point() and not tensor.is_floating_point():
            raise LcpError(f"{where} holds {key} as {tensor.dtype}, not floating point: it is not this model's weights")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise LcpError(f"{where} holds NaN or infinite values in {key}: the weights are damaged")


def strip_prefix(key: str) -> str:
    for prefix in _STRIP_PREFIXES:
        if key.startswith(prefix):
            key = key[len(prefix) :]
    return key


def _mismatch_message(model: nn.Module, state: Mapping[str, torch.Tensor], name: str, error: Exception) -> str:
    """One line naming the first missing/unexpected keys and the first shape mismatch."""
    own = model.state_dict()
    parts = []
    missing, unexpected = [k for k in own if k not in state], [k for k in state if k not in own]
    for label, keys in (("missing", missing), ("unexpected", unexpected)):
        if keys:
            more = ", ..." if len(keys) > 3 else ""
            parts.append(f"{len(keys)} {label} key{'s' * (len(keys) > 1)} ({', '.join(keys[:3])}{more})")
    shapes = [k for k in own if k in state and own[k].shape != state[k].shape]
    if shapes:
        k = shapes[0]
        parts.append(f"first shape mismatch {k} {list(state[k].shape)} vs {list(own[k].shape)}")
    if not parts:  # e.g. a custom _load_from_state_dict complaint: its last line holds the detail
        parts.append(str(error).strip().splitlines()[-1].strip())
    return f"checkpoint does not fit {name}: {', '.join(parts)}"
