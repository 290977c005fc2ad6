"""Tests of the ``lcp`` command line and the prune pipeline on a tiny ImageFolder (fast: no ../shared needed).

Most runs call ``lcp.cli.main`` in-process; the kill/resume and SIGINT tests and the stderr checks of a real
process use subprocesses.
"""

from __future__ import annotations

import csv
import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import lcp
from lcp.report import REPORT_COLUMNS
from tests.helpers import (
    OUTPUT_FILES,
    REPO,
    Result,
    assert_one_line_error,
    assert_unchanged,
    evil_pickle,
    lcp_cli,
    read_csv,
    read_report,
    snapshot,
    subprocess_env,
    tiny_args,
)

# ------------------------------------------------------------------------------------------------- helpers


def measured(column: str) -> bool:
    """Columns that time something (``*_s``, ``*_ms``, speed-up and its error): they differ between identical runs."""
    return column.endswith(("_s", "_ms")) or column in ("speedup", "latency_error")


def stable_part(row: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in row.items() if not measured(k)}


def macs_of(model: torch.nn.Module) -> int:
    return lcp.count_macs(model, torch.zeros(1, 3, 32, 32))


# ----------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def e2e(tiny_folder: Path, resnet20_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Result]:
    """One full run: global ranking to 50% of the MACs, one fine-tuning epoch."""
    out = tmp_path_factory.mktemp("e2e") / "run"
    res = lcp_cli(*tiny_args(tiny_folder, resnet20_ckpt, out, finetune=1))
    return out, res


def test_prune_end_to_end_outputs(e2e: tuple[Path, Result]) -> None:
    out, res = e2e
    assert res.code == 0, res.err
    assert "Traceback" not in res.err
    for name in OUTPUT_FILES:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert not (out / "finetune.ckpt").exists()  # removed once the run is complete
    assert not [p.name for p in out.iterdir() if ".lcp-tmp" in p.name]
    assert (out / "widths.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "run.json").read_text())["signature"]["budget"] == 0.5
    spec = json.loads((out / "channels.json").read_text())
    assert spec["model"] == "resnet20" and spec["num_classes"] == 3 and spec["removed_units"]
    assert "macs_ratio" in res.out  # the summary table


def test_prune_report_columns_and_budget(e2e: tuple[Path, Result]) -> None:
    out, res = e2e
    assert res.code == 0, res.err
    with open(out / "report.csv", newline="") as f:
        header = next(csv.reader(f))
    assert header[: len(REPORT_COLUMNS)] == REPORT_COLUMNS  # the documented columns first, in order
    assert len(set(header)) == len(header)
    row = read_report(out)
    assert (row["model"], row["method"], row["budget"], row["finetune_epochs"]) == ("resnet20", "global", "0.5", "1")
    ratio = float(row["macs_ratio"])
    assert 0.49 <= ratio <= 0.5
    assert 0.49 <= int(row["macs_pruned"]) / int(row["macs_base"]) <= 0.5
    assert int(row["params_pruned"]) < int(row["params_base"])
    for col in ("top1_base", "top1_pruned_noft", "top1_pruned"):
        assert 0.0 <= float(row[col]) <= 100.0
    layers = read_csv(out / "layers.csv")
    assert layers and all(int(r["channels_after"]) <= int(r["channels_before"]) for r in layers)


def test_prune_load_and_eval_agree_with_report(e2e: tuple[Path, Result], tiny_folder: Path) -> None:
    out, res = e2e
    assert res.code == 0, res.err
    row = read_report(out)
    model = lcp.load(out)
    assert not model.training
    assert macs_of(model) == int(row["macs_pruned"])
    assert lcp.count_params(model) == int(row["params_pruned"])
    ev = lcp_cli("eval", out, "--data", tiny_folder)
    assert ev.code == 0, ev.err
    match = re.search(r"top-1 ([0-9.]+)% on (\d+) test images", ev.out)
    assert match, ev.out
    assert int(match.group(2)) == 27
    assert float(match.group(1)) == pytest.approx(float(row["top1_pruned"]), abs=0.006)


def test_eval_needs_only_the_test_split(e2e: tuple[Path, Result], tiny_folder: Path, tmp_path: Path) -> None:
    out, res = e2e
    assert res.code == 0, res.err
    shutil.copytree(tiny_folder / "test", tmp_path / "only" / "test")
    whole, only = lcp_cli("eval", out, "--data", tiny_folder), lcp_cli("eval", out, "--data", tmp_path / "only")
    assert only.code == 0, only.err
    assert only.out.split(": ", 1)[1] == whole.out.split(": ", 1)[1]  # the same top-1 on the same 27 images
    (tmp_path / "only" / "test").rename(tmp_path / "only" / "elsewhere")
    assert_one_line_error(lcp_cli("eval", out, "--data", tmp_path / "only"), "no test/ or val/ folder")


@pytest.mark.parametrize(
    "extra",
    [("--method", "uniform"), ("--method", "random"), ("--round-to", "4"), ("--round-to", "auto")],
    ids=["uniform", "random", "round-to-4", "round-to-auto"],
)
def test_prune_methods_and_round_to(
    extra: tuple[str, ...], tiny_folder: Path, resnet20_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if extra[-1] == "auto":  # a stand-in clock on which widths off a multiple of 4 run slower: auto must choose 4
        from lcp.cut import latency as timing

        monkeypatch.setattr(
            timing, "time_layer", lambda m, n_in, n_out, dw, s, **kw: 0.01 * n_out * (1 + (n_out % 4 > 0))
        )
    out = tmp_path / "out"
    res = lcp_cli(*tiny_args(tiny_folder, resnet20_ckpt, out, *extra))
    assert res.code == 0, res.err
    row = read_report(out)
    assert 0.4 < float(row["macs_ratio"]) <= 0.5
    assert macs_of(lcp.load(out)) == int(row["macs_pruned"])
    if extra[0] == "--method":
        assert row["method"] == extra[1]
    else:
        step = int(row["round_to"])  # auto: what it measured (reported even when it is 1, and logged)
        assert step == (4 if extra[1] == "auto" else int(extra[1]))
        if extra[1] == "auto":
            assert f"--round-to auto chose {step}" in res.out + res.err
        layers = read_csv(out / "layers.csv")
        widths = [(int(r["channels_before"]), int(r["channels_after"])) for r in layers]
        assert any(a < b for b, a in widths)
        bad = [(b, a) for b, a in widths if a != b and a % step]
        assert not bad, f"widths not in multiples of {step}: {bad}"


def test_train_writes_weights_that_prune_loads(tiny_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "train"
    args = [
        "train",
        "--model",
        "resnet20",
        "--data",
        tiny_folder,
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--holdout",
        "9",
        "--out",
        out,
        "--no-progress",
    ]
    res = lcp_cli(*args)
    assert res.code == 0, res.err
    row = read_report(out)
    assert row["model"] == "resnet20" and row["epochs"] == "2" and 0 <= float(row["top1"]) <= 100
    assert int(row["train_images"]) == 3 * 24 - 9  # the held-out images are not trained on
    assert len(read_csv(out / "history.csv")) == 2
    assert not (out / "training.safetensors").exists()
    # --resume of the finished run reads it back: nothing is trained or written again
    before = snapshot(out)
    again = lcp_cli(*args, "--resume")
    assert again.code == 0 and "finished in an earlier attempt" in again.out, again.err
    assert_unchanged(out, before)
    # the weights are what the report measured: lcp prune starts from them with the same baseline accuracy
    pruned = tmp_path / "pruned"
    res = lcp_cli(
        "prune",
        "--model",
        "resnet20",
        "--data",
        tiny_folder,
        "--checkpoint",
        out / "model.safetensors",
        "--method",
        "global",
        "--finetune-epochs",
        "0",
        "--holdout",
        "9",
        "--out",
        pruned,
        "--no-progress",
    )
    assert res.code == 0, res.err
    assert float(read_report(pruned)["top1_base"]) == pytest.approx(float(row["top1"]), abs=0.01)
    # same signature: a rerun without --resume or --overwrite into another run's folder is refused
    assert_one_line_error(
        lcp_cli(*args[:-3], "--epochs", "3", "--out", out, "--no-progress"),
        "holds another run (model=resnet20, epochs=2)",
        "--overwrite",
    )
    assert_one_line_error(
        lcp_cli(
            "train",
            "--model",
            "resnet20",
            "--data",
            tiny_folder,
            "--epochs",
            "0",
            "--holdout",
            "9",
            "--out",
            tmp_path / "t0",
        ),
        "--epochs must be at least 1, got 0",
    )


def test_recipe_sets_options_and_flags_override(tiny_folder: Path, resnet20_ckpt: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "model": "resnet20",
                "budget": 0.7,
                "method": "uniform",
                "finetune_epochs": 0,
                "holdout": 9,
                "batch_size": 16,
                "recal-batches": 2,
                "progress": False,
                "seed": 3,
            }
        )
    )
    common = ["--data", tiny_folder, "--checkpoint", resnet20_ckpt]
    res = lcp_cli("prune", "--recipe", recipe, *common, "--out", tmp_path / "a")
    assert res.code == 0, res.err
    row = read_report(tmp_path / "a")
    assert (row["method"], row["budget"], row["seed"], row["finetune_epochs"]) == ("uniform", "0.7", "3", "0")
    assert 0.65 < float(row["macs_ratio"]) <= 0.7

    res = lcp_cli(
        "prune", "--recipe", recipe, *common, "--budget", "0.5", "--method", "random", "--out", tmp_path / "b"
    )
    assert res.code == 0, res.err
    row = read_report(tmp_path / "b")
    assert (row["method"], row["budget"], row["seed"]) == ("random", "0.5", "3")  # flags win, the rest stays
    assert 0.4 < float(row["macs_ratio"]) <= 0.5


def test_recipe_accepts_no_progress_key(tiny_folder: Path, resnet20_ckpt: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model: resnet20\nfinetune_epochs: 0\nholdout: 9\nrecal_batches: 2\nno_progress: true\n")
    res = lcp_cli(
        "prune",
        "--recipe",
        recipe,
        "--data",
        tiny_folder,
        "--checkpoint",
        resnet20_ckpt,
        "--method",
        "global",
        "--out",
        tmp_path / "out",
    )
    assert res.code == 0, res.err


# ---------------------------------------------------------------------------------------------- errors


@dataclass
class Ctx:
    tiny: Path
    ckpt: Path
    tmp: Path
    out: Path
    save_state_dict: Callable[..., Path]

    def args(
        self, *extra: object, data: Path | str | None = None, ckpt: Path | str | None = None, out: Path | None = None
    ) -> list[str]:
        return tiny_args(
            data if data is not None else self.tiny,
            ckpt if ckpt is not None else self.ckpt,
            out if out is not None else self.out,
            *extra,
        )


def _two_class_folder(c: Ctx) -> Path:
    root = c.tmp / "two"
    for split in ("train", "test"):
        for cls in ("class0", "class1"):
            shutil.copytree(c.tiny / split / cls, root / split / cls)
    return root


def _evil_pickle(c: Ctx, kind: str) -> Path:
    return evil_pickle(c.tmp / f"evil_{kind}.pt", c.tmp / "MARKER", kind, payload=lambda e: {"conv1.weight": e})


def _bytes_file(c: Ctx, name: str, data: bytes) -> Path:
    path = c.tmp / name
    path.write_bytes(data)
    return path


def _recipe(c: Ctx, text: str) -> Path:
    return _bytes_file(c, "recipe.yaml", text.encode())


def _resnet56_ckpt(c: Ctx) -> Path:
    return c.save_state_dict("resnet56", 3, c.tmp / "resnet56.pt")


def _spec_folder(c: Ctx, drop: tuple[str, ...] = (), **changes: object) -> Path:
    """A folder holding only a channels.json of resnet20 (unpruned), with ``changes`` and without ``drop``."""
    spec = {"model": "resnet20", "num_classes": 3, "input_size": [3, 32, 32], "removed_units": [], **changes}
    folder = c.tmp / "damaged"
    folder.mkdir()
    (folder / "channels.json").write_text(json.dumps({k: v for k, v in spec.items() if k not in drop}))
    return folder


def _empty_splits(c: Ctx) -> Path:
    root = c.tmp / "nosplits"
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    return root


# id -> (argv builder, substrings the message must contain (case-insensitive))
ERROR_CASES = {
    "unknown-model": (lambda c: c.args("--model", "resnet5"), ["unknown model", "did you mean", "resnet"]),
    "budget-0": (lambda c: c.args("--budget", "0"), ["budget must be in (0, 1]", "got 0"]),
    "budget-1.5": (lambda c: c.args("--budget", "1.5"), ["budget must be in (0, 1]", "got 1.5"]),
    "budget--1": (lambda c: c.args("--budget", "-1"), ["budget must be in (0, 1]", "got -1"]),
    "budget-abc": (lambda c: c.args("--budget", "abc"), ["budget must be a number", "abc"]),
    "budget-nan": (lambda c: c.args("--budget", "nan"), ["budget must be in (0, 1]", "got nan"]),
    "budget-unreachable": (lambda c: c.args("--budget", "0.001"), ["cannot be met", "--budget"]),
    "budget-and-budgets": (lambda c: c.args("--budget", "0.9", "--budgets", "0.5"), ["--budget and --budgets"]),
    "unknown-method": (lambda c: c.args("--method", "magic"), ["method", "magic"]),
    "unknown-importance": (lambda c: c.args("--importance", "magic"), ["importance", "magic"]),
    "unknown-optimizer": (
        lambda c: c.args("--method", "lcp", "--optimizer", "magic", "--candidates", "2"),
        ["optimizer", "magic"],
    ),
    "missing-data": (lambda c: c.args(data=c.tmp / "nowhere"), ["nowhere", "does not exist"]),
    "empty-data": (lambda c: c.args(data=c.tmp / "empty"), ["empty has no train/ folder"]),
    "data-without-classes": (lambda c: c.args(data=_empty_splits(c)), ["has no class subfolders"]),
    "class-count-mismatch": (
        lambda c: c.args(data=_two_class_folder(c)),
        ["does not fit", "linear.weight [3, 64] vs [2, 64]"],
    ),
    "other-architecture": (lambda c: c.args(ckpt=_resnet56_ckpt(c)), ["does not fit resnet20"]),
    "truncated-checkpoint": (lambda c: c.args(ckpt=_bytes_file(c, "cut.pt", c.ckpt.read_bytes()[:20000])), ["corrupt"]),
    "text-checkpoint": (
        lambda c: c.args(ckpt=_bytes_file(c, "notes.pt", b"these are not weights\n" * 10)),
        ["not a readable"],
    ),
    "missing-checkpoint": (lambda c: c.args(ckpt=c.tmp / "nothing.pt"), ["does not exist"]),
    "evil-pickle-zip": (lambda c: c.args(ckpt=_evil_pickle(c, "zip")), ["refused"]),
    "evil-pickle-legacy": (lambda c: c.args(ckpt=_evil_pickle(c, "legacy")), ["refused"]),
    "evil-pickle-plain-p2": (lambda c: c.args(ckpt=_evil_pickle(c, "plain-p2")), ["refused"]),
    "evil-pickle-plain": (lambda c: c.args(ckpt=_evil_pickle(c, "plain")), ["not a readable"]),
    "out-under-a-file": (lambda c: c.args(out=c.tmp / "afile" / "sub"), ["cannot write", "afile"]),
    "out-is-a-file": (lambda c: c.args(out=c.tmp / "afile"), ["afile", "is a file"]),
    "transforms-not-json": (
        lambda c: c.args("--method", "lcp", "--transforms", _bytes_file(c, "t.json", b"{oops")),
        ["transforms", "not valid json"],
    ),
    "transforms-wrong-shape": (
        lambda c: c.args("--method", "lcp", "--transforms", _bytes_file(c, "t.json", b'{"groups": [{"group": "x"}]}')),
        ["transforms file is not lcp transforms json"],
    ),
    "transforms-other-model": (
        lambda c: c.args(
            "--method",
            "lcp",
            "--transforms",
            _bytes_file(c, "t.json", b'{"groups": [{"group": "x", "alpha": 1, "kappa": 0}]}'),
        ),
        ["transforms file does not fit this model"],
    ),
    "transforms-missing": (lambda c: c.args("--method", "lcp", "--transforms", c.tmp / "none.json"), ["not found"]),
    "transforms-without-lcp": (  # global would cut with identity compensation and ignore the file
        lambda c: c.args("--method", "global", "--transforms", c.tmp / "none.json"),
        ["--transforms is an option of method lcp", "method global would ignore it"],
    ),
    "search-option-without-search": (
        lambda c: c.args("--method", "uniform", "--candidates", "10"),
        ["--candidates is an option of method lcp", "method uniform would ignore it"],
    ),
    "agent-option-with-lcp": (
        lambda c: c.args("--method", "lcp", "--episodes", "10"),
        ["--episodes is an option of method lfgcl, amc, ads, lwp", "method lcp would ignore it"],
    ),
    "resume-and-overwrite": (lambda c: c.args("--resume", "--overwrite"), ["contradict"]),
    "recipe-missing": (
        lambda c: ["prune", "--recipe", str(c.tmp / "none.yaml"), "--out", str(c.out)],
        ["cannot read recipe"],
    ),
    "recipe-bad-yaml": (lambda c: c.args("--recipe", _recipe(c, "budget: [0.5\n")), ["not valid yaml"]),
    "recipe-unknown-key": (lambda c: c.args("--recipe", _recipe(c, "budgett: 0.5\n")), ["unknown options", "budgett"]),
    "recipe-bad-budget": (
        lambda c: ["prune", "--recipe", str(_recipe(c, "budget: 2\n")), "--out", str(c.out)],
        ["budget must be in (0, 1]", "got 2"],
    ),
    "eval-no-model": (lambda c: ["eval", str(c.out)], ["holds no pruned model"]),
    "eval-missing-folder": (lambda c: ["eval", str(c.tmp / "nowhere")], ["holds no pruned model"]),
    "budgets-twice": (lambda c: c.args("--budgets", "0.5,0.5"), ["names a budget twice"]),
    # options a method would ignore (uniform empties no group; random does not rank by time)
    "depth-with-uniform": (lambda c: c.args("--method", "uniform", "--depth"), ["uniform would ignore --depth"]),
    "time-aware-with-random": (
        lambda c: c.args("--method", "random", "--budget-type", "latency", "--time-aware"),
        ["random would ignore --time-aware"],
    ),
    # nonsense numbers for bench and export (tracebacks, or rows of 0 images/s, before)
    "bench-repeats-0": (lambda c: ["bench", "--model", "resnet20", "--repeats", "0"], ["--repeats", "at least 1"]),
    "bench-batch-negative": (lambda c: ["bench", "--model", "resnet20", "--batch", "-1"], ["--batch", "at least 1"]),
    "bench-out-folder": (lambda c: ["bench", "--model", "resnet20", "--out", str(c.tmp / "empty")], ["is a folder"]),
    "export-atol-negative": (lambda c: ["export", str(c.out), "--atol", "-1"], ["--atol", "at least 0"]),
    "export-atol-nan": (lambda c: ["export", str(c.out), "--atol", "nan"], ["--atol", "finite"]),
    # 0.5 and 0.5000001 passed the check but shared the folder budget_0.5: the second was never pruned
    "budgets-twice-in-folder-names": (lambda c: c.args("--budgets", "0.5,0.5000001"), ["names a budget twice"]),
    # --out inside a file: a FileExistsError traceback, after the timings or the export
    "bench-out-in-a-file": (
        lambda c: ["bench", "--model", "resnet20", "--out", str(c.tmp / "afile" / "b.csv")],
        ["--out", "afile is a file"],
    ),
    "export-out-in-a-file": (
        lambda c: ["export", str(c.out), "--out", str(c.tmp / "afile" / "m.onnx")],
        ["--out", "afile is a file"],
    ),
    # channels.json fields lcp bench used unchecked (TypeError, KeyError tracebacks)
    "bench-spec-model-kwargs": (lambda c: ["bench", str(_spec_folder(c, model_kwargs=[1]))], ["model_kwargs"]),
    "bench-spec-without-model": (lambda c: ["bench", str(_spec_folder(c, drop=("model",)))], ["has no model"]),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_error_is_one_line_and_touches_nothing(
    case: str, tiny_folder: Path, resnet20_ckpt: Path, state_dict_saver: Callable[..., Path], tmp_path: Path
) -> None:
    build, expected = ERROR_CASES[case]
    c = Ctx(tiny_folder, resnet20_ckpt, tmp_path, tmp_path / "out", state_dict_saver)
    (tmp_path / "empty").mkdir()
    (tmp_path / "afile").write_text("a regular file\n")
    c.out.mkdir()
    (c.out / "notes.txt").write_text("the user's own notes\n")
    (c.out / "keep").mkdir()
    (c.out / "keep" / "data.bin").write_bytes(os.urandom(64))
    argv = build(c)
    before_out, before_file = snapshot(c.out), (tmp_path / "afile").read_bytes()
    res = lcp_cli(*argv)
    assert_one_line_error(res, *expected)
    assert_unchanged(c.out, before_out)
    assert (tmp_path / "afile").read_bytes() == before_file
    assert not (tmp_path / "MARKER").exists(), "a pickled checkpoint ran code"


def test_an_output_folder_a_failed_run_created_is_removed(tiny_folder: Path, resnet20_ckpt: Path, tmp_path: Path):
    out = tmp_path / "new" / "run"
    res = lcp_cli(*tiny_args(tiny_folder, resnet20_ckpt, out, "--data", tmp_path / "nowhere", finetune=0))
    assert_one_line_error(res, "does not exist")
    assert not out.exists()  # not even the lock file is left behind
    # lcp train likewise; in a folder that exists, no run.json is left to refuse the corrected command
    res = lcp_cli("train", "--model", "resnet20", "--data", tmp_path / "nowhere", "--out", out)
    assert_one_line_error(res, "does not exist")
    assert not out.exists()
    out.mkdir(parents=True)
    res = lcp_cli("train", "--model", "resnet20", "--data", tmp_path / "nowhere", "--out", out)
    assert_one_line_error(res, "does not exist")
    assert {p.name for p in out.iterdir()} <= {".lcp.lock"}


@pytest.mark.parametrize("case", ["evil-pickle-zip", "unknown-model"])
def test_error_in_a_real_process_is_one_line(
    case: str, tiny_folder: Path, resnet20_ckpt: Path, state_dict_saver: Callable[..., Path], tmp_path: Path
) -> None:
    c = Ctx(tiny_folder, resnet20_ckpt, tmp_path, tmp_path / "out", state_dict_saver)
    build, expected = ERROR_CASES[case]
    done = subprocess.run(
        [sys.executable, "-m", "lcp.cli", *build(c)],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        cwd=tmp_path,
        timeout=300,
    )
    assert_one_line_error(Result(done.returncode, done.stdout, done.stderr), *expected)
    assert not (tmp_path / "MARKER").exists()


def test_unreachable_budget_suggestion_works(tiny_folder: Path, resnet20_ckpt: Path, tmp_path: Path) -> None:
    res = lcp_cli(*tiny_args(tiny_folder, resnet20_ckpt, tmp_path / "a", "--budget", "0.001"))
    assert_one_line_error(res, "cannot be met")
    suggested = re.search(r"--budget ([0-9.]+)", res.err)
    assert suggested, res.err
    res = lcp_cli(*tiny_args(tiny_folder, resnet20_ckpt, tmp_path / "b", "--budget", suggested.group(1)))
    assert res.code == 0, res.err
    assert float(read_report(tmp_path / "b")["macs_ratio"]) <= float(suggested.group(1))


def test_output_folder_of_another_run_is_refused(tiny_folder: Path, resnet20_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert lcp_cli(*tiny_args(tiny_folder, resnet20_ckpt, out)).code == 0
    before = snapshot(out)
    for extra in (("--budget", "0.6"), ("--budget", "0.6", "--resume")):
        res = lcp_cli(*tiny_args(tiny_folder, resnet20_ckpt, out, *extra))
        assert_one_line_error(res, "budget=0.5", "--overwrite")
        assert "--overwrite" in res.err and "budget" in res.err
        assert snapshot(out) == before
    # another held-out split scores the search differently: resuming with it is refused too
    res = lcp_cli(*tiny_args(tiny_folder, resnet20_ckpt, out, "--holdout", "10", "--resume"))
    assert_one_line_error(res, "holdout=9", "holdout=10")
    assert snapshot(out) == before
    # the same run again is accepted, and --overwrite replaces the other run
    res = lcp_cli(*tiny_args(tiny_folder, resnet20_ckpt, out, "--budget", "0.6", "--overwrite"))
    assert res.code == 0, res.err
    assert read_report(out)["budget"] == "0.6"
    assert json.loads((out / "run.json").read_text())["signature"]["budget"] == 0.6


def test_failed_rerun_keeps_finished_outputs(tiny_folder: Path, resnet20_ckpt: Path, tmp_path: Path) -> None:
    """Same command (same signature), but the checkpoint file got truncated since: refused, outputs untouched."""
    ckpt = tmp_path / "weights.pt"
    shutil.copyfile(resnet20_ckpt, ckpt)
    out = tmp_path / "out"
    assert lcp_cli(*tiny_args(tiny_folder, ckpt, out)).code == 0
    before = snapshot(out)
    ckpt.write_bytes(ckpt.read_bytes()[:5000])
    res = lcp_cli(*tiny_args(tiny_folder, ckpt, out))
    assert_one_line_error(res, "corrupt")
    assert "corrupt" in res.err
    assert_unchanged(out, before)
    assert lcp.load(out) is not None


def test_rejected_run_leaves_output_folder_reusable(tiny_folder: Path, resnet20_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert_one_line_error(lcp_cli(*tiny_args(tiny_folder, resnet20_ckpt, out, "--budget", "0.001")), "cannot be met")
    res = lcp_cli(*tiny_args(tiny_folder, resnet20_ckpt, out, "--budget", "0.5"))
    assert res.code == 0, res.err


def test_outputs_get_umask_permissions(e2e: tuple[Path, Result]) -> None:
    out, res = e2e
    assert res.code == 0, res.err
    umask = os.umask(0)
    os.umask(umask)
    modes = {name: (out / name).stat().st_mode & 0o777 for name in OUTPUT_FILES}
    assert modes == {name: 0o666 & ~umask for name in OUTPUT_FILES}


def test_eval_defaults_to_the_pruning_data(
    e2e: tuple[Path, Result], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out, res = e2e
    assert res.code == 0, res.err
    monkeypatch.chdir(tmp_path)  # somewhere without a folder named like the data set
    ev = lcp_cli("eval", out)
    assert ev.code == 0, ev.err
    assert f"{float(read_report(out)['top1_pruned']):.2f}%" in ev.out


def test_recal_batches_zero(
    tiny_folder: Path, resnet20_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--recal-batches 0 runs without recalibrating BatchNorm (and is not an empty split)."""
    import lcp.run.recover

    calls = []
    monkeypatch.setattr(lcp.run.recover, "recalibrate_bn", lambda *a, **k: calls.append(k))
    argv = tiny_args(tiny_folder, resnet20_ckpt, tmp_path / "out")
    argv[argv.index("--recal-batches") + 1] = "0"
    res = lcp_cli(*argv)
    assert res.code == 0, res.err
    assert calls == []
    argv[argv.index("--recal-batches") + 1] = "1"
    argv[argv.index("--out") + 1] = str(tmp_path / "one")
    assert lcp_cli(*argv).code == 0 and len(calls) == 1  # the spy does see a recalibration


# ----------------------------------------------------------------------------------- kill, resume, SIGINT

# `python -m lcp.cli`, except that the process pauses after writing each fine-tuning checkpoint, so a signal
# sent once out/finetune.ckpt exists always lands in the middle of the run (an epoch of the tiny set takes
# well under a second, a race a poller could lose).
PAUSING_CLI = """
import runpy, sys, time
import lcp.training.train
_save = lcp.training.train.save_checkpoint
def save_then_pause(*args, **kwargs):
    _save(*args, **kwargs)
    time.sleep(300)
lcp.training.train.save_checkpoint = save_then_pause
runpy.run_module("lcp.cli", run_name="__main__", alter_sys=True)
"""


def _ft_args(tiny: Path, ckpt: Path, out: Path, *extra: str, progress: bool = False) -> list[str]:
    return tiny_args(tiny, ckpt, out, "--threads", "1", "--lr", "0.05", *extra, finetune=3, progress=progress)


def _start_paused_run(argv: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", PAUSING_CLI, *argv],
        cwd=cwd,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the run ended ({proc.returncode}) before writing {path.name}:\n{out}\n{err}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.communicate()
            pytest.fail(f"no {path.name} after {timeout:.0f} s")
        time.sleep(0.02)


def _run_cli_process(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lcp.cli", *argv],
        cwd=cwd,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_sigkill_then_resume_matches_uninterrupted_run(tiny_folder: Path, resnet20_ckpt: Path, tmp_path: Path) -> None:
    ref, out = tmp_path / "ref", tmp_path / "out"
    done = _run_cli_process(_ft_args(tiny_folder, resnet20_ckpt, ref), tmp_path)
    assert done.returncode == 0, done.stderr

    proc = _start_paused_run(_ft_args(tiny_folder, resnet20_ckpt, out), tmp_path)
    _wait_for(out / "finetune.ckpt", proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert (out / "finetune.ckpt").is_file() and not (out / "report.csv").exists()

    assert "top1_base" in json.loads((out / "state.json").read_text())  # finished stages are recorded

    # with progress on, each finished epoch prints "finetune epoch E/3: loss ..." to stderr
    done = _run_cli_process(_ft_args(tiny_folder, resnet20_ckpt, out, "--resume", progress=True), tmp_path)
    assert done.returncode == 0, done.stderr
    assert "finetune epoch 1/3:" not in done.stderr, "the resumed run trained epoch 1 again"
    assert "finetune epoch 2/3:" in done.stderr and "finetune epoch 3/3:" in done.stderr
    assert not (out / "finetune.ckpt").exists()
    a, b = load_file(ref / "model.safetensors"), load_file(out / "model.safetensors")
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"tensors differ after resume: {different[:5]}"
    assert stable_part(read_report(ref)) == stable_part(read_report(out))


def test_sigint_exits_130_and_suggests_resume(tiny_folder: Path, resnet20_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = _start_paused_run(_ft_args(tiny_folder, resnet20_ckpt, out), tmp_path)
    _wait_for(out / "finetune.ckpt", proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "--resume" in err and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("lcp")
    assert (out / "finetune.ckpt").is_file()  # kept for --resume
    assert (out / ".lcp.lock").read_text() == ""  # the lock was released

    done = _run_cli_process(_ft_args(tiny_folder, resnet20_ckpt, out, "--resume", progress=True), tmp_path)
    assert done.returncode == 0, done.stderr  # the run the message suggests resuming does resume
    assert "finetune epoch 1/3:" not in done.stderr and "finetune epoch 3/3:" in done.stderr, done.stderr
    assert (out / "report.csv").is_file() and not (out / "finetune.ckpt").exists()


@pytest.mark.parametrize(
    ("written", "kept"),
    [
        ((), False),  # failed before any work: the folder is left as it was found
        (("sensitivity.json",), True),  # the search's first measurement
        (("budget_0.5/finetune.ckpt",), True),  # a budget's interrupted fine-tuning (several --budgets)
        (("agent_state_0.5.safetensors",), True),
    ],
)
def test_an_interrupted_fresh_run_keeps_its_record_when_it_wrote_work(tmp_path: Path, written, kept) -> None:
    from lcp.run.config import PruneConfig
    from lcp.run.folder import prepare_out_dir
    from lcp.run.pipeline import _claim

    cfg = PruneConfig(out=str(tmp_path / "out"))
    with pytest.raises(KeyboardInterrupt), _claim(cfg):
        prepare_out_dir(Path(cfg.out), cfg.signature(), resume=False, overwrite=False)
        (Path(cfg.out) / "state.json").write_text("{}")
        for name in written:
            (Path(cfg.out) / name).parent.mkdir(parents=True, exist_ok=True)
            (Path(cfg.out) / name).write_text("x")
        raise KeyboardInterrupt
    assert (Path(cfg.out) / "run.json").exists() == kept and (Path(cfg.out) / "state.json").exists() == kept


def test_a_rerun_without_resume_says_it_starts_an_interrupted_run_over(tmp_path: Path) -> None:
    import dataclasses

    from lcp.run.config import PruneConfig
    from lcp.run.pipeline import _all_written, _open_run

    cfg = PruneConfig(out=str(tmp_path / "out"), budget=0.5)
    finished = functools.partial(_all_written, cfg.all_budgets())
    said: list[str] = []
    _open_run(cfg, said.append, finished)
    assert said == []  # a new folder: nothing to continue
    (tmp_path / "out" / "search_state.json").write_text("{}")
    (tmp_path / "out" / "finetune.ckpt").write_text("x")
    _open_run(cfg, said.append, finished)  # it was silent: the search and fine-tuning started over unannounced
    assert len(said) == 1 and "interrupted run" in said[0] and "search_state.json, finetune.ckpt" in said[0]
    assert "--resume" in said[0]
    said.clear()
    _open_run(dataclasses.replace(cfg, resume=True), said.append, finished)
    assert said == []
    (tmp_path / "out" / "state.json").write_text('{"budget_0.5": {"written": true}}')
    _open_run(cfg, said.append, finished)  # a finished run rerun: nothing lost
    assert said == []


KILLING_CLI = """
import atexit, os, runpy, signal
kill_at = int(os.environ["LCP_KILL_AT"])  # 0: count only
before = os.environ.get("LCP_KILL_BEFORE") == "1"
count = [0]
_replace = os.replace
def replace(src, dst, *a, **k):  # every file lcp writes ends in os.replace: kill around the n-th write
    count[0] += 1
    if count[0] == kill_at and before:
        os.kill(os.getpid(), signal.SIGKILL)
    _replace(src, dst, *a, **k)
    if count[0] == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
os.replace = replace
if os.environ.get("LCP_COUNT_FILE"):
    atexit.register(lambda: open(os.environ["LCP_COUNT_FILE"], "w").write(str(count[0])))
runpy.run_module("lcp.cli", run_name="__main__", alter_sys=True)
"""


def _killing_run(
    argv: list[str], cwd: Path, kill_at: int, before: bool = False, count_file: Path | None = None
) -> subprocess.CompletedProcess:
    env = {**subprocess_env(), "LCP_KILL_AT": str(kill_at), "LCP_KILL_BEFORE": "1" if before else "0"}
    if count_file is not None:
        env["LCP_COUNT_FILE"] = str(count_file)
    return subprocess.run(
        [sys.executable, "-c", KILLING_CLI, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def test_sigkill_at_random_points_of_the_lcp_pipeline_then_resume(
    tiny_folder: Path, resnet20_ckpt: Path, tmp_path: Path
) -> None:
    """Search + cut + fine-tuning, killed (SIGKILL) just before or after randomly chosen file writes, several
    times in a row, then resumed: the last attempt continues (it writes fewer files than a whole run) and the
    result equals an uninterrupted run of the same seed."""
    import random

    def args(out: Path, *extra: str) -> list[str]:
        return tiny_args(
            tiny_folder,
            resnet20_ckpt,
            out,
            "--method",
            "lcp",
            "--candidates",
            "10",
            "--population",
            "4",
            "--tournament",
            "2",
            "--threads",
            "1",
            "--lr",
            "0.05",
            *extra,
            finetune=2,
        )

    ref, out, count = tmp_path / "ref", tmp_path / "out", tmp_path / "count"
    done = _killing_run(args(ref), tmp_path, 0, count_file=count)
    assert done.returncode == 0, done.stderr
    writes = int(count.read_text())
    assert writes > 15  # search states, checkpoints and outputs

    rng = random.Random(1234)
    kills = 0
    for _ in range(4):
        resume = ("--resume",) if (out / "run.json").exists() else ()
        res = _killing_run(args(out, *resume), tmp_path, rng.randint(1, writes - 5), before=rng.random() < 0.5)
        if res.returncode == 0:
            break
        assert res.returncode == -signal.SIGKILL, res.stderr
        kills += 1
    assert kills >= 2
    assert not (out / "report.csv").exists() or kills < 4
    final = _killing_run(args(out, "--resume"), tmp_path, 0, count_file=tmp_path / "count_final")
    assert final.returncode == 0, final.stderr
    assert int((tmp_path / "count_final").read_text()) < writes  # it continued: a run started over writes as many

    for name in ("transforms.json", "layers.csv"):
        assert (ref / name).read_bytes() == (out / name).read_bytes(), name
    searched = [[(r["candidate"], r["fitness"], r["best"]) for r in read_csv(d / "search.csv")] for d in (ref, out)]
    assert searched[0] == searched[1] and len(searched[0]) == 10  # every candidate once, none lost or repeated
    assert (
        json.loads((ref / "channels.json").read_text())["removed_units"]
        == json.loads((out / "channels.json").read_text())["removed_units"]
    )
    a, b = load_file(ref / "model.safetensors"), load_file(out / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert stable_part(read_report(ref)) == stable_part(read_report(out))
    assert not list(out.glob("*.tmp*")) and not list(out.glob(".*tmp*"))


def test_nan_loss_through_the_cli_is_one_line_and_keeps_the_folder_reusable(
    tiny_folder: Path, resnet20_ckpt: Path, tmp_path: Path
) -> None:
    out = tmp_path / "nan"
    res = lcp_cli(*tiny_args(tiny_folder, resnet20_ckpt, out, "--lr", "1e12", "--threads", "1", finetune=2))
    assert_one_line_error(res, "loss became NaN", "--lr")
    assert "NaN" in res.err and "--lr" in res.err
    assert not (out / "report.csv").exists() and not (out / "model.safetensors").exists()
    res = lcp_cli(*tiny_args(tiny_folder, resnet20_ckpt, out, "--lr", "0.05", "--threads", "1", finetune=1))
    assert res.code == 0, res.err


# ------------------------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("method", ["global", "random"])
def test_identical_runs_give_identical_results(
    method: str, tiny_folder: Path, resnet20_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same seed, same everything: the cut, the fine-tuned weights (data order, augmentation) and the report, each
    run with its own empty cache (nothing measured by the first is read back by the second)."""
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        monkeypatch.setenv("LCP_CACHE", str(out.with_name(out.name + "-cache")))
        res = lcp_cli(*tiny_args(tiny_folder, resnet20_ckpt, out, "--method", method, finetune=1))
        assert res.code == 0, res.err
    units = [json.loads((o / "channels.json").read_text())["removed_units"] for o in outs]
    assert units[0] == units[1] and units[0]
    reports = [stable_part(read_report(o)) for o in outs]
    assert reports[0] == reports[1]
    assert (outs[0] / "layers.csv").read_bytes() == (outs[1] / "layers.csv").read_bytes()
    a, b = (load_file(o / "model.safetensors") for o in outs)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_random_method_depends_on_seed(tiny_folder: Path, resnet20_ckpt: Path, tmp_path: Path) -> None:
    units = []
    for seed in ("0", "1"):
        out = tmp_path / seed
        res = lcp_cli(*tiny_args(tiny_folder, resnet20_ckpt, out, "--method", "random", "--seed", seed))
        assert res.code == 0, res.err
        units.append(json.loads((out / "channels.json").read_text())["removed_units"])
    assert units[0] != units[1]


def _corrupt_weights(out: Path) -> None:
    data = (out / "model.safetensors").read_bytes()
    (out / "model.safetensors").write_bytes(data[: len(data) // 3])


def _edit_channels(out: Path, drop: tuple[str, ...] = (), **changes: object) -> None:
    spec = json.loads((out / "channels.json").read_text())
    spec.update(changes)
    for key in drop:
        del spec[key]
    (out / "channels.json").write_text(json.dumps(spec))


EVAL_ERRORS = {
    "truncated-weights": (_corrupt_weights, None, ["corrupt"]),
    "channels-not-json": (lambda o: (o / "channels.json").write_text("{"), None, ["channels.json", "not valid json"]),
    "channels-unknown-units": (lambda o: _edit_channels(o, removed_units=["no.such.unit:0"]), None, ["does not fit"]),
    "channels-incomplete": (lambda o: _edit_channels(o, drop=("removed_units",)), None, ["incomplete"]),
    "weights-of-other-run": (
        lambda o: _edit_channels(o, drop=("widths",), removed_units=[]),
        None,
        ["model.safetensors", "does not fit"],
    ),
    "wrong-class-count": (lambda o: None, "two", ["2 classes", "3"]),
}


EVAL_ERRORS["channels-model-null"] = (lambda o: _edit_channels(o, model=None), None, ["channels.json"])


@pytest.mark.parametrize("case", list(EVAL_ERRORS))
def test_eval_errors(case: str, e2e: tuple[Path, Result], tiny_folder: Path, tmp_path: Path) -> None:
    src, res = e2e
    assert res.code == 0, res.err
    mutate, data, expected = EVAL_ERRORS[case]
    out = tmp_path / "run"
    shutil.copytree(src, out)
    mutate(out)
    if data == "two":
        data = tmp_path / "two"
        for split in ("train", "test"):
            for cls in ("class0", "class1"):
                shutil.copytree(tiny_folder / split / cls, data / split / cls)
    before = snapshot(out)
    res = lcp_cli("eval", out, "--data", data or tiny_folder)
    assert_one_line_error(res, *expected)
    assert_unchanged(out, before)


def test_overwrite_with_bad_input_keeps_the_finished_run(
    tiny_folder: Path, resnet20_ckpt: Path, state_dict_saver: Callable[..., Path], tmp_path: Path
) -> None:
    """--overwrite removed the old outputs before the new run had loaded its model: a wrong checkpoint then left
    the folder with the failed run's run.json only."""
    out = tmp_path / "out"
    assert lcp_cli(*tiny_args(tiny_folder, resnet20_ckpt, out)).code == 0
    before = snapshot(out)
    other = state_dict_saver("resnet56", 3, tmp_path / "r56.pt")
    res = lcp_cli(*tiny_args(tiny_folder, other, out, "--overwrite", "--budget", "0.4"))
    assert_one_line_error(res, "does not fit")
    assert_unchanged(out, before)
    res = lcp_cli(*tiny_args(tiny_folder, resnet20_ckpt, out, "--overwrite", "--ignore", "nomatch*"))
    assert_one_line_error(res, "nomatch")
    assert_unchanged(out, before)


def test_eval_uses_the_input_size_the_model_was_pruned_at(
    tiny_folder: Path, resnet20_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """lcp eval read the model's default size (32 px) for a network pruned at 16 px."""
    import lcp.cli

    out = tmp_path / "out"
    assert lcp_cli(*tiny_args(tiny_folder, resnet20_ckpt, out, "--input-size", "3", "16", "16")).code == 0
    sizes, load = [], lcp.cli.load_data
    monkeypatch.setattr(lcp.cli, "load_data", lambda *a, **k: sizes.append(k["input_size"]) or load(*a, **k))
    res = lcp_cli("eval", out, "--data", tiny_folder)
    assert res.code == 0, res.err
    assert sizes == [(3, 16, 16)]
    top1 = float(re.search(r"top-1 (\S+)%", res.out).group(1))
    assert top1 == pytest.approx(float(read_report(out)["top1_pruned"]), abs=0.01)


def test_a_resumed_budgets_run_skips_the_budgets_it_finished(tiny_folder: Path, resnet20_ckpt: Path, tmp_path: Path):
    """--resume of a --budgets run cut and fine-tuned every finished budget again (14 minutes each on MobileNetV2)."""
    out = tmp_path / "out"
    args = tiny_args(tiny_folder, resnet20_ckpt, out, "--budgets", "0.7,0.5", finetune=1)
    assert lcp_cli(*args).code == 0
    before = snapshot(out)
    res = lcp_cli(*args, "--resume")
    assert res.code == 0, res.err
    assert (res.out + res.err).count("finished in an earlier attempt") == 2
    after = snapshot(out)
    assert {k: v for k, v in after.items() if "budget_" in k} == {k: v for k, v in before.items() if "budget_" in k}


def test_a_budget_flag_replaces_the_recipes_other_budget_option(tmp_path: Path) -> None:
    """--budgets over a recipe's budget (or --budget over its budgets) is what the user asked for; both in one
    recipe is refused. (An unset flag is not in the namespace: the options' default is argparse.SUPPRESS.)"""
    import argparse

    from lcp.cli import _given
    from lcp.errors import LcpError
    from lcp.run.config import PruneConfig

    recipe = tmp_path / "r.yaml"
    recipe.write_text("budget: 0.3\n")
    given = _given(argparse.Namespace(recipe=str(recipe), budgets=[0.7, 0.5]), PruneConfig)
    assert given["budgets"] == [0.7, 0.5] and "budget" not in given
    recipe.write_text("budgets: [0.7, 0.5]\n")
    assert _given(argparse.Namespace(recipe=str(recipe), budget=0.4), PruneConfig)["budget"] == 0.4
    assert "budgets" not in _given(argparse.Namespace(recipe=str(recipe), budget=0.4), PruneConfig)
    recipe.write_text("budget: 0.3\nbudgets: [0.7, 0.5]\n")
    with pytest.raises(LcpError, match="sets both budget and budgets"):
        _given(argparse.Namespace(recipe=str(recipe)), PruneConfig)


@pytest.mark.parametrize("both", [False, True], ids=["stdout-buffered", "stdout-and-stderr-unbuffered"])
def test_a_reader_that_stops_early_does_not_lose_the_run(
    both: bool, tiny_folder: Path, resnet20_ckpt: Path, tmp_path: Path
) -> None:
    """lcp prune ... | head (and 2>&1 | head): the reader is gone before the run prints anything; the run goes on,
    exits 0 and keeps its outputs, whether its output is flushed line by line or only at exit."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "lcp.cli", *[str(a) for a in tiny_args(tiny_folder, resnet20_ckpt, out)]]
    env = subprocess_env()
    env.pop("PYTHONUNBUFFERED", None)
    if both:
        env["PYTHONUNBUFFERED"] = "1"
    stderr = subprocess.STDOUT if both else subprocess.PIPE
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, env=env, cwd=REPO)
    proc.stdout.close()  # every print, and the flush at exit, hits a closed pipe
    err = b"" if both else proc.stderr.read()
    assert proc.wait(timeout=300) == 0, err.decode()[-2000:]
    assert b"Traceback" not in err and (out / "model.safetensors").is_file() and (out / "report.csv").is_file()


def test_a_resume_with_another_recalibration_is_refused(tiny_folder: Path, resnet20_ckpt: Path, tmp_path: Path):
    """--recal-batches changes the result (the cut's accuracy, where fine-tuning starts): a resume with another
    value is another run, refused, not a mix of the two; at its default it stays out of the signature."""
    out = tmp_path / "out"
    args = tiny_args(tiny_folder, resnet20_ckpt, out)
    assert lcp_cli(*args).code == 0
    assert "recal_batches" in json.loads((out / "run.json").read_text())["signature"]  # tiny_args sets 2
    other = list(args)
    other[other.index("--recal-batches") + 1] = "1"
    before = snapshot(out)
    assert_one_line_error(lcp_cli(*other, "--resume"), "cannot resume", "recal_batches=2, not recal_batches=1")
    assert_unchanged(out, before)


def test_a_timed_cut_is_signed_with_where_and_how_it_was_timed() -> None:
    """--resume with another device, latency batch or thread count must not reuse timings made for the old."""
    from lcp.run.config import PruneConfig

    base = dict(model="resnet20", budget=[0.5], out="runs/x")
    for timed in (dict(budget_type="latency"), dict(round_to="auto")):
        a = PruneConfig(**base, **timed).signature()
        assert a != PruneConfig(**base, **timed, latency_batch=8).signature()
        assert a != PruneConfig(**base, **timed, threads=2).signature()
    plain = PruneConfig(**base).signature()
    assert plain == PruneConfig(**base, latency_batch=8, threads=2).signature()  # a MACs cut times nothing
