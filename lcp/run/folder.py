"""Run folders: an exclusive lock per output folder and the check that a folder holds this run (its signature)
or nothing of lcp's, so that a rerun never overwrites another run's outputs unless told to."""

from __future__ import annotations

import contextlib
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
from typing import Any

from lcp.errors import LcpError
from lcp.io import (
    OUTPUT_PATTERNS,
    TMP_MARK,
    PathLike,
    atomic_write_json,
    ensure_dir,
    os_reason,
    read_json,
    to_json,
    users_files,
)

LOCK_NAME = ".lcp.lock"
RUN_NAME = "run.json"  # the first of OUTPUT_PATTERNS

#: The names among OUTPUT_PATTERNS that only lcp writes: a folder without any of them holds no lcp run.
LCP_ONLY: tuple[str, ...] = (
    RUN_NAME,
    "*.safetensors",
    "search*.json",
    "sensitivity.json",
    "state*.json",
    "channels.json",
    "transforms.json",
    "*.ckpt",
)


# --------------------------------------------------------------------------- output folders


def _check_writable(out: Path) -> None:
    """Really try to create a file in ``out`` (os.access lies for root)."""
    probe = out / f".lcp-write-test-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        probe.unlink()
    except OSError as exc:
        raise LcpError(f"cannot write to output folder {out}: {os_reason(exc)}") from exc


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
        ensure_dir(self.out_dir)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise LcpError(f"cannot write to output folder {self.out_dir}: {os_reason(exc)}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise LcpError(
                f"output folder {self.out_dir} is in use by another lcp run (pid {pid}); choose another --out or wait"
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
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


#: what marks a run's work (in the folder or a budget's subfolder): any lcp output but the run's own record
_WORK_PATTERNS = tuple(p for p in OUTPUT_PATTERNS if p not in (RUN_NAME, "state*.json"))


def _has_work(out: Path) -> bool:
    return any(next(d.glob(p), None) for d in (out, *out.glob("budget_*")) for p in _WORK_PATTERNS)


#: the files ``--resume`` continues a run from (a search's, an agent's or a controller's state, a fine-tuning
#: checkpoint, the measured sensitivity)
RESUMABLE_PATTERNS = ("search_state.json", "sensitivity.json", "*_state*.safetensors", "finetune.ckpt")


def resumable_work(out: Path) -> list[str]:
    """The names of the files in ``out`` (or its budgets' folders) that ``--resume`` would continue from."""
    dirs = (out, *sorted(out.glob("budget_*"))) if out.is_dir() else ()
    return [str(f.relative_to(out)) for d in dirs for p in RESUMABLE_PATTERNS for f in sorted(d.glob(p))]


@contextlib.contextmanager
def claim(out: Path, lock: contextlib.AbstractContextManager) -> Iterator[None]:
    """Hold ``lock`` on the output folder ``out`` for a run; if the run fails before writing any work, leave the
    folder as it was found: run.json and state.json go again, and a folder the run created is removed. Once work
    exists (a search state, a checkpoint, ...), they stay, so that ``--resume`` continues the run."""
    fresh = not (out / RUN_NAME).exists()
    created = not out.exists() and isinstance(lock, RunLock)  # only the lock's owner removes the folder
    try:
        with lock:
            try:
                yield
            except BaseException:
                if fresh and not _has_work(out):
                    for name in (RUN_NAME, "state.json"):
                        (out / name).unlink(missing_ok=True)
                raise
    except BaseException:
        if created and out.is_dir() and {p.name for p in out.iterdir()} <= {LOCK_NAME}:
            with contextlib.suppress(OSError):  # the run's own error is the one to report
                (out / LOCK_NAME).unlink(missing_ok=True)
                out.rmdir()
        raise


def _lcp_outputs(out: Path) -> tuple[list[Path], list[Path]]:
    """Top-level lcp outputs of ``out`` (lock excluded) and leftover temporary files."""
    outputs, leftovers = [], []
    for entry in sorted(out.iterdir()):
        if TMP_MARK in entry.name or entry.name.startswith(".lcp-write-test-"):
            leftovers.append(entry)
        elif entry.name != LOCK_NAME and any(fnmatch.fnmatchcase(entry.name, pat) for pat in OUTPUT_PATTERNS):
            outputs.append(entry)
        elif entry.is_dir() and entry.name.startswith("budget_") and _lcp_outputs(entry)[0]:
            outputs.append(entry)  # one budget's folder of a --budgets run
    if not any(e.is_dir() or any(fnmatch.fnmatchcase(e.name, p) for p in LCP_ONLY) for e in outputs):
        outputs = []  # only names anyone may write (notes.csv, a figure): the user's files, not lcp's
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
            f"run record {run_file} is not an lcp run.json; pass --overwrite to replace it or choose another --out"
        )
    return record["signature"]


def prepare_out_dir(out_dir: PathLike, signature: Mapping[str, Any], *, resume: bool, overwrite: bool = False) -> Path:
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
    sig: dict[str, Any] = json.loads(to_json(dict(signature)))
    run_file = out / RUN_NAME
    if out.exists() and not out.is_dir():
        raise LcpError(f"output folder {out} is a file; choose another --out")

    stale: list[Path] = []
    if out.is_dir():
        try:
            outputs, leftovers = _lcp_outputs(out)
        except OSError as exc:
            raise LcpError(f"cannot read output folder {out}: {os_reason(exc)}") from exc
        # the user's files in the folder before lcp's first run there are never lcp's to remove
        ours = {p.name for p in outputs + leftovers}
        users = users_files(run_file) if run_file.exists() else _names(out) - ours
        outputs = [p for p in outputs if p.name not in users]
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

    else:
        users = set()
    ensure_dir(out)
    _check_writable(out)
    for p in stale:
        try:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
        except OSError as exc:
            raise LcpError(f"cannot remove old output {p}: {os_reason(exc)}") from exc
    if stale or not run_file.exists():
        created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        record = {"format": 1, "created": created, "signature": sig}
        atomic_write_json(run_file, {**record, "users_files": sorted(users)} if users else record)
    return out


def _names(out: Path) -> set[str]:
    """The entries of a folder (the lock aside)."""
    return {e.name for e in out.iterdir() if e.name != LOCK_NAME}
