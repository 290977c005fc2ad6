"""Safe, atomic file output, tensor files, run locks and output-folder checks.

Everything is written through a temporary file in the target folder that is
fsync'ed and renamed over the target, so a crash never leaves a half-written
file behind. Tensors go through safetensors; nothing here uses pickle.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import fnmatch
import json
import os
import secrets
import shutil
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from lcp.errors import LcpError

if TYPE_CHECKING:  # torch is imported lazily so lcp.io stays cheap to import
    import torch

PathLike = str | os.PathLike[str]

LOCK_NAME = ".lcp.lock"
RUN_NAME = "run.json"
#: Top-level names (glob patterns) that lcp writes into an output folder. Used to
#: recognise an earlier run without run.json, and removed by ``overwrite=True``.
OUTPUT_PATTERNS: tuple[str, ...] = (
    RUN_NAME,
    "*.safetensors",
    "*.csv",
    "*.png",
    "*.jsonl",
    "search*.json",
    "state*.json",
    "checkpoint*",
    "*.log",
    "channels.json",
    "transforms.json",
    "config.json",
    "*.ckpt",
)
_TMP_MARK = ".lcp-tmp"
# OS errors that mean "the environment refuses the write", worth one clear line.
_ENV_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR}


def _reason(exc: OSError) -> str:
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if exc.errno == errno.ENOTDIR:
        return "a parent path is a file, not a folder"
    return (exc.strerror or str(exc)).lower()


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


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path``.

    The temporary file keeps the target's suffix (for writers that infer the
    format from it). It is fsync'ed and ``os.replace``d onto ``path`` when the
    block exits normally and removed when it raises; ``path`` is untouched then.
    """
    target = Path(path)
    folder = target.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        while True:
            tmp = folder / f".{target.name}.{secrets.token_hex(4)}{_TMP_MARK}{target.suffix}"
            try:
                # 0o666 so the final file gets ordinary, umask-based permissions.
                os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
                break
            except FileExistsError:
                continue
    except OSError as exc:
        if exc.errno in _ENV_ERRNOS:
            raise LcpError(f"cannot write {target}: {_reason(exc)}") from exc
        raise
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError) and exc.errno in _ENV_ERRNOS:
            raise LcpError(f"cannot write {target}: {_reason(exc)}") from exc
        raise
    _fsync_dir(folder)


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        return obj.item()
    raise TypeError(f"cannot store {type(obj).__name__} in JSON")


def _to_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, indent=2, default=_json_default) + "\n"


def atomic_write_json(path: PathLike, obj: Any) -> None:
    """Write ``obj`` as JSON (sorted keys, indent 2) to ``path`` atomically."""
    atomic_write_text(path, _to_json(obj))  # serialise first: a bad object writes nothing


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
        reason = _reason(exc) if isinstance(exc, OSError) else "not UTF-8 text"
        raise LcpError(f"cannot read {what} {p}: {reason}") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise LcpError(
            f"{what} {p} is not valid JSON (line {exc.lineno}: {exc.msg}); fix or delete it"
        ) from exc


# --------------------------------------------------------------------------- tensors


def save_tensors(
    tensors: Mapping[str, torch.Tensor],
    path: PathLike,
    metadata: Mapping[str, str] | None = None,
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
        return LcpError(f"cannot read tensor file {p}: {_reason(exc)}")
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


def load_tensor_metadata(path: PathLike) -> dict[str, str]:
    """Read the string metadata stored by :func:`save_tensors` (empty if none)."""
    from safetensors import SafetensorError, safe_open

    p = Path(path)
    try:
        with safe_open(p, framework="pt", device="cpu") as fh:
            return dict(fh.metadata() or {})
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise _open_error(p, exc) from exc


# --------------------------------------------------------------------------- output folders


def _ensure_dir(out: Path) -> None:
    """Create ``out`` (and parents) or raise a one-line LcpError."""
    if out.exists() and not out.is_dir():
        raise LcpError(f"output folder {out} is a file; choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LcpError(f"cannot write to output folder {out}: {_reason(exc)}") from exc


def _check_writable(out: Path) -> None:
    """Really try to create a file in ``out`` (os.access lies for root)."""
    probe = out / f".lcp-write-test-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        probe.unlink()
    except OSError as exc:
        raise LcpError(f"cannot write to output folder {out}: {_reason(exc)}") from exc


class RunLock:
    """Exclusive, non-blocking lock on ``out_dir/.lcp.lock`` (released on exit or process death)."""

    def __init__(self, out_dir: PathLike) -> None:
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this object currently holds the lock."""
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock or raise LcpError naming the holder's pid."""
        if self._fd is not None:
            raise RuntimeError(f"{self.path} is already locked by this RunLock")
        _ensure_dir(self.out_dir)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise LcpError(f"cannot write to output folder {self.out_dir}: {_reason(exc)}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise LcpError(
                f"output folder {self.out_dir} is in use by another lcp run (pid {pid}); "
                "choose another --out or wait"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        self._fd = fd

    def release(self) -> None:
        """Release the lock (no-op if not held). The lock file itself stays."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass
        finally:
            os.close(fd)  # closing the descriptor drops the flock

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def _lcp_outputs(out: Path) -> tuple[list[Path], list[Path]]:
    """Top-level lcp outputs of ``out`` (lock excluded) and leftover temporary files."""
    outputs, leftovers = [], []
    for entry in sorted(out.iterdir()):
        if _TMP_MARK in entry.name or entry.name.startswith(".lcp-write-test-"):
            leftovers.append(entry)
        elif entry.name != LOCK_NAME and any(
            fnmatch.fnmatchcase(entry.name, pat) for pat in OUTPUT_PATTERNS
        ):
            outputs.append(entry)
    return outputs, leftovers


_MISSING = object()


def _diff_keys(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    return sorted(k for k in set(a) | set(b) if a.get(k, _MISSING) != b.get(k, _MISSING))


def _describe(sig: Mapping[str, Any], keys: list[str]) -> str:
    return ", ".join(f"{k}={sig.get(k, '<unset>')}" for k in keys[:4])


def _read_signature(run_file: Path) -> dict[str, Any]:
    record = read_json(run_file, what="run record")
    if not (isinstance(record, dict) and isinstance(record.get("signature"), dict)):
        raise LcpError(
            f"run record {run_file} is not an lcp run.json; pass --overwrite to replace it "
            "or choose another --out"
        )
    return record["signature"]


def prepare_out_dir(
    out_dir: PathLike,
    signature: Mapping[str, Any],
    *,
    resume: bool,
    overwrite: bool = False,
) -> Path:
    """Create/validate an output folder and record the run's signature in ``run.json``.

    A folder holding another run (different signature, or lcp outputs without
    ``run.json``) is refused unless ``overwrite`` (which removes the old lcp
    outputs, see ``OUTPUT_PATTERNS``); ``resume`` requires the same signature.
    The same signature without ``resume`` is accepted (a rerun of the same run).
    Nothing existing is modified when this raises. Returns the folder path.
    """
    out = Path(out_dir)
    if resume and overwrite:
        raise LcpError("--resume and --overwrite contradict each other; pass only one")
    # Normalise through JSON so tuples/Paths compare equal to what run.json holds.
    sig: dict[str, Any] = json.loads(_to_json(dict(signature)))
    run_file = out / RUN_NAME
    if out.exists() and not out.is_dir():
        raise LcpError(f"output folder {out} is a file; choose another --out")

    stale: list[Path] = []
    if out.is_dir():
        try:
            outputs, leftovers = _lcp_outputs(out)
        except OSError as exc:
            raise LcpError(f"cannot read output folder {out}: {_reason(exc)}") from exc
        # temporary files are leftovers of a killed writer (the caller holds the folder's lock)
        stale = outputs + leftovers if overwrite else leftovers
        if not overwrite and run_file.exists():
            old = _read_signature(run_file)
            keys = _diff_keys(old, sig)
            if keys and resume:
                raise LcpError(
                    f"cannot resume: output folder {out} was started with {_describe(old, keys)}, "
                    f"not {_describe(sig, keys)}; drop --resume, pass --overwrite, "
                    "or choose another --out"
                )
            if keys:
                shown = (["model"] if "model" in old and "model" not in keys else []) + keys
                raise LcpError(
                    f"output folder {out} holds another run ({_describe(old, shown)}); pass "
                    "--resume to continue it, --overwrite to replace it, or choose another --out"
                )
        elif not overwrite and outputs:
            names = ", ".join(p.name for p in outputs[:3])
            raise LcpError(
                f"output folder {out} holds outputs of another lcp run ({names}) but no "
                f"{RUN_NAME}; pass --overwrite to replace them or choose another --out"
            )

    _ensure_dir(out)
    _check_writable(out)
    for p in stale:
        try:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
        except OSError as exc:
            raise LcpError(f"cannot remove old output {p}: {_reason(exc)}") from exc
    if stale or not run_file.exists():
        created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        atomic_write_json(run_file, {"format": 1, "created": created, "signature": sig})
    return out


def cache_dir() -> Path:
    """lcp's cache root: ``$LCP_CACHE``, else ``$XDG_CACHE_HOME/lcp``, else ``~/.cache/lcp`` (not created)."""
    if os.environ.get("LCP_CACHE"):
        return Path(os.environ["LCP_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg).expanduser() / "lcp"
