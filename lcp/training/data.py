"""Image data for lcp: decode once, cache as uint8 ``.npy`` files, serve normalized batches from memory.

``load_data("cifar10")`` or ``load_data("/path/to/imagefolder")`` returns a :class:`DataBundle` holding
uint8 tensors for the train part, a fixed held-out split carved from train (for pruning fitness), and the
test split. ``bundle.loader(...)`` yields ``(float normalized images, int64 labels)`` batches; augmentation
(4-pixel zero-pad random crop + horizontal flip) runs on uint8 batches, seeded by (seed, epoch).

Decoded arrays are cached under ``<lcp cache>/data/<key>/`` (``$LCP_CACHE``, else ``$XDG_CACHE_HOME/lcp``,
else ``~/.cache/lcp``) with ``np.save``/``np.load(allow_pickle=False)``; the key hashes the folder's absolute
path, its file list, file count, total size and newest mtime, the input size and any transform.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch import Tensor

from lcp.errors import LcpError

__all__ = ["DataBundle", "Batches", "load_data", "cache_root", "atomic_write", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp", ".gif"})
_CACHE_VERSION = 1
_PAD = 4  # pixels of zero padding before the random crop
_SPLITS = ("train", "holdout", "test")
_CIFAR_MISSING = (
    "CIFAR-10 not found: set LCP_DATA to a folder holding cifar10/ (ImageFolder train/ and test/) "
    "or go online to download it"
)

ImageTransform = Callable[[Any], Any]
Files = list[tuple[str, int, int]]  # (path, size in bytes, mtime_ns)


def cache_root() -> Path:
    """lcp's cache folder: ``$LCP_CACHE``, else ``$XDG_CACHE_HOME/lcp``, else ``~/.cache/lcp``."""
    if os.environ.get("LCP_CACHE"):
        return Path(os.environ["LCP_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "lcp"
    return Path.home() / ".cache" / "lcp"


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator determined by (seed, epoch) only."""
    digest = hashlib.sha256(f"lcp:{seed}:{epoch}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def _augment(x: Tensor, gen: torch.Generator, pad: int = _PAD) -> Tensor:
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
            else:  # numpy take: single-threaded and fast (see _augment)
                idx = order[sl].numpy()
                xb, yb = torch.from_numpy(self.x.numpy()[idx]), torch.from_numpy(self.y.numpy()[idx])
            if self.augment:
                xb = _augment(xb, gen)
            xf = xb.numpy().astype(np.float32)  # numpy, single-threaded: see _augment
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
            x, y, batch_size, mean=self.mean, std=self.std, shuffle=shuffle, augment=augment,
            seed=seed, epoch=epoch, drop_last=drop_last,
        )


# ----------------------------------------------------------------------------------------------- decoding


def _strip_tensor_steps(transform: ImageTransform | None) -> ImageTransform | None:
    """Drop ToTensor/Normalize steps of a Compose (e.g. timm.data.create_transform): lcp caches uint8."""
    steps = getattr(transform, "transforms", None)
    if transform is None or not isinstance(steps, list):
        return transform
    kept = [t for t in steps if type(t).__name__ not in {"ToTensor", "MaybeToTensor", "Normalize", "PILToTensor"}]
    return type(transform)(kept) if len(kept) != len(steps) else transform


def _fit(img: Any, size: tuple[int, int, int], transform: ImageTransform | None) -> np.ndarray:
    """PIL image -> uint8 [C,H,W]: ``transform`` if given, else resize shorter side + center crop."""
    from PIL import Image

    c, h, w = size
    img = img.convert("RGB" if c == 3 else "L")
    if transform is not None:
        img = transform(img)
        if isinstance(img, Tensor):
            img = img.numpy()
            if img.dtype != np.uint8 or img.shape != (c, h, w):
                raise LcpError(f"the transform must return {w}x{h} uint8 images (PIL); drop ToTensor/Normalize")
            return img
    elif img.size != (w, h):
        scale = max(h / img.height, w / img.width)
        nw, nh = max(w, round(img.width * scale)), max(h, round(img.height * scale))
        img = img.resize((nw, nh), Image.BILINEAR)
        left, top = (nw - w) // 2, (nh - h) // 2
        img = img.crop((left, top, left + w, top + h))
    arr = np.asarray(img, dtype=np.uint8)
    if arr.shape[:2] != (h, w):
        raise LcpError(f"the transform made {arr.shape[1]}x{arr.shape[0]} images, expected {w}x{h}: match input_size")
    return arr.reshape(h, w, c).transpose(2, 0, 1)


def _decode_one(path: str, size: tuple[int, int, int], transform: ImageTransform | None) -> np.ndarray:
    """Decode one image file with PIL to uint8 [C,H,W]."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return _fit(img, size, transform)
    except LcpError:
        raise
    except Exception as exc:
        raise LcpError(f"cannot read image {path} ({type(exc).__name__}): remove or replace the file") from None


def _decode_jpegs(paths: Sequence[str], size: tuple[int, int, int]) -> list[np.ndarray | None]:
    """Batch-decode the JPEGs among ``paths`` with torchvision.io (3x faster than PIL, same pixels).

    Returns None where a file is not a JPEG of exactly ``size``, or for all files if torchvision cannot
    (its image decoding is deprecated from 0.29; PIL then does the work).
    """
    out: list[np.ndarray | None] = [None] * len(paths)
    idx = [i for i, p in enumerate(paths) if p.lower().endswith((".jpg", ".jpeg"))]
    if not idx:
        return out
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torchvision.io import ImageReadMode, decode_jpeg

            mode = ImageReadMode.RGB if size[0] == 3 else ImageReadMode.GRAY
            blobs = [torch.frombuffer(bytearray(Path(paths[i]).read_bytes()), dtype=torch.uint8) for i in idx]
            images = decode_jpeg(blobs, mode=mode)
    except Exception:  # one bad file fails the batch: PIL decodes each file or names the bad one
        return out
    for i, t in zip(idx, images):
        if tuple(t.shape) == size:
            out[i] = t.numpy()
    return out


def _decode_all(
    paths: Sequence[str], size: tuple[int, int, int], transform: ImageTransform | None, chunk: int = 2048
) -> np.ndarray:
    """Decode ``paths`` into one uint8 array [N,C,H,W].

    Serial on purpose: on 2 cores a process pool saved < 20% for CIFAR-10 and spawning one costs more.
    """
    out = np.empty((len(paths), *size), dtype=np.uint8)
    use_fast = transform is None
    for start in range(0, len(paths), chunk):
        part = paths[start : start + chunk]
        fast = _decode_jpegs(part, size) if use_fast else [None] * len(part)
        use_fast = use_fast and any(a is not None for a in fast)  # images need resizing: PIL from now on
        for j, (p, arr) in enumerate(zip(part, fast)):
            out[start + j] = arr if arr is not None else _decode_one(p, size, transform)
    return out


# ------------------------------------------------------------------------------------------- folder scans


def _is_image(name: str) -> bool:
    return "." + name.rpartition(".")[2].lower() in IMAGE_EXTENSIONS


def _scan(folder: Path) -> Files:
    """Every image under ``folder`` (recursive, sorted) as ``(path, size, mtime_ns)``."""
    found: Files = []
    stack = [str(folder)]
    while stack:
        with os.scandir(stack.pop()) as it:
            for e in it:
                if e.name.startswith("."):
                    continue
                if e.is_dir():
                    stack.append(e.path)
                elif _is_image(e.name):
                    st = e.stat()
                    found.append((e.path, st.st_size, st.st_mtime_ns))
    found.sort()
    return found


def _subdirs(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def _scan_classes(folder: Path, classes: list[str] | None, root: Path) -> tuple[list[str], Files, list[int]]:
    """ImageFolder scan: class subfolders of ``folder`` -> (classes, files, labels)."""
    names = _subdirs(folder)
    if classes is None:
        if not names:
            hint = " (it holds images but no class subfolders: load it with labeled=False)" if _scan(folder) else ""
            raise LcpError(f"{folder} has no class subfolders{hint}: expected {folder}/<class>/*.jpg")
        classes = names
    else:
        extra = sorted(set(names) - set(classes))
        if extra:
            raise LcpError(
                f"{folder} has classes not in {root}/train: {', '.join(extra[:5])}; add them to train/ or remove them"
            )
    files: Files = []
    labels: list[int] = []
    for i, name in enumerate(classes):
        if not (folder / name).is_dir():
            continue
        got = _scan(folder / name)
        if not got and folder.name == "train":
            raise LcpError(f"{folder / name} has no images: add images or remove the folder")
        files += got
        labels += [i] * len(got)
    if not files:
        raise LcpError(f"no images found in {folder}: expected {folder}/<class>/*.jpg (or .png)")
    return classes, files, labels


# ---------------------------------------------------------------------------------------------- the cache


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write ``path`` via ``write(file)`` into a temporary sibling, fsync, then ``os.replace`` it into place
    (``io.atomic_path``; its temporary names are recognised and cleaned up as leftovers of killed runs)."""
    from lcp.io import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            write(f)


_ARRAYS = ("train_x", "train_y", "test_x", "test_y")


def _cache_read(folder: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
    try:
        meta = json.loads((folder / "meta.json").read_text())
        if meta.get("version") != _CACHE_VERSION:
            return None
        arrays = {k: np.load(folder / f"{k}.npy", allow_pickle=False) for k in _ARRAYS}
    except (OSError, ValueError, KeyError):
        return None
    if len(arrays["train_x"]) != meta["train"] or len(arrays["test_x"]) != meta["test"]:
        return None
    return arrays, meta


def _cache_write(folder: Path, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> bool:
    """Write one cache entry (meta.json last); drop older entries of the same source and settings."""
    for old in folder.parent.glob("*/meta.json") if folder.parent.is_dir() else []:
        try:
            stale = {k: v for k, v in json.loads(old.read_text()).items() if k in ("source", "input_size", "extra")}
        except (OSError, ValueError):
            continue
        if old.parent != folder and stale == {k: meta[k] for k in ("source", "input_size", "extra")}:
            shutil.rmtree(old.parent, ignore_errors=True)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for k in _ARRAYS:
            atomic_write(folder / f"{k}.npy", lambda f, a=arrays[k]: np.save(f, a, allow_pickle=False))
        text = json.dumps(meta, indent=1).encode()
        atomic_write(folder / "meta.json", lambda f: f.write(text))  # written last: marks the entry complete
        return True
    except OSError as exc:
        warnings.warn(f"lcp: could not write the data cache at {folder} ({exc}); set LCP_CACHE to a writable folder")
        return False


def _cache_key(root: Path, scans: Sequence[Files], size: tuple[int, int, int], extra: str) -> str:
    h = hashlib.sha256()
    files = [f for scan in scans for f in scan]
    head = {
        "v": _CACHE_VERSION, "root": str(root), "count": len(files), "bytes": sum(f[1] for f in files),
        "mtime": max((f[2] for f in files), default=0), "size": list(size), "extra": extra,
    }
    h.update(json.dumps(head, sort_keys=True).encode())
    cut = len(str(root)) + 1  # relative paths: renames and moves between classes change the labels
    h.update("\0".join(p[cut:] for p, _, _ in files).encode())
    return h.hexdigest()[:24]


# ------------------------------------------------------------------------------------------------ sources


def _load_folder(
    root: Path, size: tuple[int, int, int], transform: ImageTransform | None, flat: bool
) -> tuple[dict[str, np.ndarray], list[str], Path | None]:
    """Arrays of an ImageFolder tree (``flat``: every image under root, labels -1), via the disk cache."""
    if not root.is_dir():
        raise LcpError(f"data folder {root} does not exist: pass an ImageFolder root with train/ and test/ (or val/)")
    if flat:
        train_files, test_files = _scan(root), []
        if not train_files:
            raise LcpError(f"no images found in {root}: add .jpg or .png files")
        classes: list[str] = []
        train_labels, test_labels = [-1] * len(train_files), []
    else:
        if not (root / "train").is_dir():
            raise LcpError(
                f"{root} has no train/ folder: expected {root}/train/<class>/*.jpg and {root}/test/<class>/*.jpg "
                "(or load a flat folder of images with labeled=False)"
            )
        test_dir = next((root / n for n in ("test", "val") if (root / n).is_dir()), None)
        if test_dir is None:
            raise LcpError(f"{root} has no test/ or val/ folder: add {root}/test/<class>/*.jpg")
        classes, train_files, train_labels = _scan_classes(root / "train", None, root)
        _, test_files, test_labels = _scan_classes(test_dir, classes, root)
    extra = f"flat={flat};transform={transform!r}"
    folder = cache_root() / "data" / _cache_key(root, [train_files, test_files], size, extra)
    hit = _cache_read(folder)
    if hit is not None:
        return hit[0], list(hit[1]["classes"]), folder
    arrays = {
        "train_x": _decode_all([f[0] for f in train_files], size, transform),
        "train_y": np.asarray(train_labels, dtype=np.int64),
        "test_x": _decode_all([f[0] for f in test_files], size, transform),
        "test_y": np.asarray(test_labels, dtype=np.int64),
    }
    meta = {"version": _CACHE_VERSION, "source": str(root), "classes": classes, "extra": extra,
            "input_size": list(size), "train": len(train_files), "test": len(test_files)}
    return arrays, classes, folder if _cache_write(folder, arrays, meta) else None


def _load_torchvision_cifar10(
    size: tuple[int, int, int], transform: ImageTransform | None
) -> tuple[dict[str, np.ndarray], list[str]]:
    """CIFAR-10 through torchvision's checksummed download into the lcp cache (online users).

    torchvision unpickles the official md5-checked batches itself; lcp writes no pickle.
    """
    try:
        from torchvision.datasets import CIFAR10

        where = cache_root() / "torchvision"
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
            arrays[f"{name}_x"] = np.stack([_fit(Image.fromarray(a), size, transform) for a in data])
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
) -> DataBundle:
    """Load ``"cifar10"`` or an ImageFolder root (``train/`` + ``test/`` or ``val/``) into memory.

    ``"cifar10"`` reads ``$LCP_DATA/cifar10`` if it exists, else downloads with torchvision into the cache.
    Images whose size differs from ``input_size`` are resized (bilinear, shorter side to fit) and center
    cropped; ``transform`` (a PIL -> PIL callable, e.g. the eval transform of ``timm.data.create_transform``,
    whose ToTensor/Normalize steps are dropped) replaces that step. The holdout (``holdout`` images,
    stratified by class, fixed by ``seed``) is carved from train and disjoint from the rest of train.
    ``labeled=False``: train labels are hidden (-1); a folder without ``train/`` is read as a flat set of
    images (recursively) with no test split.
    """
    size = tuple(int(v) for v in input_size)
    if len(size) != 3 or size[0] not in (1, 3) or min(size) < 1:
        raise LcpError(f"input_size must be (channels, height, width) with 1 or 3 channels (got {tuple(input_size)})")
    mean_t, std_t = tuple(float(v) for v in mean), tuple(float(v) for v in std)
    if len(mean_t) != size[0] or len(std_t) != size[0] or min(std_t) <= 0:
        raise LcpError(f"mean and std need {size[0]} values each and std must be positive")
    tf = _strip_tensor_steps(transform)
    cache_dir: Path | None = None
    if str(spec).lower() == "cifar10":
        local = Path(os.environ["LCP_DATA"]).expanduser() / "cifar10" if os.environ.get("LCP_DATA") else None
        if local is not None and local.is_dir():
            source = str(local.resolve())
            arrays, classes, cache_dir = _load_folder(local.resolve(), size, tf, flat=False)
        else:
            arrays, classes = _load_torchvision_cifar10(size, tf)
            source = str(cache_root() / "torchvision")
    else:
        root = Path(spec).expanduser().resolve()
        flat = not labeled and not (root / "train").is_dir()
        arrays, classes, cache_dir = _load_folder(root, size, tf, flat=flat)
        source = str(root)
    x, y = arrays["train_x"], arrays["train_y"]
    if not labeled:
        y = np.full_like(y, -1)
    tr, ho = _holdout_split(y, holdout, seed)
    return DataBundle(
        train_x=torch.from_numpy(x[tr]), train_y=torch.from_numpy(y[tr]),
        holdout_x=torch.from_numpy(x[ho]), holdout_y=torch.from_numpy(y[ho]),
        test_x=torch.from_numpy(arrays["test_x"]), test_y=torch.from_numpy(arrays["test_y"]),
        classes=classes, mean=mean_t, std=std_t, input_size=size,  # type: ignore[arg-type]
        source=source, train_idx=torch.from_numpy(tr), holdout_idx=torch.from_numpy(ho), cache_dir=cache_dir,
    )
