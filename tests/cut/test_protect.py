"""Protected layers (``ignore``) and caps on removal (``max_removal``) in the API, the CLI and recipes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import lcp
from lcp.cut.ranking import plan, plan_ratios
from lcp.cut.transforms import Transforms
from lcp.engine.cost import CostModel
from lcp.models import store
from tests.helpers import assert_one_line_error, lcp_cli

X = torch.zeros(1, 3, 32, 32)


@pytest.fixture(scope="module")
def resnet20() -> torch.nn.Module:
    torch.manual_seed(0)
    return lcp.create_model("resnet20").eval()


def _removed_share(result: lcp.PruneResult, glob: str) -> float:
    """The largest fraction of units removed from a group that a module matching ``glob`` writes."""
    import fnmatch

    removed = result.plan.removed
    shares = [
        removed[np.asarray(g.units)].mean()
        for g in result.graph.groups
        if any(fnmatch.fnmatchcase(n, glob) for n in g.producers)
    ]
    assert shares, glob
    return float(max(shares))


def test_ignore_keeps_the_channels_of_the_matching_layers(resnet20) -> None:
    before = store.widths(resnet20)
    plain = lcp.prune(resnet20, X, budget=0.5, method="global")
    kept = lcp.prune(resnet20, X, budget=0.5, method="global", ignore=["layer1.*"])
    after_plain, after_kept = store.widths(plain.model), store.widths(kept.model)
    layer1 = [n for n in before if n.startswith("layer1.") and n.endswith(("conv1", "conv2"))]
    assert layer1 and all(after_kept[n][0] == before[n][0] for n in layer1)
    assert any(after_plain[n][0] < before[n][0] for n in layer1)  # without ignore, layer1 is cut
    assert kept.verification.ok and kept.plan.macs_ratio <= 0.5


@pytest.mark.parametrize("method", ["global", "uniform", "random"])
def test_a_cap_is_respected(resnet20, method: str) -> None:
    free = lcp.prune(resnet20, X, budget=0.3, method=method, round_to=1)
    assert _removed_share(free, "layer3.*") > 0.3  # a deep cut takes more than the cap from layer3
    capped = lcp.prune(resnet20, X, budget=0.3, method=method, max_removal={"layer3.*": 0.3}, round_to=1)
    assert _removed_share(capped, "layer3.*") <= 0.3
    assert capped.verification.ok and capped.plan.macs_ratio <= 0.3


def test_caps_reach_every_walk(resnet20) -> None:
    """The searches and the agents walk with the graph's floors: a capped graph caps them too."""
    graph = lcp.build_graph(resnet20, X)
    graph.limit_removal({"layer2.*": 0.1})
    cost = CostModel(graph)
    rng = np.random.default_rng(0)
    scores = np.nan_to_num(rng.random(len(graph.units)))
    n = len(graph.groups)
    # a compensation that makes layer2's scores the lowest of all, and ratios that ask to cut it to 0.1
    layer2 = np.array([any(p.startswith("layer2.") for p in g.producers) for g in graph.groups])
    transforms = Transforms(groups=[g.name for g in graph.groups], alpha=np.ones(n), kappa=np.where(layer2, -10.0, 0.0))
    plans = {m: plan(graph, cost, scores, budget=0.4, method=m, seed=3) for m in ("random", "global", "uniform")}
    plans["lcp"] = plan(graph, cost, scores, budget=0.4, method="lcp", transforms=transforms)
    plans["ratios"] = plan_ratios(graph, cost, scores, np.where(layer2, 0.1, 1.0), budget=0.6)  # the agents' walk
    assert layer2.any()
    for name, p in plans.items():
        assert p.macs_ratio <= 0.6, name
        for g in np.asarray(graph.groups)[layer2]:
            assert p.removed[np.asarray(g.units)].mean() <= 0.1 + 1e-9, (name, g.name)


@pytest.mark.parametrize(
    "kw, phrase",
    [
        ({"ignore": ["nope.*"]}, "ignore 'nope.*' matches no conv or linear module of CifarResNet"),
        ({"max_removal": {"nope*": 0.3}}, "max_removal 'nope*' matches no conv or linear module"),
        ({"max_removal": {"layer1.*": 1.5}}, "max_removal needs a fraction in [0, 1]"),
    ],
)
def test_bad_globs_and_fractions_are_refused(resnet20, kw: dict, phrase: str) -> None:
    with pytest.raises(lcp.LcpError) as e:
        lcp.prune(resnet20, X, budget=0.5, **kw)
    assert phrase in str(e.value) and "\n" not in str(e.value)
    assert " --" not in f" {e.value}"  # the Python caller's words (keyword arguments), not the command line's


def test_an_unreachable_budget_names_the_keyword_argument(resnet20) -> None:
    with pytest.raises(lcp.UnreachableBudget) as e:
        lcp.prune(resnet20, X, budget=0.001)
    assert str(e.value).endswith("pass budget=0.065 or more") and e.value.lowest == pytest.approx(0.0645, abs=1e-4)


def _cli(tiny_folder: Path, ckpt: Path, out: Path, *extra: str):
    return lcp_cli(
        "prune",
        "--model",
        "resnet20",
        "--data",
        tiny_folder,
        "--checkpoint",
        ckpt,
        "--method",
        "global",
        "--budget",
        "0.8",  # with layer1 kept whole and aligned widths, 0.76 is the lowest reachable
        "--finetune-epochs",
        "0",
        "--holdout",
        "9",
        "--recal-batches",
        "2",
        "--threads",
        "1",
        "--out",
        out,
        "--no-progress",
        *extra,
    )


def test_cli_ignore_and_cap(tiny_folder: Path, resnet20_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "protected"
    res = _cli(tiny_folder, resnet20_ckpt, out, "--ignore", "layer1.*", "--max-removal", "layer3.*=0.2")
    assert res.code == 0, res.err
    spec = json.loads((out / "channels.json").read_text())
    original = store.widths(lcp.create_model("resnet20", num_classes=3))
    for name, w in spec["widths"].items():
        if name.startswith("layer1.") and name.endswith(("conv1", "conv2")):
            assert w[0] == original[name][0]
        if name.startswith("layer3.") and name.endswith("conv1"):
            assert w[0] >= 0.8 * original[name][0]
    signature = json.loads((out / "run.json").read_text())["signature"]
    assert signature["ignore"] == ["layer1.*"] and signature["max_removal"] == ["layer3.*=0.2"]


def test_cli_bad_glob_is_one_line_and_writes_nothing(tiny_folder: Path, resnet20_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "bad"
    assert_one_line_error(_cli(tiny_folder, resnet20_ckpt, out, "--ignore", "nope.*"), "--ignore 'nope.*' matches no")
    assert not (out / "report.csv").exists() and not (out / "run.json").exists()
    res = _cli(tiny_folder, resnet20_ckpt, out, "--max-removal", "layer1.*")
    assert_one_line_error(res, "--max-removal must be GLOB=FRACTION")


def test_recipe_takes_ignore_and_caps(tiny_folder: Path, resnet20_ckpt: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("ignore: ['layer1.*']\nmax_removal: ['layer3.*=0.2']\n")
    res = _cli(tiny_folder, resnet20_ckpt, tmp_path / "r", "--recipe", recipe)
    assert res.code == 0, res.err
    widths = json.loads((tmp_path / "r" / "channels.json").read_text())["widths"]
    original = store.widths(lcp.create_model("resnet20", num_classes=3))
    assert all(
        w[0] == original[n][0] for n, w in widths.items() if n.startswith("layer1.") and n.endswith(("conv1", "conv2"))
    )
    assert all(
        w[0] >= 0.8 * original[n][0] for n, w in widths.items() if n.startswith("layer3.") and n.endswith("conv1")
    )
    signature = json.loads((tmp_path / "r" / "run.json").read_text())["signature"]
    assert signature["ignore"] == ["layer1.*"] and signature["max_removal"] == ["layer3.*=0.2"]
    recipe.write_text("ignore: layer1\n")  # a string, not a list
    assert_one_line_error(_cli(tiny_folder, resnet20_ckpt, tmp_path / "r2", "--recipe", recipe), "ignore must be")


def test_a_budget_the_caps_make_unreachable_names_the_caps(resnet20) -> None:
    """A cap below one width multiple removes nothing there: the refusal says the caps set the limit."""
    with pytest.raises(lcp.UnreachableBudget) as e:
        lcp.prune(resnet20, X, budget=0.3, max_removal={"layer1.*": 0.2})
    caps = "floors of 10% per group (min_ratio) and the max_removal caps (in whole multiples of round_to)"
    assert caps in str(e.value)
