"""Image folders decoded once into uint8 arrays and cached on disk (``np.save``, no pickle).

The cache key hashes the folder's absolute path, its file list, file count, total size and newest mtime, the
input size and any transform whose ``repr`` names its settings (a ``Lambda`` or a plain function is decoded
every run, never cached); a killed run leaves no half-written cache (``atomic_write``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch import Tensor

from lcp.errors import LcpError
from lcp.io import atomic_path, cache_dir

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp", ".gif"})
_CACHE_VERSION = 1

ImageTransform = Callable[[Any], Any]
Files = list[tuple[str, int, int]]  # (path, size in bytes, mtime_ns)


# ----------------------------------------------------------------------------------------------- decoding


def strip_tensor_steps(transform: ImageTransform | None) -> ImageTransform | None:
    """Drop ToTensor/Normalize steps of a Compose (e.g. timm.data.create_transform): lcp caches uint8."""
    steps = getattr(transform, "transforms", None)
    if transform is None or not isinstance(steps, list):
        return transform
    kept = [t for t in steps if type(t).__name__ not in {"ToTensor", "MaybeToTensor", "Normalize", "PILToTensor"}]
    return type(transform)(kept) if len(kept) != len(steps) else transform


def fit_image(img: Any, size: tuple[int, int, int], transform: ImageTransform | None) -> np.ndarray:
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
            return fit_image(img, size, transform)
    except LcpError:
        raise
    except Exception as exc:
        raise LcpError(f"cannot read image {path} ({type(exc).__name__}): remove or replace the file") from None


def _decode_jpegs(paths: Sequence[str], size: tuple[int, int, int]) -> list[np.ndarray | None]:
    """Batch-decode the JPEGs among ``paths`` with torchvision.io (3x faster than PIL, same pixels).

    Returns None where a file is not a JPEG of exactly ``size``, or for all files if torchvision cannot
    (its image decoding is deprecated from 0.29; PIL then does the work), or for grayscale sizes (its gray
    conversion differs from PIL's ``convert("L")`` by up to 10 levels).
    """
    out: list[np.ndarray | None] = [None] * len(paths)
    idx = [i for i, p in enumerate(paths) if p.lower().endswith((".jpg", ".jpeg"))]
    if not idx or size[0] != 3:
        return out
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torchvision.io import ImageReadMode, decode_jpeg

            blobs = [torch.frombuffer(bytearray(Path(paths[i]).read_bytes()), dtype=torch.uint8) for i in idx]
            images = decode_jpeg(blobs, mode=ImageReadMode.RGB)
    except Exception:  # one bad file fails the batch: PIL decodes each file or names the bad one
        return out
    for i, t in zip(idx, images):
        if tuple(t.shape) == size:
            out[i] = t.numpy()
    return out


def decode_all(
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
        warnings.warn(
            f"lcp: could not write the data cache at {folder} ({exc}); set LCP_CACHE to a writable folder", stacklevel=2
        )
        return False


def _cache_key(root: Path, scans: Sequence[Files], size: tuple[int, int, int], extra: str) -> str:
    h = hashlib.sha256()
    files = [f for scan in scans for f in scan]
    head = {
        "v": _CACHE_VERSION,
        "root": str(root),
        "count": len(files),
        "bytes": sum(f[1] for f in files),
        "mtime": max((f[2] for f in files), default=0),
        "size": list(size),
        "extra": extra,
    }
    h.update(json.dumps(head, sort_keys=True).encode())
    cut = len(str(root)) + 1  # relative paths: renames and moves between classes change the labels
    h.update("\0".join(p[cut:] for p, _, _ in files).encode())
    return h.hexdigest()[:24]


# ------------------------------------------------------------------------------------------------ sources


def load_folder(
    root: Path, size: tuple[int, int, int], transform: ImageTransform | None, flat: bool, test_only: bool = False
) -> tuple[dict[str, np.ndarray], list[str], Path | None]:
    """Arrays of an ImageFolder tree (``flat``: every image under root, labels -1; ``test_only``: the test split
    alone, its classes those of test/ or val/), via the disk cache."""
    if not root.is_dir():
        raise LcpError(f"data folder {root} does not exist: pass an ImageFolder root with train/ and test/ (or val/)")
    if flat:
        train_files, test_files = _scan(root), []
        if not train_files:
            raise LcpError(f"no images found in {root}: add .jpg or .png files")
        classes: list[str] = []
        train_labels, test_labels = [-1] * len(train_files), []
    elif test_only:
        test_dir = next((root / n for n in ("test", "val") if (root / n).is_dir()), None)
        if test_dir is None:
            raise LcpError(f"{root} has no test/ or val/ folder: expected {root}/test/<class>/*.jpg")
        # the classes (and so the labels) are train/'s, as in a full load, when there is a train/ to name them
        named = _subdirs(root / "train") if (root / "train").is_dir() else None
        classes, test_files, test_labels = _scan_classes(test_dir, named or None, root)
        train_files, train_labels = [], []
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
    # the test split alone: its own entry (a full load's is kept), and its labels depend on train/'s class names
    extra = f"flat={flat};transform={transform!r}" + (f";split=test;classes={classes}" if test_only else "")
    extra += ";gray=pil" if size[0] == 1 else ""  # entries decoded by torchvision's gray conversion are not reused
    folder = cache_dir() / "data" / _cache_key(root, [train_files, test_files], size, extra)
    cacheable = transform is None or _names_itself(transform)
    hit = _cache_read(folder) if cacheable else None
    if hit is not None:
        return hit[0], list(hit[1]["classes"]), folder
    arrays = {
        "train_x": decode_all([f[0] for f in train_files], size, transform),
        "train_y": np.asarray(train_labels, dtype=np.int64),
        "test_x": decode_all([f[0] for f in test_files], size, transform),
        "test_y": np.asarray(test_labels, dtype=np.int64),
    }
    meta = {
        "version": _CACHE_VERSION,
        "source": str(root),
        "classes": classes,
        "extra": extra,
        "input_size": list(size),
        "train": len(train_files),
        "test": len(test_files),
    }
    return arrays, classes, folder if cacheable and _cache_write(folder, arrays, meta) else None


def _names_itself(transform: ImageTransform) -> bool:
    """Whether ``repr(transform)`` tells one transform from another (timm's and torchvision's name their
    settings), so it may key the decoded-images cache: every ``Lambda`` prints as ``Lambda()``, and a function
    or object prints its address, which changes with every process (a new cache entry per run)."""
    text = repr(transform)
    return "Lambda(" not in text and " at 0x" not in text
