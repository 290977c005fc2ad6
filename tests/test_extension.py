"""Extension points used from outside the package: a method and an importance criterion registered by a user
run through ``lcp.prune`` and through ``lcp prune`` (the run pipeline, its post-cut stage and outputs)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import lcp
from lcp.cli import main
from tests.helpers import subprocess_env

TOY = "toy-deep-cut"


class DeepCut(lcp.Method):
    """Learns nothing from data: keeps the first half of the groups whole and cuts the second half 5x deeper."""

    name = TOY
    summary = "toy: keep the early layers, cut the late ones"

    def learn(self, ctx: lcp.Context) -> lcp.Learned:
        n = len(ctx.graph.groups)
        ratios = np.array([1.0 if i < n // 2 else 0.2 for i in range(n)])
        return lcp.Learned(ratios=ratios, columns={"toy_groups": n})


class ReversedL2(lcp.Importance):
    """Ranks filters by minus their L2 norm (the strongest go first)."""

    name = "toy-reversed-l2"

    def __call__(self, graph, batches=None):
        return {ri: -s for ri, s in lcp.cut.importance.get_importance("l2")(graph, batches).items()}


@pytest.fixture
def toy_method():
    lcp.register_method(DeepCut)
    yield DeepCut
    lcp.unregister_method(TOY)


@pytest.fixture
def toy_importance():
    lcp.register_importance(ReversedL2)
    yield ReversedL2
    lcp.unregister_importance(ReversedL2.name)


def _keep_fraction(result: lcp.PruneResult) -> np.ndarray:
    removed = result.plan.removed
    return np.array([1 - removed[np.asarray(g.units)].mean() for g in result.graph.groups])


def test_registered_method_through_the_api(toy_method) -> None:
    torch.manual_seed(0)
    model = lcp.create_model("resnet20").eval()
    assert TOY in lcp.method_names()
    res = lcp.prune(model, torch.zeros(1, 3, 32, 32), budget=0.5, method=TOY)
    assert res.plan.method == TOY and res.verification.ok
    assert 0.45 < res.plan.macs_ratio <= 0.5
    keep = _keep_fraction(res)
    half = len(keep) // 2
    assert keep[:half].mean() > keep[half:].mean() + 0.3  # the learned shape reached the cut
    with pytest.raises(lcp.LcpError, match="method must be one of .*toy-deep-cut, got .toy-not-registered."):
        lcp.prune(model, torch.zeros(1, 3, 32, 32), method="toy-not-registered")


def test_registered_method_through_the_command_line(
    toy_method, tiny_folder: Path, resnet20_ckpt: Path, tmp_path: Path
) -> None:
    out = tmp_path / "toy"
    code = main(
        [
            "prune",
            "--model",
            "resnet20",
            "--data",
            str(tiny_folder),
            "--checkpoint",
            str(resnet20_ckpt),
            "--method",
            TOY,
            "--budget",
            "0.6",
            "--finetune-epochs",
            "1",
            "--batch-size",
            "16",
            "--holdout",
            "9",
            "--recal-batches",
            "2",
            "--threads",
            "1",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    row = pd.read_csv(out / "report.csv").iloc[0]
    assert row["method"] == TOY and row["toy_groups"] > 0 and row["macs_ratio"] <= 0.6
    assert np.isfinite(row["top1_pruned"]) and row["finetune_epochs"] == 1  # the shared post-cut stage ran
    assert json.loads((out / "channels.json").read_text())["method"] == TOY
    assert lcp.load(out) is not None


def test_unregistered_method_is_one_line_on_the_command_line(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as e:
        main(["prune", "--method", TOY])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "invalid choice" in err and len(err.splitlines()) == 1


def test_registered_importance_changes_the_ranking(toy_importance) -> None:
    torch.manual_seed(0)
    model = lcp.create_model("resnet20").eval()
    x = torch.zeros(1, 3, 32, 32)
    base = lcp.prune(model, x, budget=0.5, method="global", importance="l2")
    rev = lcp.prune(model, x, budget=0.5, method="global", importance=ReversedL2.name)
    assert rev.verification.ok and rev.plan.macs_ratio <= 0.5
    assert (base.plan.removed != rev.plan.removed).mean() > 0.3


def test_method_choices_and_docs_come_from_the_registry(capsys: pytest.CaptureFixture, toy_method) -> None:
    """``--method`` offers every registered method (a new one too), and docs/methods.md is the generated page of
    the built-in ones."""
    with pytest.raises(SystemExit):
        main(["prune", "--help"])
    help_text = capsys.readouterr().out.replace("\n", " ")
    for name in lcp.method_names():
        assert name in help_text
    lcp.unregister_method(TOY)
    assert main(["methods", "--markdown"]) == 0
    page = capsys.readouterr().out
    assert page == (Path(__file__).resolve().parents[1] / "docs" / "methods.md").read_text()
    assert all(f"`--method {n}`" in page for n in lcp.method_names())
    lcp.register_method(DeepCut)  # the fixture unregisters it


def test_rules_of_an_optional_package_load_when_it_is_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    """``RuleTable.when_imported``: the rules of a package lcp does not import (timm) are registered at the first
    lookup after the package is imported, and a rule registered later still takes precedence."""
    import sys
    import types

    from lcp.engine.rules import RuleTable

    class Gate(torch.nn.Module):
        pass

    table, calls = RuleTable(), []

    def register(t: RuleTable) -> None:
        calls.append(1)
        t.module(Gate, lambda *a: "optional")

    table.when_imported("lcp_test_optional_pkg", register)
    assert table.module_rule(Gate()) is None and calls == []
    monkeypatch.setitem(sys.modules, "lcp_test_optional_pkg", types.ModuleType("lcp_test_optional_pkg"))
    assert table.module_rule(Gate())(None) == "optional" and calls == [1]
    table.module(Gate, lambda *a: "user")
    assert table.module_rule(Gate())(None) == "user" and calls == [1]  # registered once; the later rule wins
    table.remove_module(Gate)
    assert table.module_rule(Gate())(None) == "optional"


PLUGIN = (
    "import numpy as np\n"
    "import lcp\n\n\n"
    "class Plugged(lcp.Method):\n"
    "    name = 'toy-plugged'\n"
    "    summary = 'toy: registered by a module named in LCP_PLUGINS'\n\n"
    "    def learn(self, ctx):\n"
    "        return lcp.Learned(ratios=np.full(len(ctx.graph.groups), 0.5))\n\n\n"
    "lcp.register_method(Plugged)\n"
)


def test_plugins_named_in_lcp_plugins_are_choices_of_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """A user's module named in ``$LCP_PLUGINS`` is imported before the command line is built, so the method it
    registers is a ``--method`` choice of ``lcp prune`` (and listed by ``lcp methods``)."""
    (tmp_path / "lcp_toy_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("LCP_PLUGINS", " lcp_toy_plugin, ")
    try:
        with pytest.raises(SystemExit):
            main(["prune", "--help"])
        assert "toy-plugged" in capsys.readouterr().out.replace("\n", " ")
        assert main(["methods"]) == 0
        assert "toy-plugged" in capsys.readouterr().out
    finally:
        lcp.unregister_method("toy-plugged")
        sys.modules.pop("lcp_toy_plugin", None)
    assert "toy-plugged" not in lcp.method_names()


def test_the_lcp_command_finds_a_plugin_in_the_working_directory(tmp_path: Path) -> None:
    """The console script's own folder is first on its path, not the user's: a plugin beside the user is found."""
    (tmp_path / "lcp_toy_plugin.py").write_text(PLUGIN)
    script = Path(sys.executable).with_name("lcp")
    if not script.exists():
        pytest.skip("no lcp console script beside this Python")
    done = subprocess.run(
        [str(script), "methods"],
        cwd=tmp_path,
        env={**subprocess_env(), "LCP_PLUGINS": "lcp_toy_plugin"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "toy-plugged" in done.stdout


@pytest.mark.parametrize(
    "source",
    [None, "raise RuntimeError('broken\\nsecond line')\n", "raise RuntimeError()\n", "raise SystemExit('usage')\n"],
)
def test_a_plugin_that_cannot_be_imported_is_one_line(
    source: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    if source is not None:
        (tmp_path / "lcp_broken_plugin.py").write_text(source)
        monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("LCP_PLUGINS", "lcp_broken_plugin")
    assert main(["methods"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lcp: error: $LCP_PLUGINS: cannot import 'lcp_broken_plugin'") and len(err.splitlines()) == 1
    expected = {
        None: "ModuleNotFoundError",
        "raise RuntimeError('broken\\nsecond line')\n": "RuntimeError: broken",
        "raise RuntimeError()\n": "RuntimeError: RuntimeError",
        "raise SystemExit('usage')\n": "SystemExit: usage",
    }[source]
    assert expected in err
