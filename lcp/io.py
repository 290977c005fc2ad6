"""Safe, atomic file output, JSON and tensor files, and lcp's cache folder (run folders: ``lcp.run.folder``).

Everything is written through a temporary file in the target folder that is
fsync'ed and renamed over the target, so a crash never leaves a half-written
file behind. Tensors go through safetensors; nothing here uses pickle.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import secrets
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lcp.errors import LcpError

if TYPE_CHECKING:  # torch is imported lazily so lcp.io stays cheap to import
    import torch

PathLike = str | os.PathLike[str]

TMP_MARK = ".lcp-tmp"
#: Top-level names (glob patterns) that lcp writes into an output folder (a run's, ``lcp.save``'s): what
#: ``--overwrite`` and ``lcp.save(overwrite=True)`` remove, and how an earlier run without run.json is recognised.
OUTPUT_PATTERNS: tuple[str, ...] = (
    "run.json",
    "*.safetensors",
    "*.csv",
    "*.png",
    "*.jsonl",
    "search*.json",
    "sensitivity.json",
    "state*.json",
    "checkpoint*",
    "*.log",
    "channels.json",
    "transforms.json",
    "config.json",
    "*.ckpt",
    "model.onnx*",  # lcp export's files (an ONNX model may have a .data file beside it)
    "*.ts.pt",
    "*.pt2",
)

# OS errors that mean "the environment refuses the write", worth one clear line.
_ENV_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR}


def os_reason(exc: OSError) -> str:
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if exc.errno == errno.ENOTDIR:
        return "a parent path is a file, not a folder"
    return (exc.strerror or str(exc)).lower()


def ensure_dir(folder: Path, what: str = "output folder", hint: str = "choose another --out") -> None:
    """Create ``folder`` (and parents) or raise a one-line LcpError (``what`` and ``hint`` word it)."""
    if folder.exists() and not folder.is_dir():
        raise LcpError(f"{what} {folder} is a file; {hint}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LcpError(f"cannot write to {what} {folder}: {os_reason(exc)}") from exc


def _fsync_dir(folder: Path) -> None:
    """fsync a directory so a rename inside it survives a crash (best effort)."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems do not support fsync on directories
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_file_target(path: PathLike, what: str = "") -> None:
    """Refuse (one-line LcpError) a file path that cannot be written because it is a folder or one of its parents
    is a file; ``what`` (e.g. ``--out``) names it in the message. Cheap: callers use it before long work."""
    target = Path(path)
    label = f"{what} {target}" if what else str(target)
    if target.is_dir():
        raise LcpError(f"cannot write {label}: it is a folder; name a file")
    for parent in target.parents:
        if parent.exists():
            if not parent.is_dir():
                raise LcpError(f"cannot write {label}: {parent} is a file, not a folder")
            return


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path``.

    The temporary file keeps the target's suffix (for writers that infer the
    format from it). It is fsync'ed and ``os.replace``d onto ``path`` when the
    block exits normally and removed when it raises; ``path`` is untouched then.
    """
    target = Path(path)
    folder = target.parent
    check_file_target(target)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        while True:
            tmp = folder / f".{target.name}.{secrets.token_hex(4)}{TMP_MARK}{target.suffix}"
            try:
                # 0o666 so the final file gets ordinary, umask-based permissions.
                os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
                break
            except FileExistsError:
                continue
    except OSError as exc:
        if exc.errno in _ENV_ERRNOS:
            raise LcpError(f"cannot write {target}: {os_reason(exc)}") from exc
        raise
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError) and exc.errno in _ENV_ERRNOS:
            raise LcpError(f"cannot write {target}: {os_reason(exc)}") from exc
        raise
    _fsync_dir(folder)


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


_HELD = threading.local()  # the folders this thread holds a folder_lock on (the lock is taken once)
# errors of file systems without flock on folders (NFS, Lustre): the update then goes on unlocked
_NO_LOCK_ERRNOS = {errno.EBADF, errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


@contextlib.contextmanager
def folder_lock(folder: PathLike) -> Iterator[None]:
    """Hold an exclusive (blocking) lock on ``folder`` while a file in it is read, changed and rewritten, so that
    several processes updating one file (two benchmark runs sharing a results CSV) never lose each other's
    update. Locks the folder itself, so nothing is left behind; nested use in one thread takes it once; a no-op
    where ``fcntl`` is missing (Windows) or the file system has no such locks (some network file systems)."""
    key = os.path.realpath(folder)
    held: set[str] = _HELD.__dict__.setdefault("folders", set())
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        fcntl = None  # type: ignore[assignment]
    if key in held or fcntl is None:
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            if exc.errno not in _NO_LOCK_ERRNOS:
                raise
        held.add(key)
        try:
            yield
        finally:
            held.discard(key)
    finally:
        os.close(fd)  # closing the descriptor drops the lock


def upsert_csv_row(path: PathLike, row: Mapping[str, Any], keys: Sequence[str], first: Sequence[str] = ()) -> None:
    """Add ``row`` to the CSV table at ``path``, replacing the rows that agree with it on every one of ``keys``
    (numbers within 1e-9), and rewrite the file atomically, under ``folder_lock``; the columns in ``first`` lead,
    in that order. What the benchmark harnesses use to append results one at a time, so an interrupted run loses
    nothing and two runs appending to one table lose no row."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with folder_lock(p.parent):
        _upsert_csv_row(p, row, keys, first)


def _upsert_csv_row(p: Path, row: Mapping[str, Any], keys: Sequence[str], first: Sequence[str]) -> None:
    import pandas as pd  # lazily, like torch

    # the rows already there are kept as written (text: a hash such as "0909..." must not become a number)
    try:
        old = pd.read_csv(p, dtype=str, keep_default_na=False) if p.is_file() else pd.DataFrame()
    except pd.errors.EmptyDataError:  # an empty file (a crash between create and write): no rows yet
        old = pd.DataFrame()
    if not old.empty and all(k in old.columns for k in keys):
        same = pd.Series(True, index=old.index)
        for k in keys:
            v = row[k]
            if v is None or (isinstance(v, float) and math.isnan(v)):  # to_csv writes both as an empty cell
                same &= old[k].isin(("", "nan", "NaN", "None"))
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                same &= (pd.to_numeric(old[k], errors="coerce") - v).abs() < 1e-9
            else:
                same &= old[k] == str(v)
        old = old[~same]
    new = pd.DataFrame([dict(row)])
    df = new if old.empty else pd.concat([old, new], ignore_index=True)
    lead = [c for c in first if c in df.columns]
    df = df[lead + [c for c in df.columns if c not in lead]]
    with atomic_path(p) as tmp:
        df.to_csv(tmp, index=False)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        return obj.item()
    raise TypeError(f"cannot store {type(obj).__name__} in JSON")


def to_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, indent=2, default=_json_default) + "\n"


def atomic_write_json(path: PathLike, obj: Any) -> None:
    """Write ``obj`` as JSON (sorted keys, indent 2) to ``path`` atomically."""
    atomic_write_text(path, to_json(obj))  # serialise first: a bad object writes nothing


def update_json(path: PathLike, change: Callable[[dict], None]) -> dict:
    """Read the JSON object at ``path`` (``{}`` if there is none), let ``change`` edit it in place and write it back
    atomically, all under ``folder_lock``: concurrent updates of one file are applied one after the other."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with folder_lock(p.parent):
        data = read_json(p) if p.is_file() else {}
        change(data)
        atomic_write_json(p, data)
    return data


def read_json(path: PathLike, what: str = "JSON file") -> Any:
    """Read a JSON file; a missing, unreadable or invalid file raises LcpError."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise LcpError(f"{what} {p} not found; check the path") from exc
    except IsADirectoryError as exc:
        raise LcpError(f"{what} {p} is a folder, not a file; check the path") from exc
    except (OSError, UnicodeDecodeError) as exc:
        reason = os_reason(exc) if isinstance(exc, OSError) else "not UTF-8 text"
        raise LcpError(f"cannot read {what} {p}: {reason}") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise LcpError(f"{what} {p} is not valid JSON (line {exc.lineno}: {exc.msg}); fix or delete it") from exc
    except RecursionError:
        raise LcpError(f"{what} {p} is nested too deeply to be an lcp file; fix or delete it") from None
    except ValueError as exc:  # a number too long for Python's int conversion
        raise LcpError(f"{what} {p} cannot be read: {str(exc).splitlines()[0]}") from None


# --------------------------------------------------------------------------- tensors


def save_tensors(
    tensors: Mapping[str, torch.Tensor], path: PathLike, metadata: Mapping[str, str] | None = None
) -> None:
    """Save tensors atomically with safetensors (contiguous CPU copies, no shared storage)."""
    import torch

    if metadata is not None:
        bad = [k for k, v in metadata.items() if not (isinstance(k, str) and isinstance(v, str))]
        if bad:
            raise TypeError(f"safetensors metadata must map str to str; bad keys: {bad}")
    flat: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, value in tensors.items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            raise TypeError(f"save_tensors expects str -> Tensor, got {name!r}: {type(value).__name__}")
        t = value.detach().to("cpu")
        if t.layout != torch.strided:
            t = t.to_dense()
        t = t.contiguous()
        ptr = t.untyped_storage().data_ptr()
        if ptr and ptr in seen:
            t = t.clone()  # safetensors refuses tensors that share memory
            ptr = t.untyped_storage().data_ptr()
        if ptr:
            seen.add(ptr)
        flat[name] = t
    from safetensors.torch import save

    # serialise in memory and write through atomic_write_bytes: save_file would replace the temp file with
    # one of mode 0600
    atomic_write_bytes(path, save(flat, metadata=dict(metadata) if metadata is not None else None))


def _open_error(p: Path, exc: Exception) -> LcpError:
    if isinstance(exc, FileNotFoundError):
        return LcpError(f"tensor file {p} not found; check the path")
    if isinstance(exc, OSError):
        return LcpError(f"cannot read tensor file {p}: {os_reason(exc)}")
    return LcpError(f"tensor file {p} is corrupt or truncated ({exc}); recreate it")


def load_tensors(path: PathLike) -> dict[str, torch.Tensor]:
    """Load a safetensors file onto the CPU; a missing or corrupt file raises LcpError."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path)
    try:
        return load_file(p, device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise _open_error(p, exc) from exc


def with_metadata_of(model: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` carrying ``model``'s own state-dict metadata (module versions), which safetensors files do not
    keep: some modules refuse a state without it (torchvision's MNASNet)."""
    from collections import OrderedDict

    out = OrderedDict(state)
    meta = getattr(model.state_dict(), "_metadata", None)
    if meta is not None:
        out._metadata = meta  # type: ignore[attr-defined]
    return out


def load_tensor_metadata(path: PathLike) -> dict[str, str]:
    """Read the string metadata stored by :func:`save_tensors` (empty if none)."""
    from safetensors import SafetensorError, safe_open

    p = Path(path)
    try:
        with safe_open(p, framework="pt", device="cpu") as fh:
            return dict(fh.metadata() or {})
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise _open_error(p, exc) from exc


def cache_dir() -> Path:
    """lcp's cache root: ``$LCP_CACHE``, else ``$XDG_CACHE_HOME/lcp``, else ``~/.cache/lcp`` (not created)."""
    if os.environ.get("LCP_CACHE"):
        return Path(os.environ["LCP_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg).expanduser() / "lcp"


def users_files(run_file: Path) -> set[str]:
    """The names a run's run.json records as the user's (in its folder before lcp's first run there)."""
    try:
        names = json.loads(Path(run_file).read_text()).get("users_files", [])
    except (OSError, ValueError, AttributeError):
        return set()
    return {n for n in names if isinstance(n, str)} if isinstance(names, list) else set()
