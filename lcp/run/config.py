"""The options of ``lcp prune`` / ``lcp search`` (``PruneConfig``) and ``lcp train`` (``TrainConfig``).

Each group of options is declared once, in the layer that uses it (``lcp.options.option``): the cut's in
``lcp.cut.options``, the recovery's in ``lcp.training.options``, the search's in ``lcp.methods.legr``, the
agents' in ``lcp.methods.options``, the job's here. ``PruneConfig`` is all of them; the command line, recipes,
the API, the run signature and the ``--structure-from`` checks read the declarations.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from lcp.cut.options import CutOptions
from lcp.errors import LcpError
from lcp.methods import describe_methods, get_method, method_names
from lcp.methods.legr import SearchOptions
from lcp.methods.options import AgentOptions
from lcp.options import at_least, field_names, from_mapping, option, signature
from lcp.training.options import RecoveryOptions, refit_images

_DEVICE = re.compile(r"^(cpu|mps|cuda(:\d+)?)$")


def device_name(value: str) -> None:
    if not _DEVICE.match(value):
        raise ValueError(f"must be cpu, cuda, cuda:N or mps, got {value!r}")


def require_device(name: str) -> None:
    """Refuse (one line) a device this machine does not have, before any work."""
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise LcpError(f"--device {name} is not a device: use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise LcpError(f"--device {name}: no CUDA device is available on this machine; use --device cpu")
        if dev.index is not None and dev.index >= count:
            raise LcpError(f"--device {name}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    elif dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise LcpError(f"--device {name}: MPS (Apple GPU) is not available on this machine; use --device cpu")


MAX_SEED = 2**63 - 1  # what torch.manual_seed and numpy's default_rng both take


def _seed_range(value: int) -> None:
    if not 0 <= value <= MAX_SEED:
        raise ValueError(f"must be between 0 and 2**63-1, got {value}")


def _positive_size(values: list[int]) -> None:
    if len(values) != 3 or any(v < 1 for v in values):
        raise ValueError(f"must be three positive numbers C H W, got {values}")


@dataclass
class JobOptions:
    """What every command that loads a model and data shares."""

    model: str = option("resnet56", "zoo name (resnet56, mobilenetv2, ...), timm name or tv:NAME")
    data: str | None = option(
        None, "cifar10 or an ImageFolder root with train/ and test/ or val/ (default: the model's data set)"
    )
    input_size: list[int] | None = option(
        None,
        "input size to prune and train at (default: the model's, from timm's pretrained_cfg)",
        check=_positive_size,
        metavar=("C", "H", "W"),
        signature=False,
    )
    holdout: int = option(
        5000, "training images held out for selection and search (never trained on)", check=at_least(0), signature=False
    )
    seed: int = option(0, "random seed (0 to 2**63-1)", check=_seed_range)
    threads: int | None = option(
        None, "torch CPU threads (also for latency timing where a command times)", check=at_least(1), signature=False
    )
    device: str = option(
        "cpu",
        "device for training, evaluation and, in lcp prune and lcp search, latency measurements and every search "
        "(cpu, cuda, cuda:N, mps)",
        check=device_name,
        signature=False,
    )
    out: str = option("runs/prune", "output folder", signature=False)
    resume: bool = option(False, "continue an interrupted run in --out", signature=False)
    overwrite: bool = option(False, "replace another run in --out", signature=False)
    progress: bool = option(True, "no progress bars", flag="--no-progress", signature=False)


@dataclass
class PruneConfig(SearchOptions, AgentOptions, RecoveryOptions, CutOptions, JobOptions):
    """Options of one prune run (see ``lcp prune --help``)."""

    method: str = option("lcp", lambda: f"what chooses the units to remove: {describe_methods()}", choices=method_names)
    checkpoint: str | None = option(
        None, "state dict to start from (default: $LCP_WEIGHTS/<model>_<data>.pt, then the user cache, else train one)"
    )
    pretrained: bool = option(
        False,
        "start from the hub's pretrained weights (timm, tv:; online) when no --checkpoint is given",
        signature=False,
    )
    baseline_epochs: int = option(
        30, "epochs when a baseline must be trained first", check=at_least(1), signature=False
    )
    structure_from: str | None = option(
        None,
        "apply the pruned structure of an earlier lcp prune run (its --out "
        "folder: removed channels or connections) to this model, data and "
        "weights, any number of classes; no search, --budget not needed; then "
        "recalibration, fine-tuning and outputs as usual",
        metavar="DIR",
        signature=False,
    )

    def signature(self) -> dict[str, Any]:
        """What identifies the run's result (an output folder holds one signature)."""
        sig = signature(self)
        sig.update(
            {
                k: getattr(self, k)
                for k in ("pretrained", "input_size", "search_stop", "ignore", "max_removal", "depth", "time_aware")
                if getattr(self, k)
            }
        )
        sig["reconstruct_images"] = refit_images(self)  # what the refit used: auto and its number are one run
        defaults = type(self).__dataclass_fields__
        for k in ("holdout", "recal_batches", "baseline_epochs"):  # they change the result; runs at the
            if getattr(self, k) != defaults[k].default:  # default keep the signature they had before
                sig[k] = getattr(self, k)
        if self.budget_type == "latency" or self.round_to == "auto":  # timed: where and how is part of the cut
            sig.update(device=self.device, latency_batch=self.latency_batch, threads=self.threads)
        if self.structure_from:  # the folder and its channels.json as they are now
            spec = Path(self.structure_from).expanduser().resolve() / "channels.json"
            sig.update(structure_from=str(spec.parent), structure=file_digest(str(spec)) if spec.is_file() else None)
        sig.update({k: getattr(self, k) for k in get_method(self.method).signature_options})
        return sig

    @classmethod
    def fields(cls) -> list[str]:
        return field_names(cls)

    @classmethod
    def from_mapping(cls, values: dict[Any, Any], source: str) -> PruneConfig:
        """A config from a recipe or keywords, every value type- and range-checked (one-line ``LcpError``)."""
        return cls(**from_mapping(cls, values, source))


@dataclass
class TrainConfig(JobOptions):
    """Options of ``lcp train``: a baseline trained from scratch (see ``lcp train --help``)."""

    model: str = option("densenet40", "zoo name, timm name or tv:NAME")
    out: str = option("runs/train", "output folder", signature=False)
    holdout: int = option(5000, "training images kept out (the searches' fitness split)", check=at_least(0))
    input_size: list[int] | None = option(
        None, "input size to train at (default: the model's)", check=_positive_size, metavar=("C", "H", "W")
    )
    epochs: int = option(30, "training epochs", check=at_least(1))
    lr: float = option(0.1, "peak learning rate", check=at_least(0))
    schedule: str = option(
        "onecycle", "onecycle: 30% warm-up then cosine; cosine: cosine from --lr", choices=("onecycle", "cosine")
    )
    batch_size: int = option(128, "batch size", check=at_least(1))
    weight_decay: float = option(5e-4, "weight decay", check=at_least(0))

    def signature(self) -> dict[str, Any]:
        return signature(self)

    @classmethod
    def fields(cls) -> list[str]:
        return field_names(cls)

    @classmethod
    def from_mapping(cls, values: dict[Any, Any], source: str) -> TrainConfig:
        return cls(**from_mapping(cls, values, source))


def read_yaml_mapping(path: str | Path) -> dict[Any, Any]:
    """A recipe file's mapping, unchecked (YAML): a one-line ``LcpError`` when it cannot be read, is not YAML, is
    nested too deeply or is not a mapping."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise LcpError(f"cannot read recipe {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise LcpError(f"recipe {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    except RecursionError:  # the YAML parser recurses once per level of nesting
        raise LcpError(f"recipe {path} is nested too deeply to be a recipe; fix it") from None
    except ValueError as e:  # e.g. an integer too large for Python's str->int limit
        raise LcpError(f"recipe {path} cannot be read: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise LcpError(f"recipe {path} must be a mapping of options")
    return data


def read_recipe(path: str, cls: type) -> dict[str, Any]:
    """A recipe's options (YAML; keys as the long options, ``-`` or ``_``), each checked against its declaration
    in ``cls`` (type, choices, range): a one-line ``LcpError`` on any problem."""
    data = read_yaml_mapping(path)
    data = {k.replace("-", "_") if isinstance(k, str) else k: v for k, v in data.items()}
    if "no_progress" in data:  # the recipe spelling of --no-progress
        value = data.pop("no_progress")
        if not isinstance(value, bool):
            raise LcpError(f"recipe {path}: no_progress must be true or false, got {value!r:.60}")
        if "progress" in data:
            raise LcpError(f"recipe {path} sets both progress and no_progress: keep one")
        data["progress"] = not value
    return from_mapping(cls, data, f"recipe {path}")


def file_digest(path: str) -> str:
    """The first 16 hex digits of the SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]
