"""``lcp prune --structure-from DIR``: a structure found by one run applied to other weights, data and classes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import lcp
from lcp.models.store import widths
from lcp.report import REPORT_COLUMNS
from tests.helpers import (
    OUTPUT_FILES,
    assert_one_line_error,
    lcp_cli,
    make_image_folder,
    read_report,
    save_state_dict,
    snapshot,
    tiny_args,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def source(tiny_folder: Path, resnet20_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A global-ranking run of the 3-class ResNet-20 at 50% of the MACs (no fine-tuning)."""
    out = tmp_path_factory.mktemp("source") / "run"
    res = lcp_cli(*tiny_args(tiny_folder, resnet20_ckpt, out))
    assert res.code == 0, res.err
    return out


@pytest.fixture(scope="module")
def other(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Another task: 2 classes of other images, and a 2-class ResNet-20 with other weights."""
    root = tmp_path_factory.mktemp("other")
    data = make_image_folder(root / "two", classes=2, train_per_class=8, test_per_class=4, seed=1)
    return data, save_state_dict("resnet20", 2, root / "resnet20_two.pt", seed=1)


def transfer_args(
    structure: Path,
    data: Path,
    ckpt: Path,
    out: Path,
    *extra: object,
    model: str = "resnet20",
    size: tuple[int, ...] = (),
) -> list[str]:
    return [
        "prune",
        "--model",
        model,
        "--data",
        data,
        "--checkpoint",
        ckpt,
        "--structure-from",
        structure,
        "--holdout",
        "4",
        "--batch-size",
        "16",
        "--recal-batches",
        "1",
        "--no-progress",
        "--out",
        out,
        *(["--input-size", *size] if size else []),
        *extra,
    ]


def test_structure_transfers_to_another_task(source: Path, other: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "transfer"
    args = transfer_args(source, *other, out, "--finetune-epochs", "1", "--budget", "0.3")
    res = lcp_cli(*args)
    assert res.code == 0, res.err
    assert "verified ok" in res.out
    assert sum("--budget 0.3 is not what the structure keeps" in line for line in res.out.splitlines()) == 1
    for name in OUTPUT_FILES:
        assert (out / name).is_file(), name
    row, before = read_report(out), read_report(source)
    assert list(row)[: len(REPORT_COLUMNS)] == REPORT_COLUMNS
    assert (row["method"], row["importance"], row["budget"]) == ("structure-from", "", "0.5")
    assert float(row["search_s"]) < 2.0  # no search: only the structure's check (a busy machine stretches it)
    assert (row["structure_from"], row["structure_method"]) == (str(source.resolve()), "global")
    assert abs(float(row["macs_ratio"]) - float(before["macs_ratio"])) < 1e-3  # only the classifier is smaller
    spec, src = (json.loads((d / "channels.json").read_text()) for d in (out, source))
    assert spec["removed_units"] == src["removed_units"] and spec["num_classes"] == 2
    assert spec["method"] == "structure-from" and spec["structure_from"] == str(source.resolve())
    pruned, found = lcp.load(out), lcp.load(source)
    w, w0 = widths(pruned), widths(found)
    assert w.pop("linear")[0] == 2 and w0.pop("linear")[0] == 3 and w == w0
    assert pruned(torch.zeros(1, 3, 32, 32)).shape == (1, 2)
    assert lcp.count_macs(pruned, torch.zeros(1, 3, 32, 32)) == int(row["macs_pruned"])
    resumed = lcp_cli(*args, "--resume")  # a finished run is read back
    assert resumed.code == 0, resumed.err
    assert read_report(out)["top1_pruned"] == row["top1_pruned"]
    chained = lcp_cli(*transfer_args(out, *other, tmp_path / "chain", "--finetune-epochs", "0"))
    assert chained.code == 0, chained.err  # a transferred structure transfers again, same source method
    assert read_report(tmp_path / "chain")["structure_method"] == "global"


def test_connection_structure_transfers(tiny_folder: Path, other: tuple[Path, Path], tmp_path: Path) -> None:
    found = tmp_path / "ads"
    ckpt = save_state_dict("densenet40", 3, tmp_path / "d40.pt")
    res = lcp_cli(
        "prune",
        "--model",
        "densenet40",
        "--checkpoint",
        ckpt,
        "--data",
        tiny_folder,
        "--input-size",
        3,
        8,
        8,
        "--method",
        "ads",
        "--episodes",
        1,
        "--budget",
        0.5,
        "--finetune-epochs",
        0,
        "--holdout",
        12,
        "--recal-batches",
        1,
        "--no-progress",
        "--out",
        found,
    )
    assert res.code == 0, res.err
    out = tmp_path / "transfer"
    data = other[0]
    res = lcp_cli(
        *transfer_args(
            found,
            data,
            save_state_dict("densenet40", 2, tmp_path / "d40_two.pt", seed=1),
            out,
            "--finetune-epochs",
            "0",
            model="densenet40",
            size=(3, 8, 8),
        )
    )
    assert res.code == 0, res.err
    row, before = read_report(out), read_report(found)
    assert (row["method"], row["structure_method"]) == ("structure-from", "ads")
    assert row["connections_kept"] == before["connections_kept"] and float(row["verification_error"]) < 1e-6
    assert not (out / "controller.csv").exists()  # no search
    removed = [json.loads((d / "channels.json").read_text())["removed_connections"] for d in (out, found)]
    assert removed[0] == removed[1]
    w, w0 = widths(lcp.load(out)), widths(lcp.load(found))
    assert w.pop("linear")[0] == 2 and w0.pop("linear")[0] == 3 and w == w0


def _edit(source: Path, dest: Path, drop: tuple[str, ...] = (), **changes: object) -> Path:
    shutil.copytree(source, dest)
    spec = json.loads((dest / "channels.json").read_text())
    spec.update(changes)
    for key in drop:
        del spec[key]
    (dest / "channels.json").write_text(json.dumps(spec))
    return dest


# id -> (argv builder from (source, data, ckpt, tmp, out), words the one-line error must contain)
ERRORS = {
    "other-architecture": (
        lambda s, d, c, t, o: transfer_args(s, d, c, o, model="resnet56"),
        ["is of resnet20, not resnet56"],
    ),
    "unknown-unit": (
        lambda s, d, c, t, o: transfer_args(_edit(s, t / "s", removed_units=["fc:out:9"]), d, c, o),
        ["does not fit resnet20", "fc:out:9"],
    ),
    "widths-differ": (
        lambda s, d, c, t, o: transfer_args(_edit(s, t / "s", removed_units=[]), d, c, o),
        ["does not fit resnet20", "widths"],
    ),
    "no-num-classes": (  # a hand-edited channels.json: its classifier width cannot be excused (a KeyError before)
        lambda s, d, c, t, o: transfer_args(_edit(s, t / "s", drop=("num_classes",)), d, c, o),
        ["does not fit resnet20", "widths"],
    ),
    "method": (lambda s, d, c, t, o: transfer_args(s, d, c, o, "--method", "global"), ["drop --method"]),
    "transforms": (
        lambda s, d, c, t, o: transfer_args(s, d, c, o, "--transforms", s / "transforms.json"),
        ["drop --transforms"],
    ),
    "budgets": (lambda s, d, c, t, o: transfer_args(s, d, c, o, "--budgets", "0.5,0.3"), ["drop --budgets"]),
    "no-structure": (lambda s, d, c, t, o: transfer_args(t, d, c, o), ["holds no pruned structure"]),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_mismatch_is_one_line_and_writes_nothing(
    case: str, source: Path, other: tuple[Path, Path], tmp_path: Path
) -> None:
    build, words = ERRORS[case]
    out, before = tmp_path / "out", snapshot(source)
    res = lcp_cli(*build(source, *other, tmp_path, out))
    assert_one_line_error(res, *words)
    for word in words:
        assert word in res.err, res.err  # case-sensitive too
    assert not out.exists() or not [p.name for p in out.iterdir() if not p.name.startswith(".")], sorted(
        p.name for p in out.iterdir()
    )
    assert snapshot(source) == before
