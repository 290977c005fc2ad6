"""Helpers shared by the test modules (fixtures live in ``conftest.py``); test modules import this, never each other.

* Data and weights: ``make_image_folder``, ``save_state_dict``, ``evil_pickle`` (files that run code if unpickled).
* The engine's contract: ``prune_and_check`` (every pruned model must pass it) and ``assert_refusal``.
* The search: ``tiny_graph``, ``random_bundle``, ``Recorder`` (a cheap deterministic fitness), ``tiny_densenet``.
* The CLI: ``lcp_cli`` (in-process), ``tiny_args``, report readers, folder snapshots, ``assert_one_line_error``.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import importlib.util
import io
import os
import pickle
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from torch import nn

REPO = Path(__file__).resolve().parents[1]

# ------------------------------------------------------------------------------------------------ image folders

TINY_CLASSES = 3
TINY_TRAIN_PER_CLASS = 24
TINY_TEST_PER_CLASS = 9
_COLOURS = ((210, 50, 40), (40, 190, 60), (50, 60, 210))  # class -> dominant colour


def colour_image(cls: int, rng: np.random.Generator) -> Image.Image:
    """The tiny folder's 32x32 image: the class colour, noise and a bright square somewhere (so it is not flat)."""
    base = np.array(_COLOURS[cls], dtype=np.float64) * rng.uniform(0.7, 1.1)
    arr = base[None, None, :] + rng.normal(0.0, 25.0, (32, 32, 3))
    y0, x0 = rng.integers(0, 24, 2)
    arr[y0 : y0 + 8, x0 : x0 + 8] += 40
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def channel_image(cls: int, rng: np.random.Generator, size: tuple[int, int] = (8, 8)) -> Image.Image:
    """A noisy image whose dominant colour channel is its class (``cls`` < 3)."""
    arr = rng.integers(0, 90, (size[1], size[0], 3), dtype=np.uint8)
    arr[..., cls] += 150
    return Image.fromarray(arr)


def make_image_folder(
    root: Path,
    classes: int = TINY_CLASSES,
    train_per_class: int = TINY_TRAIN_PER_CLASS,
    test_per_class: int = TINY_TEST_PER_CLASS,
    seed: int = 0,
    *,
    image: Callable[[int, np.random.Generator], Image.Image] = colour_image,
    first_ext: str = "jpg",
    jpeg_quality: int | None = 95,
) -> Path:
    """An ImageFolder tree ``root/{train,test}/class<c>/NNN.{png,jpg}``: ``image(c, rng)`` per file, JPEG and PNG
    alternating from ``first_ext`` (JPEG at ``jpeg_quality``, PIL's default if None)."""
    rng = np.random.default_rng(seed)
    exts = ("jpg", "png") if first_ext == "jpg" else ("png", "jpg")
    for split, n in (("train", train_per_class), ("test", test_per_class)):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                ext = exts[i % 2]
                quality = {"quality": jpeg_quality} if ext == "jpg" and jpeg_quality else {}
                image(c, rng).save(folder / f"{i:03d}.{ext}", **quality)
    return root


def save_state_dict(name: str, num_classes: int, path: Path, seed: int = 0) -> Path:
    """``torch.save`` the state dict of a seeded ``lcp.create_model(name, num_classes)`` to ``path``."""
    import lcp

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = lcp.create_model(name, num_classes=num_classes)
    torch.save(model.state_dict(), path)
    return path


# ------------------------------------------------------------------------------------------------ hostile files


class Evil:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def evil_pickle(path: Path, marker: Path, kind: str = "plain", payload: Callable[[Evil], object] | None = None) -> Path:
    """A file at ``path`` that would create ``marker`` when unpickled; ``payload(evil)`` wraps the object.

    ``kind``: ``zip`` (torch.save), ``legacy`` (torch.save, old format), ``plain-p2`` (pickle protocol 2, what
    torch's weights-only unpickler parses and refuses), ``plain`` (the default protocol)."""
    evil = Evil(marker)
    obj = payload(evil) if payload is not None else evil
    if kind == "zip":
        torch.save(obj, path)
    elif kind == "legacy":
        torch.save(obj, path, _use_new_zipfile_serialization=False)
    elif kind == "plain-p2":
        path.write_bytes(pickle.dumps(obj, protocol=2))
    elif kind == "plain":
        path.write_bytes(pickle.dumps(obj))
    else:
        raise ValueError(kind)
    return path


# ------------------------------------------------------------------------------------------ the engine's contract

# What lcp may say when it refuses a model or a budget; anything else (a failed verification above all) is a bug.
REFUSALS = ("nothing in this model can be pruned safely", "cannot be met")


def assert_refusal(err: Exception) -> None:
    """``err`` is a refusal (frozen model, nothing prunable, unreachable budget), not a failure."""
    from lcp.errors import UnreachableBudget

    msg = str(err)
    assert "does not match the masked original" not in msg, msg
    assert isinstance(err, UnreachableBudget) or any(r in msg for r in REFUSALS), msg


def out_shape(model: nn.Module, x: torch.Tensor) -> torch.Size:
    was = model.training
    model.eval()
    with torch.no_grad():
        out = model(x)
    model.train(was)
    return out.shape


def prune_and_check(model: nn.Module, x: torch.Tensor, budget: float = 0.5, **kw):
    """``lcp.prune`` plus the checks every pruned model must pass; returns the ``PruneResult``.

    The pruned model runs forward and backward, keeps its output shape, meets the budget, its re-counted
    MACs/params equal the plan's, it matches the masked original (``verification.ok``) and the original model
    is left untouched."""
    import lcp

    budget_type = kw.get("budget_type", "macs")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    shape = out_shape(model, x)
    res = lcp.prune(model, x, budget=budget, **kw)
    p = res.plan
    assert res.verification is not None and res.verification.ok, res.verification
    assert p.macs_base == lcp.count_macs(model, x)
    assert p.params_base == lcp.count_params(model)
    if budget_type == "macs":
        assert p.macs <= budget * p.macs_base
    else:
        assert p.params <= budget * p.params_base
    assert lcp.count_macs(res.model, x) == p.macs
    assert lcp.count_params(res.model) == p.params
    # the original model is not modified
    after = model.state_dict()
    assert state.keys() == after.keys()
    assert all(torch.equal(state[k], after[k]) for k in state)
    # the pruned model trains: forward + backward in train mode (batch 2 so BatchNorm has >1 value per channel),
    # on a copy so that the BatchNorm statistics of ``res.model`` stay as built
    assert out_shape(res.model, x) == shape
    pruned = copy.deepcopy(res.model).train()
    xb = torch.randn(2, *x.shape[1:])
    out = pruned(xb)
    assert out.shape[1:] == shape[1:]
    out.square().mean().backward()
    for name, prm in pruned.named_parameters():
        assert prm.grad is not None, f"no gradient for {name}"
        assert torch.isfinite(prm.grad).all(), name
    return res


# ---------------------------------------------------------------------------------------------------- the search

SEARCH_SIZE = (3, 16, 16)


def tiny_graph(seed: int = 0):
    """ResNet-8 (three option-A blocks) on 16x16 inputs: 6 channel groups. Returns (graph, cost, l2 scores)."""
    from lcp.cut import importance as imp
    from lcp.engine.cost import CostModel
    from lcp.engine.graph import build_graph
    from lcp.models.zoo import CifarResNet

    torch.manual_seed(seed)
    model = CifarResNet(1).eval()
    graph = build_graph(model, torch.zeros(1, *SEARCH_SIZE))
    scores = imp.unit_scores(graph, imp.filter_scores(graph, "l2"), "mean")
    return graph, CostModel(graph), scores


def random_bundle(labeled: bool = True, seed: int = 0):
    """A DataBundle of random 16x16 images: 128 train, 64 held out, 32 test; 10 classes (labels -1 if unlabeled)."""
    from lcp.training.data import DataBundle

    g = torch.Generator().manual_seed(seed)

    def part(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randint(0, 256, (n, *SEARCH_SIZE), generator=g, dtype=torch.uint8)
        y = torch.randint(0, 10, (n,), generator=g) if labeled else torch.full((n,), -1, dtype=torch.int64)
        return x, y

    (tx, ty), (hx, hy), (sx, sy) = part(128), part(64), part(32)
    return DataBundle(tx, ty, hx, hy, sx, sy, classes=[str(i) for i in range(10)], input_size=SEARCH_SIZE)


class Recorder:
    """A cheap deterministic fitness over the real plan: the removed units' weighted score, recording calls."""

    def __init__(self, graph, cost, scores: np.ndarray, fail_every: int = 0):
        self.graph, self.cost, self.scores = graph, cost, scores
        self.weights = np.random.default_rng(1).uniform(0.5, 1.5, len(graph.units)) * np.nan_to_num(scores)
        self.calls: list = []
        self.fail_every = fail_every

    def __call__(self, tf) -> float:
        from lcp.cut.ranking import plan

        self.calls.append(tf)
        if self.fail_every and len(self.calls) % self.fail_every == 0:
            raise RuntimeError("synthetic failure")
        p = plan(self.graph, self.cost, self.scores, budget=0.5, method="lcp", transforms=tf)
        return float(self.weights[p.removed].sum())


def tiny_densenet(seed: int = 0) -> nn.Module:
    """DenseNet with 3 layers per block, growth 4, 6-channel stem; random BN statistics so nothing is trivial."""
    from lcp.models.zoo import CifarDenseNet

    torch.manual_seed(seed)
    m = CifarDenseNet(13, 4, 10, stem_channels=6)
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 1.5)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.2, 0.2)
    return m.eval()


# -------------------------------------------------------------------------------------------------------- the CLI

OUTPUT_FILES = (
    "model.safetensors",
    "channels.json",
    "transforms.json",
    "report.csv",
    "layers.csv",
    "widths.png",
    "run.json",
    "state.json",
)


class Result(NamedTuple):
    code: int
    out: str
    err: str


def lcp_cli(*argv: object) -> Result:
    """``lcp ARGV`` in-process: exit code (argparse's SystemExit included), stdout and stderr."""
    from lcp.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as e:  # argparse errors exit from parse_args
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return Result(code, out.getvalue(), err.getvalue())


def tiny_args(
    data: Path, ckpt: Path, out: Path, *extra: object, finetune: int = 0, progress: bool = False
) -> list[str]:
    """``prune`` options for the tiny folder (global method unless ``extra`` says otherwise; budget 0.5 unless
    ``extra`` has ``--budgets``, which lcp refuses beside ``--budget``)."""
    budget = [] if "--budgets" in [str(e) for e in extra] else ["--budget", "0.5"]
    return [
        "prune",
        "--model",
        "resnet20",
        "--data",
        str(data),
        "--checkpoint",
        str(ckpt),
        *budget,
        "--method",
        "global",
        "--finetune-epochs",
        str(finetune),
        "--holdout",
        "9",
        "--batch-size",
        "16",
        "--recal-batches",
        "2",
        "--out",
        str(out),
        *([] if progress else ["--no-progress"]),
        *[str(e) for e in extra],
    ]


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def read_report(out: Path) -> dict[str, str]:
    rows = read_csv(out / "report.csv")
    assert len(rows) == 1, rows
    return rows[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_unchanged(folder: Path, before: dict[str, bytes]) -> None:
    """No file of ``before`` changed or removed, and no new file left behind (the folder's lock excepted)."""
    after = snapshot(folder)
    changed = [k for k, v in before.items() if after.get(k) != v]
    assert not changed, f"files changed or removed in {folder}: {changed}"
    added = sorted(set(after) - set(before) - {".lcp.lock"})
    assert not added, f"files left behind in {folder}: {added}"


def assert_one_line_error(res: Result, *phrases: str) -> str:
    """Exit 2, no traceback, one stderr line starting with ``lcp`` that holds every phrase (case-insensitive).

    At least one phrase: exit 2 alone is what any ``LcpError`` gives. Returns the line."""
    assert phrases, "name what the error must say"
    assert res.code == 2, (res.code, res.err)
    assert "Traceback" not in res.err and "Traceback" not in res.out, res.err
    lines = res.err.strip().splitlines()
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}:\n{res.err}"
    assert lines[0].startswith("lcp"), lines[0]
    for phrase in phrases:
        assert phrase.lower() in lines[0].lower(), f"{phrase!r} not in {lines[0]!r}"
    return lines[0]


def subprocess_env() -> dict[str, str]:
    """The environment of a child ``lcp`` process: one OpenMP thread, no PYTHONWARNINGS (an extra stderr line)."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.pop("PYTHONWARNINGS", None)
    return env


#: timm CNNs of many families, built with random weights (engine and timm-integration tests)
TIMM_MODELS = [
    "resnet18",
    "resnet50",
    "mobilenetv2_100",
    "mobilenetv3_large_100",
    "efficientnet_b0",
    "regnetx_002",
    "regnety_004",
    "densenet121",
    "ghostnet_100",
    "convnext_atto",
    "repvgg_a0",
    "mixnet_s",
    "dla34",
    "cspresnet50",
    "res2net50_14w_8s",
    "rexnet_100",
    "hrnet_w18_small",
    "resnext26ts",
    "dpn48b",
    "efficientnetv2_rw_t",
]


def load_script(path: Path, name: str):
    """Import the script at ``path`` (e.g. one of benchmarks/) as module ``name``, registered in ``sys.modules``."""
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def damage_search_state(path: Path, *, as_list: bool = False, tensor: str = "", key: str = "") -> None:
    """Damage a saved search state (``lcp.io.save_tensors`` with a JSON ``state``) for a resume test: replace the
    state by a list, or drop one ``tensor``, or drop the state's ``key``."""
    import json

    from lcp.io import load_tensor_metadata, load_tensors, save_tensors

    tensors, state = load_tensors(path), json.loads(load_tensor_metadata(path)["state"])
    if as_list:
        state = []
    elif tensor:
        tensors = {k: v for k, v in tensors.items() if k != tensor}
    else:
        state.pop(key)
    save_tensors(tensors, path, metadata={"state": json.dumps(state)})
