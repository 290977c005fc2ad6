"""Tests for lcp.io (atomic files, tensors, locks, output folders) and lcp.report."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from lcp.errors import LcpError
from lcp.io import (
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    load_tensor_metadata,
    load_tensors,
    read_json,
    save_tensors,
    update_json,
    upsert_csv_row,
)
from lcp.report import REPORT_COLUMNS, plot_search, plot_widths, print_table, write_layers_csv, write_report
from lcp.run.folder import RunLock, prepare_out_dir
from tests.helpers import REPO

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SIG = {"model": "resnet18", "data": "cifar10", "method": "lcp", "budget": 0.5, "seed": 0}


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --------------------------------------------------------------------------- atomic writes


def test_atomic_writes_round_trip(tmp_path: Path) -> None:
    atomic_write_bytes(tmp_path / "a.bin", b"\x00\x01")
    atomic_write_text(tmp_path / "b.txt", "héllo")
    atomic_write_json(tmp_path / "c.json", {"b": 1, "a": (1, 2), "p": tmp_path})
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "b.txt").read_text(encoding="utf-8") == "héllo"
    text = (tmp_path / "c.json").read_text()
    assert text.index('"a"') < text.index('"b"') and '\n  "a"' in text
    assert read_json(tmp_path / "c.json") == {"a": [1, 2], "b": 1, "p": str(tmp_path)}
    assert _names(tmp_path) == ["a.bin", "b.txt", "c.json"]


def test_atomic_path_failure_keeps_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "report.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(target) as tmp:
            assert tmp.parent == tmp_path and tmp.suffix == ".csv" and tmp != target
            tmp.write_text("half-written")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert _names(tmp_path) == ["report.csv"]


def test_atomic_write_json_unserialisable_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(TypeError):
        atomic_write_json(tmp_path / "x.json", {"bad": object()})
    assert (tmp_path / "x.json").read_text() == "{}"
    assert _names(tmp_path) == ["x.json"]


def test_atomic_path_replaces_on_success(tmp_path: Path) -> None:
    target = tmp_path / "t.txt"
    target.write_text("old")
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"
    assert _names(tmp_path) == ["t.txt"]


def test_upsert_csv_row_replaces_the_same_keys_and_orders_columns(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "rows.csv"
    upsert_csv_row(target, {"x": 1, "method": "lcp", "budget": 0.5, "seed": 0}, keys=("method", "budget", "seed"))
    upsert_csv_row(target, {"x": 2, "method": "lcp", "budget": 0.3, "seed": 0}, keys=("method", "budget", "seed"))
    upsert_csv_row(
        target,
        {"x": 3, "method": "lcp", "budget": 0.5 + 1e-12, "seed": 0, "new": "y"},
        keys=("method", "budget", "seed"),
        first=("method", "budget"),
    )
    df = pd.read_csv(target)
    assert list(df.columns) == ["method", "budget", "x", "seed", "new"]
    assert sorted(zip(df["budget"].round(6), df["x"])) == [(0.3, 2), (0.5, 3)]  # the 0.5 row replaced, not added
    assert _names(target.parent) == ["rows.csv"]


def _append_rows(target: str, writer: int, n: int) -> None:
    for i in range(n):
        upsert_csv_row(target, {"writer": writer, "i": i}, keys=("writer", "i"))
        update_json(Path(target).with_suffix(".json"), lambda d, i=i: d.setdefault("runs", []).append([writer, i]))


def test_concurrent_writers_lose_no_row_and_no_json_update(tmp_path: Path) -> None:
    import multiprocessing as mp

    target = tmp_path / "rows.csv"
    ctx = mp.get_context("spawn")  # a fresh interpreter per writer, like two benchmark runs
    procs = [ctx.Process(target=_append_rows, args=(str(target), w, 15)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    df = pd.read_csv(target)
    assert len(df) == 60 and len(df.drop_duplicates()) == 60
    assert len(json.loads(target.with_suffix(".json").read_text())["runs"]) == 60
    assert _names(tmp_path) == ["rows.csv", "rows.json"]


def test_a_folder_lock_taken_again_in_the_same_thread_does_not_wait_for_itself(tmp_path: Path) -> None:
    import threading

    def nested() -> None:
        update_json(tmp_path / "m.json", lambda d: upsert_csv_row(tmp_path / "a.csv", {"x": 1}, keys=("x",)))

    t = threading.Thread(target=nested, daemon=True)
    t.start()
    t.join(timeout=30)
    assert not t.is_alive() and (tmp_path / "a.csv").is_file()


def test_atomic_write_under_a_file_is_lcp_error(tmp_path: Path) -> None:
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(LcpError, match="cannot write"):
        atomic_write_text(tmp_path / "file.txt" / "sub" / "a.txt", "y")


def test_atomic_write_into_a_file_is_lcp_error(tmp_path: Path) -> None:
    """The target's own parent a file: mkdir raised FileExistsError (not an environment error) as a traceback."""
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(LcpError, match="file.txt is a file, not a folder"):
        atomic_write_text(tmp_path / "file.txt" / "a.csv", "y")
    assert (tmp_path / "file.txt").read_text() == "x"


def test_upsert_csv_row_matches_empty_keys_and_starts_an_empty_file(tmp_path: Path) -> None:
    """None and NaN keys (written as empty cells) never matched, so every upsert added a row; a 0-byte file
    (a crash between creating and writing it) raised pandas' EmptyDataError."""
    target = tmp_path / "rows.csv"
    for i in range(3):
        upsert_csv_row(
            target, {"model": "r20", "budget": 0.5, "ckpt": None, "top1": 80 + i}, ["model", "budget", "ckpt"]
        )
        upsert_csv_row(target, {"model": "r20", "budget": float("nan"), "top1": 70 + i}, ["model", "budget"])
    df = pd.read_csv(target)
    assert sorted(df["top1"]) == [72, 82]
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    upsert_csv_row(empty, {"a": 1}, ["a"])
    assert pd.read_csv(empty).to_dict("records") == [{"a": 1}]


def test_read_json_errors(tmp_path: Path) -> None:
    with pytest.raises(LcpError, match="config .*missing.json not found"):
        read_json(tmp_path / "missing.json", what="config")
    (tmp_path / "bad.json").write_text('{"a": 1,}')
    with pytest.raises(LcpError, match=r"not valid JSON \(line 1") as info:
        read_json(tmp_path / "bad.json")
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- tensors


def test_save_load_tensors_round_trip(tmp_path: Path) -> None:
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    tensors = {
        "w": base,
        "row": base[1],  # shares storage with "w"
        "t": base.t(),  # non-contiguous view
        "h": torch.ones(2, dtype=torch.float16, requires_grad=True),
        "i": torch.tensor([1, 2, 3], dtype=torch.int64),
        "empty": torch.empty(0, 3),
    }
    path = tmp_path / "m.safetensors"
    save_tensors(tensors, path, metadata={"model": "resnet18"})
    loaded = load_tensors(path)
    assert set(loaded) == set(tensors)
    for name, value in tensors.items():
        assert loaded[name].dtype == value.dtype
        assert torch.equal(loaded[name], value.detach())
    assert load_tensor_metadata(path) == {"model": "resnet18"}
    assert _names(tmp_path) == ["m.safetensors"]


@pytest.mark.parametrize("cut", [0, 5, 40, -4])
def test_load_corrupt_tensor_file(tmp_path: Path, cut: int) -> None:
    path = tmp_path / "m.safetensors"
    save_tensors({"w": torch.randn(8, 8)}, path)
    data = path.read_bytes()
    path.write_bytes(data[:cut] if cut >= 0 else data[:cut])
    with pytest.raises(LcpError, match="m.safetensors is corrupt or truncated"):
        load_tensors(path)


def test_load_missing_tensor_file(tmp_path: Path) -> None:
    with pytest.raises(LcpError, match="nope.safetensors not found"):
        load_tensors(tmp_path / "nope.safetensors")


# --------------------------------------------------------------------------- RunLock

_HOLDER = """
import sys
from lcp.run.folder import RunLock
lock = RunLock(sys.argv[1])
lock.acquire()
print("locked", flush=True)
sys.stdin.readline()
"""


def _env() -> dict[str, str]:
    """Environment for child interpreters that import lcp from this checkout."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))


def _start_holder(out: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=_env()
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_runlock_refuses_second_holder_in_process(tmp_path: Path) -> None:
    with RunLock(tmp_path) as first:
        assert first.held
        with pytest.raises(LcpError, match=rf"in use by another lcp run \(pid {os.getpid()}\)"):
            RunLock(tmp_path).acquire()
    assert not first.held
    with RunLock(tmp_path):  # free again after release
        pass


def test_runlock_other_process_and_stale_lock(tmp_path: Path) -> None:
    proc = _start_holder(tmp_path)
    try:
        with pytest.raises(LcpError, match=rf"pid {proc.pid}\); choose another --out or wait"):
            with RunLock(tmp_path):
                pass
    finally:
        proc.kill()  # killed holder: the lock file stays but the flock dies with it
        proc.wait()
    assert (tmp_path / ".lcp.lock").exists()
    with RunLock(tmp_path) as lock:
        assert lock.held


def test_runlock_creates_folder(tmp_path: Path) -> None:
    with RunLock(tmp_path / "new" / "out"):
        assert (tmp_path / "new" / "out" / ".lcp.lock").exists()


# --------------------------------------------------------------------------- prepare_out_dir


def test_prepare_fresh_and_resume_same_signature(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert prepare_out_dir(out, SIG, resume=False) == out
    record = json.loads((out / "run.json").read_text())
    assert record["signature"] == SIG
    (out / "report.csv").write_text("x")
    before = (out / "run.json").read_bytes()
    prepare_out_dir(out, dict(SIG), resume=True)
    prepare_out_dir(out, dict(SIG), resume=False)  # same run again: allowed
    assert (out / "run.json").read_bytes() == before
    assert (out / "report.csv").read_text() == "x"


def test_prepare_existing_empty_folder_and_unrelated_files(tmp_path: Path) -> None:
    (tmp_path / "notes.md").write_text("mine")
    prepare_out_dir(tmp_path, SIG, resume=False)
    assert (tmp_path / "run.json").exists() and (tmp_path / "notes.md").exists()


def test_prepare_other_run_refused_without_changes(tmp_path: Path) -> None:
    prepare_out_dir(tmp_path, SIG, resume=False)
    (tmp_path / "report.csv").write_text("old")
    snapshot = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    other = dict(SIG, budget=0.3)
    with pytest.raises(LcpError, match=r"holds another run \(model=resnet18, budget=0.5\); pass --resume") as info:
        prepare_out_dir(tmp_path, other, resume=False)
    assert "--overwrite" in str(info.value) and "another --out" in str(info.value)
    with pytest.raises(LcpError, match=r"cannot resume: .* with budget=0.5, not budget=0.3;"):
        prepare_out_dir(tmp_path, other, resume=True)
    with pytest.raises(LcpError, match=r"budget=0.5, seed=0, not budget=0.3, seed=1"):
        prepare_out_dir(tmp_path, dict(other, seed=1), resume=True)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == snapshot


def test_prepare_overwrite_replaces_lcp_outputs_only(tmp_path: Path) -> None:
    prepare_out_dir(tmp_path, SIG, resume=False)
    (tmp_path / "report.csv").write_text("old")
    (tmp_path / "notes.md").write_text("mine")
    (tmp_path / ".layers.csv.0a1b2c3d.lcp-tmp.csv").write_text("left by a killed run")
    for export in ("model.onnx", "model.ts.pt", "model.pt2"):  # lcp export's files of the old model
        (tmp_path / export).write_text("old")
    (tmp_path / "budget_0.5").mkdir()  # a --budgets run's folder: its checkpoint would be resumed later
    (tmp_path / "budget_0.5" / "finetune.ckpt").write_text("old")
    other = dict(SIG, budget=0.3)
    prepare_out_dir(tmp_path, other, resume=False, overwrite=True)
    assert json.loads((tmp_path / "run.json").read_text())["signature"] == other
    assert _names(tmp_path) == ["notes.md", "run.json"]


def test_prepare_outputs_without_run_json(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"x")
    with pytest.raises(LcpError, match="model.safetensors.*no run.json; pass --overwrite"):
        prepare_out_dir(tmp_path, SIG, resume=False)
    with pytest.raises(LcpError):
        prepare_out_dir(tmp_path, SIG, resume=True)
    assert _names(tmp_path) == ["model.safetensors"]
    prepare_out_dir(tmp_path, SIG, resume=False, overwrite=True)
    assert _names(tmp_path) == ["run.json"]


def test_prepare_ignores_lock_file(tmp_path: Path) -> None:
    with RunLock(tmp_path):
        prepare_out_dir(tmp_path, SIG, resume=False)
    assert _names(tmp_path) == [".lcp.lock", "run.json"]


def test_prepare_resume_and_overwrite_conflict(tmp_path: Path) -> None:
    with pytest.raises(LcpError, match="--resume and --overwrite"):
        prepare_out_dir(tmp_path, SIG, resume=True, overwrite=True)


def test_prepare_corrupt_run_json(tmp_path: Path) -> None:
    (tmp_path / "run.json").write_text("{not json")
    with pytest.raises(LcpError, match="run.json is not valid JSON"):
        prepare_out_dir(tmp_path, SIG, resume=False)


def test_prepare_under_a_file_is_unwritable(tmp_path: Path) -> None:
    (tmp_path / "file.txt").write_text("x")
    out = tmp_path / "file.txt" / "sub"
    with pytest.raises(LcpError, match=r"cannot write to output folder .*file.txt/sub"):
        prepare_out_dir(out, SIG, resume=False)
    with pytest.raises(LcpError, match="is a file"):
        prepare_out_dir(tmp_path / "file.txt", SIG, resume=False)
    assert (tmp_path / "file.txt").read_text() == "x"


_READ_ONLY_PROBE = """
import json, sys
from lcp.errors import LcpError
from lcp.run.folder import prepare_out_dir
msgs = []
for out in sys.argv[1:]:
    try:
        prepare_out_dir(out, {"model": "m"}, resume=False)
        msgs.append("no error")
    except LcpError as exc:
        msgs.append(str(exc))
print(json.dumps(msgs))
"""


def test_prepare_read_only_folder(tmp_path: Path) -> None:
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o500)
    cmd = [sys.executable, "-c", _READ_ONLY_PROBE, str(out), str(out / "sub")]
    if os.geteuid() == 0:  # root ignores permissions unless it drops CAP_DAC_OVERRIDE
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv to drop CAP_DAC_OVERRIDE")
        cmd = [setpriv, "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search", *cmd]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=_env())
    finally:
        out.chmod(0o700)
    if proc.returncode != 0 and os.geteuid() == 0:
        pytest.skip(f"cannot drop root capabilities here: {proc.stderr.strip()[-200:]}")
    assert proc.returncode == 0, proc.stderr
    msgs = json.loads(proc.stdout)
    assert msgs == [
        f"cannot write to output folder {out}: permission denied",
        f"cannot write to output folder {out / 'sub'}: permission denied",
    ]
    assert _names(out) == []


# --------------------------------------------------------------------------- reports


def test_write_report_columns_and_rounding(tmp_path: Path) -> None:
    row = {
        "speedup": 1.234567,  # extra, given first: must still come after REPORT_COLUMNS
        "model": "resnet18",
        "macs_base": 1_823_522_816,
        "macs_ratio": 0.512345678,
        "top1_base": 69.7581,
        "top1_pruned": 67.123,
        "search_s": 12.3456,
        "latency_base_ms": 3.14159,
        "seed": 0,
    }
    path = tmp_path / "report.csv"
    df = write_report(row, path)
    assert list(df.columns) == REPORT_COLUMNS + ["speedup", "latency_base_ms"]
    back = pd.read_csv(path)
    assert list(back.columns) == list(df.columns) and len(back) == 1
    rec = back.iloc[0]
    assert rec["macs_base"] == 1_823_522_816
    assert rec["macs_ratio"] == 0.5123 and rec["speedup"] == 1.2346
    assert rec["top1_base"] == 69.76 and rec["top1_pruned"] == 67.12
    assert rec["search_s"] == 12.3
    assert pd.isna(rec["dataset"])
    assert _names(tmp_path) == ["report.csv"]
    text = print_table(df)
    assert "macs_ratio" in text and "0.5123" in text and "\n" in text


def test_relative_errors_keep_their_significant_digits(tmp_path: Path) -> None:
    """verification_error (a max relative error near 1e-7) was rounded to 4 decimals: always 0.0."""
    df = write_report({"verification_error": 3.2e-7, "latency_error": 0.0123456}, tmp_path / "report.csv")
    rec = pd.read_csv(tmp_path / "report.csv").iloc[0]
    assert rec["verification_error"] == pytest.approx(3.2e-7) and rec["latency_error"] == 0.0123
    assert "3.2e-07" in print_table(df)


def test_write_layers_csv(tmp_path: Path) -> None:
    rows = [
        {
            "group": 0,
            "layers": ["conv1", "bn1"],
            "channels_before": 64,
            "channels_after": 32,
            "alpha": 1.5,
            "kappa": 0.1,
        },
        {
            "group": 1,
            "layers": "layer1.0.conv1",
            "channels_before": 64,
            "channels_after": 48,
            "keep_ratio": 0.75,
            "alpha": 1.0,
            "kappa": 0.0,
        },
    ]
    df = write_layers_csv(rows, tmp_path / "layers.csv")
    back = pd.read_csv(tmp_path / "layers.csv")
    assert list(back.columns) == [
        "group",
        "layers",
        "channels_before",
        "channels_after",
        "keep_ratio",
        "alpha",
        "kappa",
    ]
    assert back["layers"].tolist() == ["conv1;bn1", "layer1.0.conv1"]
    assert back["keep_ratio"].tolist() == [0.5, 0.75]
    table = print_table(df)
    assert len(table.splitlines()) == 4  # header, rule, two rows


def test_plots_produce_png(tmp_path: Path) -> None:
    layers = [(f"features.{i}.block.conv_pw", 64 + i, 32 + i // 2) for i in range(150)]
    plot_widths(layers, tmp_path / "widths.png", "resnet-ish, 150 layers")
    plot_widths(layers[:5], tmp_path / "few.png", "five")
    plot_widths([], tmp_path / "none.png", "empty")
    history = [{"fitness": 50 + (i * 7) % 13} for i in range(40)] + [{"fitness": None}]
    plot_search(history, tmp_path / "search.png")
    plot_search([], tmp_path / "search_empty.png")
    for name in ["widths.png", "few.png", "none.png", "search.png", "search_empty.png"]:
        data = (tmp_path / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000
    assert _names(tmp_path) == sorted(["widths.png", "few.png", "none.png", "search.png", "search_empty.png"])


def test_import_lcp_report_does_not_import_pyplot() -> None:
    code = "import sys, lcp.report, lcp.io; print('matplotlib.pyplot' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), check=True)
    assert out.stdout.strip() == "False"


def test_a_folder_of_the_users_own_files_is_not_taken_for_a_run(tmp_path: Path) -> None:
    """Names anyone may write (a CSV, a figure, a log, config.json) without any file only lcp writes: lcp refused
    the folder as "outputs of another lcp run", and --overwrite, as the refusal suggested, deleted them."""
    mine = {"my_results.csv": "a", "figure.png": "b", "config.json": "{}", "train.log": "c"}
    for name, text in mine.items():
        (tmp_path / name).write_text(text)
    prepare_out_dir(tmp_path, SIG, resume=False)
    prepare_out_dir(tmp_path, dict(SIG, budget=0.3), resume=False, overwrite=True)
    assert {n: (tmp_path / n).read_text() for n in mine} == mine
