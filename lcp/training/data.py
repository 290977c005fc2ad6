"""Image data for lcp: decode once, cache as uint8 ``.npy`` files, serve normalized batches from memory.

``load_data("cifar10")`` or ``load_data("/path/to/imagefolder")`` returns a :class:`DataBundle` holding
uint8 tensors for the train part, a fixed held-out split carved from train (for pruning fitness), and the
test split. ``bundle.loader(...)`` yields ``(float normalized images, int64 labels)`` batches; augmentation
(4-pixel zero-pad random crop + horizontal flip) runs on uint8 batches, seeded by (seed, epoch).

Decoded arrays are cached under ``<lcp cache>/data/<key>/`` (``$LCP_CACHE``, else ``$XDG_CACHE_HOME/lcp``,
else ``~/.cache/lcp``) with ``np.save``/``np.load(allow_pickle=False)``; the key hashes the folder's absolute
path, its file list, file count, total size and newest mtime, the input size and the transform (one whose
``repr`` does not name it, a ``Lambda`` or a function, is decoded every time and never cached).
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from lcp.errors import LcpError
from lcp.io import cache_dir
from lcp.training.images import ImageTransform, fit_image, load_folder, strip_tensor_steps

__all__ = ["DataBundle", "Batches", "load_data", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
_PAD = 4  # pixels of zero padding before the random crop
_SPLITS = ("train", "holdout", "test")
_CIFAR_MISSING = (
    "CIFAR-10 not found: set LCP_DATA to a folder holding cifar10/ (ImageFolder train/ and test/) "
    "or go online to download it"
)


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator determined by (seed, epoch) only."""
    digest = hashlib.sha256(f"lcp:{seed}:{epoch}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def augment_batch(x: Tensor, gen: torch.Generator, pad: int = _PAD) -> Tensor:
    """Zero-pad by ``pad``, random crop back to HxW, random horizontal flip, per image of a uint8 batch.

    Batches are assembled with single-threaded numpy: torch's parallel kernels stall on a busy 2-core
    machine (measured: one augmented CIFAR-10 epoch of batches 6.6 s with torch ops vs 0.4 s).
    """
    b, c, h, w = x.shape
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=gen).tolist()
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=gen).tolist()
    flip = (torch.rand(b, generator=gen) < 0.5).tolist()
    padded = np.zeros((b, c, h + 2 * pad, w + 2 * pad), dtype=np.uint8)
    padded[:, :, pad : pad + h, pad : pad + w] = x.numpy()
    out = np.empty((b, c, h, w), dtype=np.uint8)
    for i in range(b):
        crop = padded[i, :, oy[i] : oy[i] + h, ox[i] : ox[i] + w]
        out[i] = crop[:, :, ::-1] if flip[i] else crop
    return torch.from_numpy(out)


class Batches:
    """Re-iterable batches of one split: ``(float32 [B,C,H,W] normalized, int64 [B])``.

    The order (``shuffle``) and augmentation depend only on ``seed`` and ``epoch``; call
    :meth:`set_epoch` (or pass ``epoch``) to get epoch ``e``'s batches reproducibly.
    """

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        batch_size: int,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        shuffle: bool = False,
        augment: bool = False,
        seed: int = 0,
        epoch: int = 0,
        drop_last: bool = False,
    ) -> None:
        if batch_size < 1:
            raise LcpError(f"batch size must be at least 1 (got {batch_size})")
        self.x, self.y = x, y
        self.batch_size, self.shuffle, self.augment = batch_size, shuffle, augment
        self.seed, self.epoch, self.drop_last = seed, epoch, drop_last
        c = x.shape[1]
        std_a = np.asarray(std, dtype=np.float32).reshape(1, c, 1, 1)
        self._scale = 1.0 / (255.0 * std_a)
        self._shift = np.asarray(mean, dtype=np.float32).reshape(1, c, 1, 1) / std_a

    def set_epoch(self, epoch: int) -> Batches:
        """Select the epoch whose order and augmentation the next iteration produces."""
        self.epoch = epoch
        return self

    def __len__(self) -> int:
        n = len(self.x)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        n = len(self.x)
        gen = _epoch_generator(self.seed, self.epoch)
        order = torch.randperm(n, generator=gen) if self.shuffle else None
        for i in range(len(self)):
            sl = slice(i * self.batch_size, min(n, (i + 1) * self.batch_size))
            if order is None:
                xb, yb = self.x[sl], self.y[sl]
            else:  # numpy take: single-threaded and fast (see augment_batch)
                idx = order[sl].numpy()
                xb, yb = torch.from_numpy(self.x.numpy()[idx]), torch.from_numpy(self.y.numpy()[idx])
            if self.augment:
                xb = augment_batch(xb, gen)
            xf = xb.numpy().astype(np.float32)  # numpy, single-threaded: see augment_batch
            np.multiply(xf, self._scale, out=xf)
            np.subtract(xf, self._shift, out=xf)
            yield torch.from_numpy(xf), yb


@dataclass(repr=False)
class DataBundle:
    """uint8 image tensors ``[N,C,H,W]`` and int64 labels (-1 = unlabeled) for train, holdout and test.

    ``train`` and ``holdout`` are disjoint parts of the source's train split; ``train_idx`` and
    ``holdout_idx`` are their positions in that split (sorted file order).
    """

    train_x: Tensor
    train_y: Tensor
    holdout_x: Tensor
    holdout_y: Tensor
    test_x: Tensor
    test_y: Tensor
    classes: list[str]
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    input_size: tuple[int, int, int] = (3, 32, 32)
    source: str = ""
    train_idx: Tensor | None = None
    holdout_idx: Tensor | None = None
    cache_dir: Path | None = None

    @property
    def num_classes(self) -> int:
        """Number of classes (0 for an unlabeled folder)."""
        return len(self.classes)

    def __repr__(self) -> str:
        return (
            f"DataBundle(source={self.source!r}, train={len(self.train_x)}, holdout={len(self.holdout_x)}, "
            f"test={len(self.test_x)}, classes={self.num_classes}, input_size={self.input_size})"
        )

    def split(self, split: str) -> tuple[Tensor, Tensor]:
        """The ``(uint8 images, labels)`` of ``"train"``, ``"holdout"`` or ``"test"``."""
        if split not in _SPLITS:
            raise LcpError(f"unknown data split {split!r}: use one of {', '.join(_SPLITS)}")
        x, y = getattr(self, f"{split}_x"), getattr(self, f"{split}_y")
        if len(x) == 0:
            hint = "pass a holdout size above 0" if split == "holdout" else "use a folder with a test/ or val/ split"
            raise LcpError(f"the {split} split of {self.source or 'this data'} is empty: {hint}")
        return x, y

    def loader(
        self,
        split: str,
        batch_size: int,
        *,
        shuffle: bool = False,
        augment: bool = False,
        seed: int = 0,
        epoch: int = 0,
        limit: int | None = None,
        drop_last: bool = False,
    ) -> Batches:
        """Batches of ``split``, normalized on the fly.

        ``limit`` keeps a fixed random subset of that many images (the same for every call and seed).
        ``shuffle``/``augment`` are deterministic given ``seed`` and ``epoch`` (see :meth:`Batches.set_epoch`).
        """
        x, y = self.split(split)
        if limit is not None:
            if limit < 1:
                raise LcpError(f"limit must be at least 1 (got {limit})")
            if limit < len(x):
                keep = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:limit].sort().values
                x, y = torch.from_numpy(x.numpy()[keep.numpy()]), torch.from_numpy(y.numpy()[keep.numpy()])
        return Batches(
            x,
            y,
            batch_size,
            mean=self.mean,
            std=self.std,
            shuffle=shuffle,
            augment=augment,
            seed=seed,
            epoch=epoch,
            drop_last=drop_last,
        )


def _load_torchvision_cifar10(
    size: tuple[int, int, int], transform: ImageTransform | None
) -> tuple[dict[str, np.ndarray], list[str]]:
    """CIFAR-10 through torchvision's checksummed download into the lcp cache (online users).

    torchvision unpickles the official md5-checked batches itself; lcp writes no pickle.
    """
    try:
        from torchvision.datasets import CIFAR10

        where = cache_dir() / "torchvision"
        sets = [CIFAR10(str(where), train=t, download=True) for t in (True, False)]
    except Exception:
        raise LcpError(_CIFAR_MISSING) from None
    from PIL import Image

    arrays: dict[str, np.ndarray] = {}
    for name, ds in zip(("train", "test"), sets):
        data = ds.data  # [N,32,32,3] uint8
        if tuple(size) == (3, 32, 32) and transform is None:
            arrays[f"{name}_x"] = np.ascontiguousarray(data.transpose(0, 3, 1, 2))
        else:
            arrays[f"{name}_x"] = np.stack([fit_image(Image.fromarray(a), size, transform) for a in data])
        arrays[f"{name}_y"] = np.asarray(ds.targets, dtype=np.int64)
    return arrays, list(sets[0].classes)


def _holdout_split(labels: np.ndarray, holdout: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Class-stratified holdout (largest-remainder quotas), fixed by ``seed``: sorted (train_idx, holdout_idx)."""
    n = len(labels)
    if holdout < 0 or holdout >= n:
        raise LcpError(
            f"holdout must be between 0 and {n - 1} for {n} training images (got {holdout}): pass a smaller holdout"
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
    grouped = perm[np.argsort(labels[perm], kind="stable")]  # by class, random order within each class
    _, starts, counts = np.unique(labels[grouped], return_index=True, return_counts=True)
    quota = counts * holdout / n
    take = np.floor(quota).astype(np.int64)
    short = holdout - int(take.sum())
    take[np.argsort(-(quota - take), kind="stable")[:short]] += 1
    hold = np.sort(np.concatenate([grouped[s : s + k] for s, k in zip(starts, take)]))
    keep = np.ones(n, dtype=bool)
    keep[hold] = False
    return np.flatnonzero(keep), hold


def load_data(
    spec: str | os.PathLike[str],
    *,
    input_size: Sequence[int] = (3, 32, 32),
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    holdout: int = 5000,
    seed: int = 0,
    labeled: bool = True,
    transform: ImageTransform | None = None,
    test_only: bool = False,
) -> DataBundle:
    """Load ``"cifar10"`` or an ImageFolder root (``train/`` + ``test/`` or ``val/``) into memory.

    ``"cifar10"`` reads ``$LCP_DATA/cifar10`` if it exists, else downloads with torchvision into the cache.
    Images whose size differs from ``input_size`` are resized (bilinear, shorter side to fit) and center
    cropped; ``transform`` (a PIL -> PIL callable, e.g. the eval transform of ``timm.data.create_transform``,
    whose ToTensor/Normalize steps are dropped) replaces that step. The holdout (``holdout`` images,
    stratified by class, fixed by ``seed``) is carved from train and disjoint from the rest of train.
    ``labeled=False``: train labels are hidden (-1); a folder without ``train/`` is read as a flat set of
    images (recursively) with no test split. ``test_only``: an ImageFolder root is read for its test split alone
    (``lcp eval``: no train/ needed, nothing of it decoded).
    """
    size = tuple(int(v) for v in input_size)
    if len(size) != 3 or size[0] not in (1, 3) or min(size) < 1:
        raise LcpError(f"input_size must be (channels, height, width) with 1 or 3 channels (got {tuple(input_size)})")
    mean_t, std_t = tuple(float(v) for v in mean), tuple(float(v) for v in std)
    if len(mean_t) != size[0] or len(std_t) != size[0] or min(std_t) <= 0:
        raise LcpError(f"mean and std need {size[0]} values each and std must be positive")
    tf = strip_tensor_steps(transform)
    images_cache: Path | None = None
    if str(spec).lower() == "cifar10":
        local = Path(os.environ["LCP_DATA"]).expanduser() / "cifar10" if os.environ.get("LCP_DATA") else None
        if local is not None and local.is_dir():
            source = str(local.resolve())
            arrays, classes, images_cache = load_folder(local.resolve(), size, tf, flat=False, test_only=test_only)
        else:
            arrays, classes = _load_torchvision_cifar10(size, tf)
            source = str(cache_dir() / "torchvision")
    else:
        root = Path(spec).expanduser().resolve()
        flat = not labeled and not (root / "train").is_dir()
        arrays, classes, images_cache = load_folder(root, size, tf, flat=flat, test_only=test_only and labeled)
        source = str(root)
    x, y = arrays["train_x"], arrays["train_y"]
    if not labeled:
        y = np.full_like(y, -1)
    empty = np.zeros(0, dtype=np.int64)
    # test_only reads no training images (labeled data): there is no holdout to carve out of them
    tr, ho = (empty, empty) if test_only and (holdout == 0 or not len(y)) else _holdout_split(y, holdout, seed)
    return DataBundle(
        train_x=torch.from_numpy(x[tr]),
        train_y=torch.from_numpy(y[tr]),
        holdout_x=torch.from_numpy(x[ho]),
        holdout_y=torch.from_numpy(y[ho]),
        test_x=torch.from_numpy(arrays["test_x"]),
        test_y=torch.from_numpy(arrays["test_y"]),
        classes=classes,
        mean=mean_t,
        std=std_t,
        input_size=size,  # type: ignore[arg-type]
        source=source,
        train_idx=torch.from_numpy(tr),
        holdout_idx=torch.from_numpy(ho),
        cache_dir=images_cache,
    )
