"""The benchmark harness end to end: ``benchmarks/compare.py --quick`` on the tiny fixture data (the channel
methods, the agent methods lfgcl / amc on ResNet-20, the connection methods ads / lwp on DenseNet-40 at 8x8),
resume, refusal of mixed settings, added methods that leave the written rows valid, ``benchmarks/report.py`` on
its CSV, and Torch-Pruning driven to a MACs target."""

from __future__ import annotations

import importlib.util
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from lcp.report import REPORT_COLUMNS
from tests.helpers import REPO, load_script

ROOT = REPO
COMPARE = ROOT / "benchmarks" / "compare.py"
REPORT = ROOT / "benchmarks" / "report.py"
METHODS = ["lcp", "global", "uniform", "random", "lfgcl", "amc", "torch_pruning"]
SEARCHED = {"lcp", "lfgcl", "amc"}  # lcp: one search per seed for both budgets; the agents: one per budget
BUDGETS = [0.5, 0.3]


_module = load_script


def _has_tp() -> bool:
    try:
        import torch_pruning  # noqa: F401
    except Exception:
        return False
    return True


def quick_cmd(recipe: str, data: Path, ckpt: Path, *extra: object) -> list[str]:
    """``compare.py --quick`` of ``recipes/<recipe>`` on the tiny folder and checkpoint, then ``extra``."""
    return [
        sys.executable,
        str(COMPARE),
        "--recipe",
        str(ROOT / "recipes" / recipe),
        "--quick",
        "--data",
        str(data),
        "--checkpoint",
        str(ckpt),
        "--holdout",
        "12",
        "--no-progress",
        *map(str, extra),
    ]


@pytest.fixture(scope="module")
def quick(tiny_folder: Path, resnet20_ckpt: Path, tmp_path_factory: pytest.TempPathFactory):
    """One ``--quick`` run of the ResNet-56 recipe on the tiny folder (ResNet-20, 3 classes): (csv, cmd, output)."""
    tmp = tmp_path_factory.mktemp("bench")
    out = tmp / "results" / "compare_tiny.csv"
    cmd = quick_cmd("bench_resnet56.yaml", tiny_folder, resnet20_ckpt, "--out", out, "--work", tmp / "work")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out, cmd, done.stdout


def test_quick_writes_a_row_per_method_budget_and_seed(quick):
    out, _, log = quick
    df = pd.read_csv(out, dtype={"config": str})
    expected = [
        *REPORT_COLUMNS,
        "latency_base_ms",
        "latency_pruned_ms",
        "speedup",
        "latency64_base_ms",
        "latency64_pruned_ms",
        "speedup64",
        "status",
        "finetune_steps",
        "config",
    ]
    assert [c for c in expected if c not in df.columns] == []
    assert list(df.columns[: len(REPORT_COLUMNS)]) == REPORT_COLUMNS
    assert sorted((m, b) for m, b in zip(df["method"], df["budget"])) == sorted(
        (m, b) for m in METHODS for b in BUDGETS
    )
    assert set(df["seed"]) == {0}
    # one config per method; the agents' settings count only for the agent rows
    configs = df.groupby("method")["config"].unique().map(list).to_dict()
    assert all(len(c) == 1 for c in configs.values())
    assert configs["lfgcl"] == configs["amc"] != configs["lcp"] == configs["global"] == configs["torch_pruning"]
    assert (df["model"] == "resnet20").all() and (df["dataset"] == "tiny").all()
    ours = df[df["method"] != "torch_pruning"]
    assert (ours["status"] == "ok").all(), ours["status"].tolist()
    for _, r in ours.iterrows():
        assert 0.9 * r["budget"] <= r["macs_ratio"] <= r["budget"] + 1e-9
        assert 0 <= r["top1_pruned_noft"] <= 100 and 0 <= r["top1_pruned"] <= 100
        assert r["finetune_steps"] >= 1 and r["finetune_s"] > 0
        assert r["latency_pruned_ms"] > 0 and r["latency64_pruned_ms"] > 0 and r["speedup64"] > 0
    # learn once, prune many: one lcp search serves both rows; the agents search at each budget; the other
    # methods have none
    lcp_rows = ours[ours["method"] == "lcp"]
    assert lcp_rows["search_s"].nunique() == 1 and lcp_rows["search_s"].iloc[0] > 0
    assert (ours.loc[ours["method"].isin(SEARCHED), "search_s"] > 0).all()
    assert (ours.loc[~ours["method"].isin(SEARCHED), "search_s"] == 0).all()
    agents = {
        f"{f.parent.name.split('-')[0]}@{f.parent.name.rsplit('-at', 1)[1]}": f
        for f in (out.parents[1] / "work").glob("*/*/agent.csv")
    }
    assert sorted(agents) == ["amc@0.3", "amc@0.5", "lfgcl@0.3", "lfgcl@0.5"]  # lcp's own agent (its agent.csv)
    for f in agents.values():  # the quick section's 3 episodes: the two uniform starting cuts, one warm-up
        assert pd.read_csv(f)["phase"].tolist() == ["uniform", "uniform streams whole", "warm-up"]
    # the identical recipe: the same baseline and the same fine-tuning length in every row
    assert df["top1_base"].nunique() == 1 and ours["finetune_steps"].nunique() == 1
    assert not list((out.parents[1] / "work").rglob("finetune-*")), "a written row keeps no fine-tuning checkpoint"
    tp = df[df["method"] == "torch_pruning"]
    for status in tp["status"]:
        if _has_tp():  # on option-A ResNets its cut does not run: the row says so, not a crash of the driver
            assert status == "ok" or status.startswith("error: torch_pruning returned a broken network"), status
        else:
            assert status.startswith("skipped: torch-pruning is not installed"), status
    for _, r in tp[tp["status"] == "ok"].iterrows():
        assert r["macs_ratio"] <= r["budget"] + 1e-9 and r["top1_pruned"] >= 0
    assert "done in" in log
    assert "(BN recal) ->" in log  # every finished row is reported as it lands


def test_quick_resumes_and_refuses_other_settings(quick):
    out, cmd, _ = quick
    before = pd.read_csv(out, dtype={"config": str})
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=out.parent)
    assert again.returncode == 0, again.stderr[-2000:]
    skipped = int(before["status"].astype(str).str.startswith("skipped").sum())  # a missing peer: tried again
    assert f"{14 - skipped} of 14 rows already" in again.stdout and f"running {skipped}\n" in again.stdout
    after = pd.read_csv(out, dtype={"config": str})
    cols = [c for c in before.columns if c not in ("row_s", "finished")]  # a retried skip's own time
    keys = ["method", "budget", "seed"]
    pd.testing.assert_frame_equal(
        after[cols].sort_values(keys).reset_index(drop=True), before[cols].sort_values(keys).reset_index(drop=True)
    )
    other = subprocess.run(
        cmd + ["--finetune-epochs", "0"], capture_output=True, text=True, timeout=120, cwd=out.parent
    )
    assert other.returncode == 2 and "other settings" in other.stderr
    pd.testing.assert_frame_equal(pd.read_csv(out, dtype={"config": str}), after)


def test_rows_cut_from_another_baseline_are_refused(quick, tmp_path: Path):
    """A table's rows share one baseline: a run whose baseline weights differ from the rows' already in --out
    stops with one line before it writes anything (rows written before the weights column: by their baseline
    top-1)."""
    out, cmd, _ = quick
    rows = pd.read_csv(out, dtype={"config": str})
    assert rows["base_weights"].nunique() == 1 and len(rows["base_weights"].iloc[0]) == 12
    table = tmp_path / "table.csv"
    shutil.copy(out.with_suffix(".meta.json"), table.with_suffix(".meta.json"))
    at = cmd.index("--out") + 1
    for column, value in (("base_weights", "0" * 12), ("top1_base", 1.0)):
        mine = rows[rows["method"] != "global"].copy()  # a missing row: the run has work to do
        if column == "top1_base":
            mine = mine.drop(columns="base_weights")
        mine.loc[mine.index[0], column] = value
        mine.to_csv(table, index=False)
        before = table.read_text()
        done = subprocess.run(
            [*cmd[:at], str(table), *cmd[at + 1 :]], capture_output=True, text=True, timeout=120, cwd=tmp_path
        )
        assert done.returncode == 2 and "cut from another baseline" in done.stderr, done.stderr[-2000:]
        assert "Traceback" not in done.stderr and table.read_text() == before


def _report(csv: Path, tmp_path: Path) -> str:
    """``benchmarks/report.py`` on one CSV: the page it writes (its plot must be a PNG)."""
    md, png = tmp_path / "benchmarks.md", tmp_path / "benchmarks.png"
    done = subprocess.run(
        [sys.executable, str(REPORT), "--csv", str(csv), "--md", str(md), "--png", str(png)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = md.read_text()
    assert "{" not in text.replace("```", "")  # no unformatted placeholder
    return text


def test_report_on_the_quick_csv(quick, tmp_path: Path):
    text = _report(quick[0], tmp_path)
    assert "## ResNet-20 / tiny" in text and "Smoke test (`--quick`)" in text
    assert "| method | budget | seeds | MACs ratio |" in text
    for m in METHODS[:6]:
        assert f"| `{m}` | 0.5 |" in text and f"| `{m}` | 0.3 |" in text
    assert "**lfgcl, amc:**" in text and "3 episodes (the uniform cut" in text and "2 warm-up episodes" in text
    assert "torch_pruning" in text
    assert "compare.py --recipe" in text and "report.py --csv" in text  # the exact commands
    assert "fine-tuning for **0.5 epochs**" in text
    assert "93.9" in text and "AMC 92.8" in text and "## Published numbers" in text


def test_report_knows_lcp_prunes_agent_defaults():
    """report.py imports no torch, so it mirrors lcp prune's agent episodes; they must agree."""
    from lcp.methods.options import DEFAULT_EPISODES
    from lcp.run.config import PruneConfig

    report = _module(REPORT, "bench_report")
    assert report.DEFAULT_EPISODES == DEFAULT_EPISODES
    assert report.AGENT_DEFAULTS == {"episodes": PruneConfig.episodes, "warmup_episodes": PruneConfig.warmup_episodes}


def test_report_says_where_lcp_is_not_ahead_by_more_than_the_seed_spread():
    report = _module(REPORT, "bench_report")
    nan = float("nan")
    g = pd.DataFrame(
        {
            "method": ["ceiling", "lcp", "global", "amc", "random"],
            "top1_pruned": [90.0, 88.0, 87.0, 87.9, 85.0],
            "top1_pruned_sd": [nan, 0.3, 0.2, 0.4, nan],
        }
    )
    text = report.lead_text(g, "top1_pruned")
    ahead, rest = text.split("**not ahead", 1)
    assert "`global` (+1.00, spread 0.30)" in ahead and "`random` (+3.00, spread 0.30)" in ahead
    assert "`amc` (+0.10, spread 0.40)" in rest and "ceiling" not in text
    one = report.lead_text(g.assign(top1_pruned_sd=nan), "top1_pruned")
    assert "ahead by" not in one and "at most one seed in common" in one and "`amc` (+0.10)" in one


def test_report_gathers_where_lcp_stands_in_one_table():
    report = _module(REPORT, "bench_report")
    rows = [("ceiling", 1.0, 0, 90.0), ("lcp", 0.5, 0, 88.0), ("lcp", 0.5, 1, 88.4), ("global", 0.5, 0, 87.0)]
    rows += [("global", 0.5, 1, 87.2), ("amc", 0.5, 0, 88.1), ("amc", 0.5, 1, 87.9)]
    df = pd.DataFrame(
        [
            {"method": m, "budget": b, "seed": s, "top1_pruned": t, "top1_pruned_noft": t - 10, "top1_base": 89.0}
            for m, b, s, t in rows
        ]
    ).assign(status="ok", finetune_epochs=3.0)
    meta = {"config": {"search": {"search_preset": "fast"}}}
    text = report.standing_text({"r56": (df, report.summarise(df), meta)}, {"r56": "ResNet-56, 3 epochs"})
    row = next(line for line in text.splitlines() if line.startswith("| ResNet-56, 3 epochs"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:5] == ["ResNet-56, 3 epochs", "default (fast preset)", "0.5", "88.20 ± 0.28 (seeds 0,1)", "2.00"]
    assert cells[5] == "global +1.10" and cells[6] == "amc +0.20" and cells[7] == "-"  # 2.00: on seed 0, paired


def test_lead_and_ceiling_gap_are_paired_on_the_seeds_both_rows_have():
    report = _module(REPORT, "bench_report")
    rows = [("ceiling", 1.0, 0, 90.0), ("lcp", 0.5, 0, 87.0), ("lcp", 0.5, 1, 89.0), ("uniform", 0.5, 0, 87.5)]
    rows += [("global", 0.5, 1, 88.0), ("global", 0.5, 2, 80.0)]
    df = pd.DataFrame(
        [
            {"method": m, "budget": b, "seed": s, "top1_pruned": t, "top1_pruned_noft": t - 10, "top1_base": 89.0}
            for m, b, s, t in rows
        ]
    ).assign(status="ok")
    s = report.summarise(df)
    g = s[s["budget"] == 0.5]
    found = report.lead(g, "top1_pruned")
    # lcp's mean (88.0) is above uniform's only seed, but on that seed lcp is 0.5 below it
    assert sorted((m, d) for m, d, _ in found["single"]) == [("global", 1.0), ("uniform", -0.5)]
    assert not found["ahead"] and not found["behind"]  # one seed in common each: no spread
    assert g.set_index("method").loc["lcp", "vs_ceiling"] == pytest.approx(3.0)  # seed 0: 90 - 87, not 90 - 88


def test_drop_vs_ceiling_uses_the_rows_own_seeds_where_measured():
    report = _module(REPORT, "bench_report")
    rows = [("ceiling", 1.0, 0, 84.0), ("ceiling", 1.0, 2, 85.0), ("lcp", 0.5, 0, 83.0), ("uniform", 0.5, 1, 82.0)]
    df = pd.DataFrame(
        [
            {"method": m, "budget": b, "seed": s, "top1_pruned": t, "top1_pruned_noft": t, "top1_base": 84.0}
            for m, b, s, t in rows
        ]
    ).assign(status="ok")
    s = report.summarise(df).set_index("method")["vs_ceiling"]
    assert s["lcp"] == pytest.approx(1.0)  # seed 0's ceiling
    assert s["uniform"] == pytest.approx(2.5)  # no seed-1 ceiling: the mean of all


def test_compare_refits_lcps_cuts_when_the_recipe_asks(tiny_folder: Path, resnet20_ckpt: Path, tmp_path: Path):
    """``reconstruct_images: N`` refits every cut lcp makes before the recalibration (the row says how many
    layers); the ceiling has nothing cut; the setting is part of the rows' signature only when it is on; lcp
    prune's ``auto`` is not one of the harness's settings."""
    from lcp.errors import LcpError

    recipe = tmp_path / "refit.yaml"
    recipe.write_text((ROOT / "recipes" / "bench_resnet56.yaml").read_text() + "\nreconstruct_images: 32\n")
    out = tmp_path / "refit.csv"
    cmd = quick_cmd("bench_resnet56.yaml", tiny_folder, resnet20_ckpt, "--out", out, "--work", tmp_path / "work")
    cmd[cmd.index("--recipe") + 1] = str(recipe)
    cmd += ["--methods", "global,ceiling", "--budgets", "0.5", "--latency-repeats", "0"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    df = pd.read_csv(out).set_index("method")
    assert df.loc["global", "reconstructed_layers"] > 0 and df.loc["ceiling", "reconstructed_layers"] == 0
    compare = _module(COMPARE, "bench_compare_refit")
    base = {k: v for k, v in compare.DEFAULTS.items() if k != "reconstruct_images"}
    assert compare.signature({**base, "reconstruct_images": 0}) == compare.signature(base)
    assert compare.signature({**base, "reconstruct_images": 32}) != compare.signature(base)
    recipe.write_text((ROOT / "recipes" / "bench_resnet56.yaml").read_text() + "\nreconstruct_images: auto\n")
    with pytest.raises(LcpError, match="reconstruct_images must be a whole number of images, 0 for none, not 'auto'"):
        compare.settings_from(compare.parse_args(["--recipe", str(recipe)]))


def test_rows_of_another_search_size_are_refused(tmp_path: Path):
    """A preset's candidate count is not in the signature (the recipe names the preset), so lcp rows whose search
    evaluated another count than the recipe's search would (one without a time stop) are refused like rows of
    other settings, and the CSV is left as it was."""
    from lcp.errors import LcpError

    compare = _module(COMPARE, "bench_compare_counts")
    out = tmp_path / "c.csv"
    argv = ["--recipe", str(ROOT / "recipes" / "bench_kd_resnet20.yaml"), "--out", str(out), "--work", str(tmp_path)]
    args = compare.parse_args(argv)
    cfg = compare.settings_from(args)
    assert cfg["search"]["search_time"] == 0 and cfg["search"]["candidates"] is None  # the fast preset's count
    lcp_row = {"method": "lcp", "budget": 0.5, "seed": 0, "status": "ok", "search_candidates": 80}
    rows = [lcp_row, {**lcp_row, "method": "global", "search_candidates": None}]
    df = pd.DataFrame([{**r, "config": compare.signature(cfg, r["method"])} for r in rows])
    assert compare.searched_otherwise(df, cfg) == []  # 80: the fast preset's
    df.loc[df["method"] == "lcp", "search_candidates"] = 40
    assert compare.searched_otherwise(df, cfg) == [40]
    assert compare.searched_otherwise(df, {**cfg, "search": {**cfg["search"], "candidates": 40}}) == []
    timed = {**cfg, "search": {**cfg["search"], "search_time": None}}  # stopped by its 120 s: any count
    assert compare.searched_otherwise(df, timed) == []
    df.to_csv(out, index=False)
    before = out.read_bytes()
    threads = torch.get_num_threads()
    try:
        with pytest.raises(LcpError, match="evaluated 40 candidates, the recipe's search 80"):
            compare.run(args, argv, log=lambda _: None)
    finally:
        torch.set_num_threads(threads)
    assert out.read_bytes() == before and not out.with_suffix(".meta.json").exists()


def test_signatures_keep_the_written_rows_valid(monkeypatch):
    """The committed comparisons stay valid with the new methods and settings in their recipes; the agents'
    settings decide only the rows of the methods that use them."""
    compare = _module(COMPARE, "bench_compare")
    for name in ("resnet20", "resnet56"):
        df = pd.read_csv(ROOT / "benchmarks" / "results" / f"compare_{name}.csv")
        cfg = compare.settings_from(compare.parse_args(["--recipe", str(ROOT / "recipes" / f"bench_{name}.yaml")]))
        assert [compare.signature(cfg, m) for m in df["method"]] == df["config"].tolist(), name
    # ResNet-56 with 3 epochs: uniform, random, lfgcl and amc were added to the recipe after its other rows
    rec = pd.read_csv(ROOT / "benchmarks" / "results" / "compare_recovery_resnet56.csv")
    rcfg = compare.settings_from(
        compare.parse_args(["--recipe", str(ROOT / "recipes" / "bench_recovery_resnet56.yaml")])
    )
    assert [compare.signature(rcfg, m) for m in rec["method"]] == rec["config"].tolist()
    assert {"lfgcl", "amc", "uniform", "random"} <= set(rcfg["methods"])
    sig = {m: compare.signature(cfg, m) for m in compare.METHODS}

    def changed(section: str, key: str, value) -> set[str]:
        other = {**cfg, section: {**cfg[section], key: value}} if section else {**cfg, key: value}
        return {m for m in compare.METHODS if compare.signature(other, m) != sig[m]}

    assert changed("agents", "episodes", 99) == {"lfgcl", "amc", "ads", "lwp"}
    assert changed("agents", "warmup_episodes", 99) == {"lfgcl", "amc"}
    assert changed("modelopt", "channel_divisor", 8) == {"modelopt"}
    assert changed("", "methods", ["ads"]) == set()
    assert changed("", "device", "cuda") == set(compare.METHODS)
    assert changed("", "finetune_epochs", 3) == set(compare.METHODS)
    # the connection searches' rows name the prior they start from
    monkeypatch.setattr(compare, "OUTPUT_SHARE", "another prior")
    assert {m for m in compare.METHODS if compare.signature(cfg, m) != sig[m]} == {"ads", "lwp"}


@pytest.fixture(scope="module")
def dense(tiny_folder: Path, state_dict_saver, tmp_path_factory: pytest.TempPathFactory):
    """The DenseNet-40 recipe's quick section on the tiny folder at 8x8 (3 classes), in this process: global
    first, then ads and lwp added to the same CSV. Returns (csv, rows after the first run, log of the second)."""
    compare = _module(COMPARE, "bench_compare")
    tmp = tmp_path_factory.mktemp("bench_dense")
    out = tmp / "compare_densenet40.csv"
    argv = [
        "--recipe",
        str(ROOT / "recipes" / "bench_densenet40.yaml"),
        "--quick",
        "--data",
        str(tiny_folder),
        "--checkpoint",
        str(state_dict_saver("densenet40", 3, tmp / "d40.pt")),
        "--input-size",
        "3,8,8",
        "--holdout",
        "12",
        "--out",
        str(out),
        "--work",
        str(tmp / "work"),
        "--no-progress",
    ]
    threads = torch.get_num_threads()
    try:
        for methods in ("global", "ads,lwp,global"):
            log: list[str] = []
            compare.run(compare.parse_args(argv + ["--methods", methods]), argv, log=log.append)
            if methods == "global":
                before = pd.read_csv(out, dtype={"config": str})
    finally:
        torch.set_num_threads(threads)
    return out, before, "\n".join(log)


@pytest.mark.slow  # about 10 s: DenseNet-40 searches, cut and fine-tuned twice
def test_quick_connection_methods_on_densenet(dense):
    out, before, log = dense
    assert "1 of 3 rows already" in log  # the added methods add their rows only
    df = pd.read_csv(out, dtype={"config": str})
    pd.testing.assert_frame_equal(df.loc[df["method"] == "global", before.columns].reset_index(drop=True), before)
    assert sorted(df["method"]) == ["ads", "global", "lwp"] and (df["status"] == "ok").all(), df["status"].tolist()
    assert (df["model"] == "densenet40").all() and df["finetune_steps"].nunique() == 1
    conn = df[df["method"].isin(["ads", "lwp"])]
    assert (conn["connections"] == 273).all() and (conn["connections_kept"] < 273).all()
    assert (conn["verification_error"] < 1e-6).all() and (conn["search_s"] > 0).all()
    assert (conn["macs_ratio"] <= 0.5 + 1e-9).all() and (df["macs_ratio"] > 0.3).all()
    assert (conn["params_ratio"] < 1).all() and (df["top1_pruned"].between(0, 100)).all()
    # the ads network fills the budget (lwp may stay below it); its MACs are lcp's count of the saved network
    assert conn.loc[conn["method"] == "ads", "macs_ratio"].iloc[0] >= 0.45


@pytest.mark.slow
def test_report_on_the_densenet_csv(dense, tmp_path: Path):
    text = _report(dense[0], tmp_path)
    assert "## DenseNet-40 / tiny" in text and "| `ads` | 0.5 |" in text and "| `lwp` | 0.5 |" in text
    assert "**ads, lwp:**" in text and "2 episodes" in text
    assert "Not run yet: `lcp`, `uniform`" in text  # named in the recipe, left out by --methods


@pytest.mark.skipif(not _has_tp(), reason="torch-pruning is not installed (pip install -e '.[bench]')")
def test_torch_pruning_reaches_the_macs_target():
    import lcp

    compare = _module(COMPARE, "bench_compare")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = lcp.create_model("mobilenetv2", num_classes=10).eval()
    x = torch.zeros(1, 3, 32, 32)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two threads on the shared 2-core machine made this 10x slower
    try:
        pruned, info = compare.tp_prune(model, x, budget=0.5, budget_type="macs", num_classes=10)
    finally:
        torch.set_num_threads(threads)
    ratio = lcp.count_macs(pruned, x) / lcp.count_macs(model, x)
    assert 0.5 * 0.98 <= ratio <= 0.5 and info["tp_tries"] >= 1
    assert pruned(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert lcp.count_macs(model, x) == 24461312  # the original is untouched


def test_support_matrix_redo_replaces_only_the_rows_asked_for(tmp_path):
    """``support_matrix.py --redo refused,NAME`` re-runs the refused models of the CSV and the one named, and keeps
    every other row."""
    pytest.importorskip("timm")
    sm = _module(ROOT / "benchmarks" / "support_matrix.py", "support_matrix_under_test")
    out = tmp_path / "m.csv"
    old = [
        {"model": "resnet18", "status": "ok", "reason": "", "macs_ratio": "0.4999", "seconds": "1.0"},
        {"model": "test_efficientnet_gn", "status": "refused", "reason": "an old engine's refusal", "seconds": "1.0"},
        {"model": "test_resnet", "status": "ok", "reason": "", "macs_ratio": "0.7", "seconds": "1.0"},
    ]
    pd.DataFrame(old, columns=sm.COLUMNS).to_csv(out, index=False)
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "support_matrix.py"),
            "--redo",
            "refused,test_resnet",
            "--out",
            str(out),
            "--workers",
            "1",
            "--timeout",
            "120",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {r["model"]: r for r in sm.read_rows(out)}
    assert rows.keys() == {"resnet18", "test_efficientnet_gn", "test_resnet"}
    assert rows["test_resnet"]["macs_ratio"] != "0.7"  # re-run by name
    assert rows["resnet18"]["seconds"] == "1.0"  # kept as it was
    assert rows["test_efficientnet_gn"]["status"] == "ok", rows["test_efficientnet_gn"]  # GroupNorm: whole groups
    assert (tmp_path / "m.json").is_file()


def test_support_matrix_of_torchvision_models_prunes_a_detector_by_parts(tmp_path):
    """``support_matrix.py --torchvision``: ``tv:`` models, a detector pruned by its traceable parts (the ``parts``
    column), and the page's torchvision section from the rows."""
    sm = _module(ROOT / "benchmarks" / "support_matrix.py", "support_matrix_tv_under_test")
    out = tmp_path / "tv.csv"
    models = "tv:mobilenet_v3_small,tv:fasterrcnn_mobilenet_v3_large_320_fpn"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "support_matrix.py"), "--torchvision", "--models", models]
    done = subprocess.run(
        [*cmd, "--out", str(out), "--workers", "1", "--timeout", "200"], capture_output=True, text=True, timeout=400
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {r["model"]: r for r in sm.read_rows(out)}
    assert rows["tv:mobilenet_v3_small"]["status"] == "ok" and rows["tv:mobilenet_v3_small"]["family"] == (
        "torchvision classification"
    )
    det = rows["tv:fasterrcnn_mobilenet_v3_large_320_fpn"]
    assert (det["status"], det["family"]) == ("ok", "torchvision detection")
    assert det["parts"] == "backbone roi_heads.box_head"
    assert float(det["macs_ratio"]) <= 0.5
    page = "\n".join(sm.torchvision_section(list(rows.values()), {"command": "cmd", "date": "today"}))
    assert "| tv:fasterrcnn_mobilenet_v3_large_320_fpn | detection | ok | " in page
    assert "backbone roi_heads.box_head" in page


def test_recovery_recipe_has_a_ceiling_row_and_the_fast_search(tiny_folder: Path, resnet20_ckpt: Path, tmp_path: Path):
    """The recovery recipe's quick section: one ceiling row (budget 1, the unpruned network through the same
    recovery) and lcp searched with the fast preset (a sensitivity measurement); the report shows the gap."""
    compare, report = _module(COMPARE, "bench_compare"), _module(ROOT / "benchmarks" / "report.py", "bench_report")
    out = tmp_path / "compare_recovery.csv"
    argv = [
        "--recipe",
        str(ROOT / "recipes" / "bench_recovery_resnet56.yaml"),
        "--quick",
        "--data",
        str(tiny_folder),
        "--checkpoint",
        str(resnet20_ckpt),
        "--holdout",
        "12",
        "--out",
        str(out),
        "--work",
        str(tmp_path / "work"),
        "--no-progress",
    ]
    threads = torch.get_num_threads()
    try:
        compare.run(compare.parse_args(argv), argv, log=lambda _: None)
    finally:
        torch.set_num_threads(threads)
    df = pd.read_csv(out, dtype={"config": str})
    peer = df["method"].isin(compare.PEERS) & df["status"].str.startswith("skipped: ")  # not installed here
    assert (df.loc[~peer, "status"] == "ok").all(), df["status"].tolist()
    df = df[~peer]
    ceiling = df[df["method"] == "ceiling"]
    assert len(ceiling) == 1 and ceiling["budget"].iloc[0] == 1.0 and ceiling["macs_ratio"].iloc[0] == 1.0
    assert sorted(df.loc[df["method"] != "ceiling", "budget"].unique()) == [0.5]
    assert len(list((tmp_path / "work").glob("*/search_seed0_at*/sensitivity.json"))) == 1  # the fast preset's
    md = tmp_path / "b.md"
    report.main(["--csv", str(out), "--md", str(md), "--png", str(tmp_path / "b.png")])
    text = md.read_text()
    assert "drop vs ceiling (pts)" in text and "points below the ceiling" in text and "`fast` search" in text


def test_recovery_ablation_writes_rows_resumes_and_reports(tiny_folder: Path, resnet20_ckpt: Path, tmp_path: Path):
    """``benchmarks/recovery.py``: every variant recovers the cut and the ceiling (one row each, distillation
    included), a stepwise variant reaches the cut's budget in two cuts and shares the one-step ceiling, so does a
    refitting one (least-squares reconstruction), a rerun adds nothing, the page gives each variant's gap to the
    ceiling, bad recipes and a refitted cut are refused."""
    import lcp
    from lcp.errors import LcpError
    from tests.helpers import lcp_cli, tiny_args

    rec = _module(ROOT / "benchmarks" / "recovery.py", "bench_recovery")
    cut = tmp_path / "cut"
    lcp_args = ("--method", "lcp", "--candidates", "4", "--reconstruct-images", "0")
    assert lcp_cli(*tiny_args(tiny_folder, resnet20_ckpt, cut, *lcp_args)).code == 0
    out = tmp_path / "results" / "recovery_tiny.csv"
    recipe = tmp_path / "recovery_tiny.yaml"
    recipe.write_text(
        f"model: resnet20\ndata: {tiny_folder}\ncheckpoint: {resnet20_ckpt}\ncut: {cut}\nholdout: 12\n"
        f"batch_size: 16\nrecal_batches: 1\nout: {out}\n"
        "variants:\n  plain: {lr: 0.01, epochs: 1}\n  kd: {lr: 0.02, epochs: 2, kd: true, kd_weight: 1.0, batch: 8}\n"
        "  kd_steps: {lr: 0.02, epochs: 2, kd: true, kd_weight: 1.0, batch: 8, steps: 2}\n"
        "  kd_refit: {lr: 0.02, epochs: 2, kd: true, kd_weight: 1.0, batch: 8, reconstruct: 24}\n"
        "  kd_ema: {lr: 0.02, epochs: 2, kd: true, kd_weight: 1.0, batch: 8, ema: 0.9, kd_t: 2}\n"
        "  kd_hint: {lr: 0.02, epochs: 2, kd: true, kd_weight: 1.0, batch: 8, hint: 1000}\n"
    )
    logged = []
    threads = torch.get_num_threads()
    try:
        cfg = {**rec.read_recipe(recipe), "progress": False}
        df = rec.run(cfg, None, list(rec.NETS), log=logged.append)
        assert sorted(zip(df["variant"], df["net"])) == [
            ("kd", "ceiling"),
            ("kd", "pruned"),
            ("kd_ema", "ceiling"),  # the moving average is part of the recovery: the ceiling gets it too
            ("kd_ema", "pruned"),
            ("kd_hint", "ceiling"),  # attention transfer is part of the recovery: the ceiling gets it too
            ("kd_hint", "pruned"),
            ("kd_refit", "pruned"),  # its ceiling is kd's
            ("kd_steps", "pruned"),  # its ceiling is kd's
            ("plain", "ceiling"),
            ("plain", "pruned"),
        ]
        assert df.loc[df["net"] == "ceiling", "macs_ratio"].eq(1.0).all()
        assert df.loc[df["net"] == "pruned", "macs_ratio"].between(0.4, 0.55).all()
        kd_rows = df[df["variant"] != "plain"]
        assert kd_rows["kd_weight"].eq(1.0).all() and kd_rows["batch"].eq(8).all()
        assert df.loc[df["variant"] == "plain", "batch"].eq(16).all()  # the recipe's batch_size
        assert df[["top1_noft", "holdout_top1", "top1"]].notna().all().all()
        first, second = (float(line.split(" of the MACs")[0].split()[-1]) for line in logged if "step " in line)
        assert 0.5**0.5 - 0.03 < first <= 0.5**0.5  # the cut's budget 0.5 in two steps: 0.707, then 0.5
        assert 0.47 < second <= 0.5
        assert df.loc[df["variant"] == "kd_steps", "macs_ratio"].iloc[0] == pytest.approx(second, abs=1e-3)
        refits = [line for line in logged if "refitted" in line]
        assert len(refits) == 1 and int(refits[0].split()[1]) > 0  # "refitted N of M layers"
        assert df.loc[df["variant"] == "kd_refit", "reconstruct"].iloc[0] == 24
        assert df.loc[df["variant"] == "kd_ema", "ema"].eq(0.9).all()
        assert df.loc[df["variant"] == "kd", "ema"].eq(0).all()
        assert df.loc[df["variant"] == "kd_ema", "kd_t"].eq(2).all()
        assert df.loc[df["variant"] == "kd", "kd_t"].eq(4).all()
        assert (
            df.loc[df["variant"] == "kd_hint", "hint"].eq(1000).all()
            and df.loc[df["variant"] == "kd", "hint"].eq(0).all()
        )
        # the hint term is added to the distillation loss of the pruned network against the unpruned one
        student, x = lcp.load(cut), torch.randn(4, 3, 32, 32)
        teacher = lcp.create_model("resnet20", num_classes=student.linear.out_features)
        layers = rec.hint_layers(teacher, x)
        with rec.taps(student, layers) as s_out, rec.taps(teacher, layers) as t_out:
            loss = {
                b: rec._hinted_loss(
                    student.eval(),
                    (x, torch.zeros(4, dtype=torch.long)),
                    teacher=teacher,
                    s_out=s_out,
                    t_out=t_out,
                    v={**rec.VARIANT_KEYS, "kd": True, "hint": b},
                ).item()
                for b in (0.0, 1000.0)
            }
        assert len(s_out) == len(t_out) == 3 and loss[1000.0] > loss[0.0]
        assert rec.main(["--recipe", str(recipe)]) == 0
        assert len(pd.read_csv(out)) == 10  # nothing run twice
        made = pd.read_csv(out, dtype={"setup": str})
        assert set(made.loc[made["net"] == "pruned", "setup"]) == {rec.setup_of(cfg, cut)}
        assert set(made.loc[made["net"] == "ceiling", "setup"]) == {rec.setup_of(cfg, None)}
        # another recalibration (or data split, or cut) makes a row again, although its variant is unchanged
        logged.clear()
        rec.run({**cfg, "recal_batches": 2}, ["plain"], ["ceiling"], log=logged.append)
        assert any("plain ceiling seed 0 was made with another cut, data split" in line for line in logged)
        assert len(pd.read_csv(out)) == 10  # replaced, not added
    finally:
        torch.set_num_threads(threads)
    # a cut lcp prune refitted (its default without fine-tuning) is refused: the variants would not start from the cut
    refitted = tmp_path / "cut_refitted"
    assert lcp_cli(*tiny_args(tiny_folder, resnet20_ckpt, refitted)).code == 0
    with pytest.raises(LcpError, match="was refitted to the original's outputs"):
        rec.run({**cfg, "cut": str(refitted)}, None, list(rec.NETS), log=logged.append)
    md = tmp_path / "recovery.md"
    rec.report([recipe], md)
    text = md.read_text()
    for made in (
        "| plain | 0.01 | no | - | 16 | 1 | 1 | no | no | no | 1 |",
        "| kd | 0.02 | 1 | 4 | 8 | 2 | 1 | no | no | no | 1 |",
        "| kd_refit | 0.02 | 1 | 4 | 8 | 2 | 1 | 24 | no | no | 1 |",
        "| kd_ema | 0.02 | 1 | 2 | 8 | 2 | 1 | no | 0.9 | no | 1 |",
        "| kd_hint | 0.02 | 1 | 4 | 8 | 2 | 1 | no | no | 1000 | 1 |",
    ):
        assert made in text
    kd_row, steps_row, refit_row = (
        next(r for r in text.splitlines() if r.startswith(f"| {n} |")) for n in ("kd", "kd_steps", "kd_refit")
    )
    ceiling = kd_row.split("|")[16:18]
    assert steps_row.split("|")[16:18] == refit_row.split("|")[16:18] == ceiling != [" - ", " - "]  # kd's ceiling
    assert "did not measure" not in text.split("\n## ")[1]  # shared within the recipe, not borrowed
    assert "Best pruned held-out top-1" in text and "do not edit" in text
    # another cut of the same network with the same recovery, no ceiling rows of its own: it borrows recipe 1's
    other, other_csv = tmp_path / "recovery_other.yaml", tmp_path / "results" / "recovery_other.csv"
    df[(df["variant"] == "plain") & (df["net"] == "pruned")].to_csv(other_csv, index=False)
    other.write_text(
        recipe.read_text().split("variants:")[0].replace(str(out), str(other_csv))
        + "variants:\n  plain: {lr: 0.01, epochs: 1}\nnote: One step is enough.\n"
    )
    text = rec.report([recipe, other], md)
    first, second = text.split("\n## ")[1:3]
    row = lambda part: next(r for r in part.splitlines() if r.startswith("| plain |")).split("|")  # noqa: E731
    assert row(second)[16:18] == row(first)[16:18] != [" - ", " - "] and "did not measure come from" in second
    assert "One step is enough." in second and "did not measure" not in first
    # a recipe with another held-out split borrows nothing
    other.write_text(other.read_text().replace("holdout: 12", "holdout: 13"))
    third = rec.report([recipe, other], md).split("\n## ")[2]
    assert row(third)[16:18] == [" - ", " - "] and "did not measure" not in third
    # a variant whose recipe changed after its rows were made: the page refuses, a run makes them again
    other.write_text(other.read_text().replace("plain: {lr: 0.01,", "plain: {lr: 0.02,"))
    with pytest.raises(rec.LcpError, match=r"plain pruned row \(seed 0\) was made with lr 0.01 \(recipe 0.02\)"):
        rec.report([recipe, other], md)
    changed = rec.read_recipe(other)
    made = next(pd.read_csv(other_csv).itertuples())
    assert rec.disagreements(made, changed["variants"]["plain"]) == ["lr 0.01 (recipe 0.02)"]
    assert rec.disagreements(made, rec.read_recipe(recipe)["variants"]["plain"]) == []
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"model: resnet20\ncut: {cut}\nout: {out}\nvariants:\n  x: {{lr: 0.01, momentum: 0.5}}\n")
    assert rec.main(["--recipe", str(bad)]) == 2
    bad.write_text(f"model: resnet20\ncut: {cut}\nout: {out}\nvariants:\n  x: {{epochs: 2, steps: 3}}\n")
    assert rec.main(["--recipe", str(bad)]) == 2
    for wrong in (
        "kd_weight: 1.5",
        "kd_t: 0",
        "kd_t: true",
        "batch: 0",
        "batch: 8.5",
        "reconstruct: -1",
        "reconstruct: 2.5",
        "reconstruct: 8, steps: 2, epochs: 2",
        "ema: 1",
        "ema: -0.1",
        "ema: true",
        "hint: -1, kd: true",
        "hint: true, kd: true",
        "hint: '100', kd: true",
        "hint: .inf, kd: true",
        "hint: 100, kd: false",
        "hint: 100, kd: true, steps: 2, epochs: 2",
    ):
        bad.write_text(f"model: resnet20\ncut: {cut}\nout: {out}\nvariants:\n  x: {{{wrong}}}\n")
        assert rec.main(["--recipe", str(bad)]) == 2


def test_recovery_ema_variant_evaluates_the_moving_average(monkeypatch):
    """A variant with ``ema`` d evaluates (and keeps) the exponential moving average of the weights over the
    fine-tuning steps, not the last step's weights; without it, the last step's."""
    rec = _module(ROOT / "benchmarks" / "recovery.py", "bench_recovery_ema")

    def steps(model, bundle, on_step_end=None, **kw):  # three optimizer steps that set the weight to 1, 2, 3
        for w in (1.0, 2.0, 3.0):
            with torch.no_grad():
                model.weight.fill_(w)
            if on_step_end is not None:
                on_step_end(model)

    seen: list[float] = []
    monkeypatch.setattr(rec, "finetune", steps)
    monkeypatch.setattr(rec, "recalibrate_bn", lambda *a, **k: None)
    monkeypatch.setattr(rec, "evaluate", lambda m, loader: seen.append(m.weight.item()) or {"top1": 0.0})

    class Bundle:
        def loader(self, *a, **k):
            return []

    cfg = {"batch_size": 8, "recal_batches": 1, "progress": False}
    for decay, want in ((0.5, 2.25), (0.0, 3.0)):  # 1, then 0.5 * 1 + 0.5 * 2, then 0.5 * 1.5 + 0.5 * 3
        net = torch.nn.Linear(1, 1, bias=False)
        rec.recover_once(net, None, Bundle(), {**rec.VARIANT_KEYS, "ema": decay, "batch": 8}, 0, cfg)
        assert seen[-2:] == [want, want] and net.weight.item() == want  # held-out and test both see it
    # a row made before the ema column existed was made without it: a recipe that now averages makes it again
    old = pd.DataFrame([{"lr": 0.01, "kd": True, "epochs": 3}]).iloc[0]
    plain = {**rec.VARIANT_KEYS, "lr": 0.01, "kd": True, "epochs": 3}
    assert rec.disagreements(old, {**plain, "ema": 0.999}) == ["ema 0.0 (recipe 0.999)"]
    assert rec.disagreements(old, {**plain, "hint": 100.0}) == ["hint 0.0 (recipe 100.0)"]  # likewise hints
    assert rec.disagreements(old, plain) == []
    # ... and before the kd_t column, at the temperature 4; without distillation the temperature is no setting
    assert rec.disagreements(old, {**plain, "kd_t": 2.0}) == ["kd_t 4.0 (recipe 2.0)"]
    no_kd = pd.DataFrame([{"lr": 0.01, "kd": False, "epochs": 3}]).iloc[0]
    assert rec.disagreements(no_kd, {**plain, "kd": False, "kd_t": 2.0}) == []
    # the distillation temperature reaches the fine-tuning, and a ceiling at another temperature is another ceiling
    got: dict = {}
    monkeypatch.setattr(rec, "finetune", lambda model, bundle, **kw: got.update(kw))
    rec.recover_once(torch.nn.Linear(1, 1), None, Bundle(), {**plain, "kd_t": 2.0, "batch": 8}, 0, cfg)
    assert got["kd_T"] == 2.0 and got["loss_fn"] is None  # no hints: finetune's own loss
    where = {k: None for k in ("model", "data", "checkpoint", "batch_size", "recal_batches", "holdout")}
    assert rec._ceiling_key(where, {**plain, "kd_t": 2.0}) != rec._ceiling_key(where, plain)
    # hints tap the pruned network where they tap the unpruned one; a network without those layers is refused
    import lcp

    monkeypatch.setattr(rec, "evaluate", lambda m, loader: {"top1": 0.0})
    Bundle.input_size = (3, 32, 32)
    hinted = {**plain, "hint": 100.0, "batch": 8}
    rec.recover_once(lcp.create_model("resnet20"), lcp.create_model("resnet20"), Bundle(), hinted, 0, cfg)
    assert got["loss_fn"] is not None
    with pytest.raises(rec.LcpError, match="has no layer1, layer2, layer3 to take attention hints from"):
        rec.recover_once(torch.nn.Linear(1, 1), lcp.create_model("resnet20"), Bundle(), hinted, 0, cfg)
    labels_only = {**plain, "kd": False}
    assert rec._ceiling_key(where, {**labels_only, "kd_t": 2.0}) == rec._ceiling_key(where, labels_only)


def test_compare_distils_from_a_frozen_copy_when_the_recipe_says_kd(monkeypatch):
    """``kd: true`` fine-tunes every row with a frozen copy of the unpruned network as teacher (the ceiling's
    student is that network itself, so the teacher must be a copy); ``kd`` false leaves the signature as it was."""
    import lcp.training.train as train

    compare = _module(COMPARE, "bench_compare_kd")
    seen = {}
    monkeypatch.setattr(train, "finetune", lambda model, data, **kw: seen.update(kw) or {"resumed_from": None})

    class Bundle:
        train_x = torch.zeros(256, 3, 4, 4)

    net, teacher = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    cfg = {"finetune_epochs": 1, "batch_size": 128, "lr": 0.01, "device": "cpu", "kd": True}
    assert compare.finetune(net, Bundle(), cfg, 0, False, teacher=teacher) == (2, None, 0.0)
    t = seen["teacher"]
    assert t is not teacher and not t.training and torch.equal(t.weight, teacher.weight)
    with pytest.raises(compare.LcpError, match="teacher"):
        compare.finetune(net, Bundle(), cfg, 0, False)
    seen.clear()
    compare.finetune(net, Bundle(), {**cfg, "kd": False}, 0, False, teacher=teacher)
    assert "teacher" not in seen
    base = {k: v for k, v in compare.DEFAULTS.items() if k != "kd"}
    assert compare.signature({**base, "kd": False}) == compare.signature(base)
    assert compare.signature({**base, "kd": True}) != compare.signature(base)


def test_a_killed_rows_fine_tuning_resumes_from_its_last_epoch_and_ends_the_same(tmp_path: Path):
    """compare's fine-tuning checkpoints every epoch: a run killed in its second epoch resumes after the first and
    ends with the weights of an uninterrupted run."""
    compare = _module(COMPARE, "bench_compare_resume")
    g = torch.Generator().manual_seed(0)
    xs, ys = torch.randn(64, 4, generator=g), torch.randint(0, 3, (64,), generator=g)

    class Bundle:
        train_x = xs
        kill_at: int | None = None

        def loader(self, split, bs, *, epoch=0, **kw):
            if epoch == self.kill_at:
                raise KeyboardInterrupt
            return [(xs[i : i + bs], ys[i : i + bs]) for i in range(0, len(xs), bs)]

    cfg = {"finetune_epochs": 1.5, "batch_size": 16, "lr": 0.05, "device": "cpu", "kd": False}

    def net() -> torch.nn.Module:
        torch.manual_seed(1)
        return torch.nn.Linear(4, 3)

    whole = net()
    assert compare.finetune(whole, Bundle(), cfg, 0, False) == (6, None, 0.0)
    ckpt, killed = tmp_path / "ft.safetensors", Bundle()
    killed.kill_at = 1
    with pytest.raises(KeyboardInterrupt):
        compare.finetune(net(), killed, cfg, 0, False, ckpt=ckpt)
    assert ckpt.is_file()
    resumed = net()
    steps, epoch, earlier = compare.finetune(resumed, Bundle(), cfg, 0, False, ckpt=ckpt)
    assert (steps, epoch) == (6, 1) and earlier > 0  # the killed run's first epoch counts in finetune_s
    assert torch.equal(resumed.weight, whole.weight) and torch.equal(resumed.bias, whole.bias)
    # a row's checkpoint is named by its cut's weights: another cut never resumes it
    assert compare.weights_digest(net()) == compare.weights_digest(net()) != compare.weights_digest(whole)


def test_modelopt_is_driven_to_lcps_macs_count(monkeypatch, tmp_path):
    """FastNAS's own FLOPs count and bisection land off lcp's count: the constraint is rescaled and the search
    re-run until lcp counts the result at or just under the target; the largest result within it is kept, and
    one it can never bring under the target is one clear error. (A stand-in for ``modelopt.torch.prune`` whose
    results keep 1.08x the MACs it is asked for; the real package stays out of the test suite.)"""
    import types

    import lcp
    from lcp.cut.pruner import prune_graph

    compare = _module(COMPARE, "bench_compare_mo")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = lcp.create_model("resnet20", num_classes=10).eval()
    x = torch.zeros(1, 3, 8, 8)
    graph = lcp.build_graph(model, x)
    calls: list[dict] = []
    bias = {"value": 1.08}

    def fake_prune(m, mode, constraints, dummy_input, config):
        calls.append({"constraints": constraints, "mode": mode, **config})
        target = min(1.0, float(constraints["flops"].rstrip("%")) / 100 * bias["value"])
        return prune_graph(graph, budget=target, budget_type="macs", method="uniform").model, {}

    pkg = types.ModuleType("modelopt.torch.prune")
    pkg.prune = fake_prune
    for name in ("modelopt", "modelopt.torch"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "modelopt.torch.prune", pkg)

    def score(_m):
        return 0.0

    ckpt = tmp_path / "mo" / "fastnas.pth"
    pruned, info = compare.mo_prune(model, x, budget=0.5, budget_type="macs", score=score, checkpoint=ckpt)
    ratio = lcp.count_macs(pruned, x) / lcp.count_macs(model, x)
    assert 0.5 * 0.99 <= ratio <= 0.5 * 1.001 and info["mo_tries"] == len(calls) >= 2
    assert calls[0]["constraints"] == {"flops": "50.0000%"} and float(calls[1]["constraints"]["flops"][:-1]) < 50
    assert all(c["score_func"] is score and c["checkpoint"] == str(ckpt) for c in calls)
    assert calls[0]["mode"][0][1]["nn.Conv2d"]["*"]["channel_divisor"] == 4 and ckpt.parent.is_dir()
    bias["value"] = 3.0  # never under 0.5 after 4 tries
    with pytest.raises(compare.LcpError, match="modelopt cannot meet 0.5 of the baseline macs"):
        compare.mo_prune(model, x, budget=0.5, budget_type="macs", score=score, checkpoint=ckpt, max_tries=2)


def test_search_table_markdown_keeps_devices_apart():
    """``search_table.py --markdown``: rows written before the device column count as CPU rows; a GPU row gets
    its own line with its time per candidate, and the old rows keep theirs."""
    st = _module(ROOT / "benchmarks" / "search_table.py", "search_table_under_test")
    base = dict(optimizer="legr", candidates_max=0, best_fitness=0.5, top1_pruned_noft=70.0, sensitivity_s=10.0)
    rows = [dict(base, model="resnet56", search_preset="fast", seed=s, candidates=40, search_s=120.0) for s in (0, 1)]
    old = pd.DataFrame(rows)
    assert "device" not in old and "| cpu |" not in st.markdown(old)
    gpu = dict(base, model="resnet56", search_preset="fast", seed=0, candidates=80, search_s=26.0, device="cuda: X")
    text = st.markdown(pd.concat([old, pd.DataFrame([gpu])], ignore_index=True))
    lines = [ln for ln in text.splitlines() if ln.startswith("| resnet56")]
    assert len(lines) == 2
    assert lines[0].startswith("| resnet56 | cpu |") and lines[0].endswith(" 2.750 |")  # (240 - 20) / 80
    assert lines[1].startswith("| resnet56 | cuda: X |") and lines[1].endswith(" 0.200 |")  # 16 / 80


def test_collect_runs_appends_a_row_per_run_folder(tmp_path, capsys):
    """``benchmarks/collect_runs.py``: a finished run folder becomes one row with its command and the blocks it
    removed; the same command replaces its row; a folder that is not a finished run is one line, exit 2."""
    cr = _module(ROOT / "benchmarks" / "collect_runs.py", "collect_runs_under_test")
    run = tmp_path / "run"
    run.mkdir()
    pd.DataFrame([{"budget_type": "latency", "budget": 0.5, "macs_ratio": 0.28, "top1_pruned": 82.47}]).to_csv(
        run / "report.csv", index=False
    )
    pd.DataFrame(
        [{"group": "a", "channels_after": 0}, {"group": "b", "channels_after": 16}, {"group": "c", "channels_after": 0}]
    ).to_csv(run / "layers.csv", index=False)
    out = tmp_path / "rows.csv"
    argv = [str(run), "--out", str(out), "--command", "lcp prune X", "--machine", "vm"]
    assert cr.main(argv) == 0 and cr.main(argv) == 0
    rows = pd.read_csv(out, dtype={"config": str})
    assert len(rows) == 1 and rows["blocks_removed"].iloc[0] == 2 and rows["top1_pruned"].iloc[0] == 82.47
    assert list(rows.columns) == cr.COLUMNS
    capsys.readouterr()
    assert cr.main([str(tmp_path / "nothing"), "--out", str(out), "--command", "c", "--machine", "vm"]) == 2
    assert len(capsys.readouterr().out.strip().splitlines()) == 1 and len(pd.read_csv(out)) == 1


def test_parallel_runs_merge_into_one_table_without_latency(tiny_folder: Path, resnet20_ckpt: Path, tmp_path: Path):
    """gpu_tables.sh's path: chains write their own CSVs with --latency-repeats 0; merge_rows.py joins them per
    budget, the ceiling in each; the report then shows no latency columns and says why."""
    base = quick_cmd("bench_kd_resnet20.yaml", tiny_folder, resnet20_ckpt, "--latency-repeats", "0")
    chains = {"c1": ("ceiling", "0.5"), "c2": ("uniform", "0.5,0.3")}
    for name, (methods, budgets) in chains.items():
        cmd = base + ["--methods", methods, "--budgets", budgets, "--out", f"csv/{name}.csv", "--work", f"w/{name}"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "latency64_base_ms" not in pd.read_csv(tmp_path / "csv" / "c2.csv").columns

    merge = ROOT / "benchmarks" / "merge_rows.py"
    for budget, into in (("0.5", "m05.csv"), ("0.3", "m03.csv")):
        cmd = [sys.executable, str(merge), "--into", into, "--budgets", budget, "csv/c1.csv", "csv/c2.csv"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
    for into, budget in (("m05.csv", 0.5), ("m03.csv", 0.3)):
        df = pd.read_csv(tmp_path / into)
        assert sorted(df["method"]) == ["ceiling", "uniform"]
        assert float(df.loc[df["method"] == "uniform", "budget"].iloc[0]) == budget
        meta = json.loads((tmp_path / into).with_suffix(".meta.json").read_text())
        assert meta["config"]["budgets"] == [budget] and "merge_rows.py" in meta["runs"][-1]["command"]

    text = _report(tmp_path / "m03.csv", tmp_path)
    assert "at 0.3 of the MACs" in text and "latency ratio" not in text
    assert "not measured here (the rows ran as parallel jobs" in text


def test_merged_meta_takes_a_version_only_one_input_knows(tmp_path: Path):
    """A modelopt row run from its own venv brings the modelopt version into the merged table's host."""
    merge_rows = _module(ROOT / "benchmarks" / "merge_rows.py", "merge_rows")
    inputs = (("a", "ceiling", {"modelopt": None, "cpu": "x"}), ("b", "modelopt", {"modelopt": "9.9"}))
    for name, method, host in inputs:
        pd.DataFrame([{"method": method, "budget": 1.0 if method == "ceiling" else 0.5, "seed": 0}]).to_csv(
            tmp_path / f"{name}.csv", index=False
        )
        meta = {"config_hash": "h", "config": {"methods": [method]}, "host": host, "runs": []}
        (tmp_path / f"{name}.meta.json").write_text(json.dumps(meta))
    merge_rows.merge([tmp_path / "a.csv", tmp_path / "b.csv"], tmp_path / "m.csv", [0.5])
    meta = json.loads((tmp_path / "m.meta.json").read_text())
    assert meta["host"] == {"modelopt": "9.9", "cpu": "x"}
    assert sorted(pd.read_csv(tmp_path / "m.csv")["method"]) == ["ceiling", "modelopt"]


def test_rows_merged_into_a_table_of_another_budget_keep_both_and_name_what_is_missing(tmp_path: Path):
    """0.3 rows merged into a 0.5 table: both budgets stay in the meta, the searches are said to be separate
    (not one averaged over both), and a method the recipe names that lacks a budget is named with it."""
    merge_rows = _module(ROOT / "benchmarks" / "merge_rows.py", "merge_rows")
    report = _module(ROOT / "benchmarks" / "report.py", "report")
    cfg = {"methods": ["ceiling", "lcp"], "budgets": [0.5], "seeds": [0]}
    rows = [("ceiling", 1.0), ("lcp", 0.5)]
    pd.DataFrame([{"method": m, "budget": b, "seed": 0} for m, b in rows]).to_csv(tmp_path / "t.csv", index=False)
    meta = {"config_hash": "h", "config": cfg, "host": {}, "runs": [], "search_budgets": [0.5]}
    (tmp_path / "t.meta.json").write_text(json.dumps(meta))
    pd.DataFrame([{"method": m, "budget": 0.3, "seed": 0} for m in ("lcp", "global")]).to_csv(
        tmp_path / "n.csv", index=False
    )
    new = {**meta, "config": {**cfg, "budgets": [0.3], "methods": ["lcp", "global"]}, "search_budgets": [0.3]}
    (tmp_path / "n.meta.json").write_text(json.dumps(new))
    merge_rows.merge([tmp_path / "n.csv"], tmp_path / "t.csv", [0.3])
    merged = json.loads((tmp_path / "t.meta.json").read_text())
    assert merged["config"]["budgets"] == merged["search_budgets"] == [0.3, 0.5]
    assert merged["searched_separately"] is True
    df = pd.read_csv(tmp_path / "t.csv")
    assert sorted(zip(df["method"], df["budget"])) == [("ceiling", 1.0), ("global", 0.3), ("lcp", 0.3), ("lcp", 0.5)]
    recipe = tmp_path / "r.yaml"
    recipe.write_text("methods: [ceiling, lcp, global, uniform]\n")
    text = report.methods_not_run(df, {"recipe": str(recipe), "config": {}})
    assert "`global` at 0.5, `uniform` (named in" in text


def test_transfer_task_is_the_animal_classes_of_cifar10(tmp_path: Path, monkeypatch):
    """benchmarks/transfer.py's second task: links to the six animal classes of each split, made once."""
    spec = importlib.util.spec_from_file_location("transfer", ROOT / "benchmarks" / "transfer.py")
    transfer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(transfer)
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    for split in ("train", "test"):
        for c in classes:
            (tmp_path / "data" / "cifar10" / split / c).mkdir(parents=True)
    (tmp_path / "data" / "cifar10" / "train" / "cat" / "0.jpg").write_bytes(b"x")
    monkeypatch.setenv("LCP_DATA", str(tmp_path / "data"))
    for _ in range(2):  # the second call finds the links made
        root = transfer.task_folder(tmp_path / "work")
    for split in ("train", "test"):
        assert sorted(p.name for p in (root / split).iterdir()) == sorted(transfer.ANIMALS)
    assert (root / "train" / "cat" / "0.jpg").read_bytes() == b"x"
    monkeypatch.setenv("LCP_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(SystemExit, match="LCP_DATA/cifar10 is missing"):
        transfer.task_folder(tmp_path / "work2")


def test_search_rescore_recuts_the_searchs_best_candidates(tiny_folder: Path, resnet20_ckpt: Path, tmp_path: Path):
    """``benchmarks/search_rescore.py``: the search's best candidate, cut again from its vector, is the network
    the run saved (same widths, same test accuracy after the same recalibration); distinct cuts only; a folder
    without an lcp search is refused (exit 2)."""
    import lcp
    from lcp.models.store import widths
    from lcp.run.config import PruneConfig
    from lcp.run.load import load_model_and_data
    from lcp.training.evaluate import evaluate, recalibrate_bn
    from tests.helpers import lcp_cli, tiny_args

    rs = _module(ROOT / "benchmarks" / "search_rescore.py", "bench_search_rescore")
    out = tmp_path / "run"
    args = tiny_args(tiny_folder, resnet20_ckpt, out, "--method", "lcp", "--candidates", "6", "--threads", "1")
    assert lcp_cli(*args).code == 0
    threads = torch.get_num_threads()
    try:
        rows = rs.rescore(out, top=3, threads=1, log=lambda _: None)
        saved = lcp.load(out)
        cfg = PruneConfig(model="resnet20", data=str(tiny_folder), checkpoint=str(resnet20_ckpt), holdout=9)
        loaded = load_model_and_data(cfg, log=lambda *a, **k: None)
        recalibrate_bn(saved, loaded.bundle.loader("train", 128, shuffle=True, augment=False, seed=0), batches=20)
        test = evaluate(saved, loaded.bundle.loader("test", 256))["top1"]
    finally:
        torch.set_num_threads(threads)
    assert 1 <= len(rows) <= 3 and len({tuple(r["widths"].items()) for r in rows}) == len(rows)  # distinct cuts
    assert [r["search_fitness"] for r in rows] == sorted(r["search_fitness"] for r in rows)
    assert rows[0]["widths"] == {n: w[0] for n, w in widths(saved).items()}  # the network the run saved
    assert rows[0]["test_top1"] == pytest.approx(test)  # recalibrated alike
    assert rs.main([str(tmp_path)]) == 2


def test_latency_benchmark_times_both_networks_in_onnx_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    """benchmarks/latency.py --runtime onnxruntime: the re-timing runs the exported original and the exported
    pruned network (the row says so); widths keep the asked multiple, halved for narrow groups."""
    pytest.importorskip("onnxruntime")
    bench = _module(REPO / "benchmarks" / "latency.py", "bench_latency")
    timed = []
    real = bench.in_runtime
    monkeypatch.setattr(bench, "in_runtime", lambda m, rt, *a: timed.append(rt) or real(m, rt, *a))
    df = bench.run(
        ["resnet20"], [0.5], threads=1, repeats=2, big_batch=2, rounds=1, min_seconds=0.0,
        kinds=("macs",), image_size=16, round_to="16", runtime="onnxruntime",
    )  # fmt: skip
    row = df.iloc[0]
    assert row["status"] == "ok" and row["runtime"] == "onnxruntime" and row["round_to"] == 16
    assert timed == ["onnxruntime", "onnxruntime"] and row["latency_ratio_b1"] > 0 and 0.45 < row["macs_ratio"] <= 0.5


def test_a_signature_of_digits_reads_back_unchanged(tmp_path: Path) -> None:
    """A row's config signature is a hex string that can be all digits: read back as a number it would lose its
    leading zero, no longer match, and the row would run again."""
    compare = _module(COMPARE, "bench_compare")
    path = tmp_path / "rows.csv"
    path.write_text("method,config\nglobal,0123\nlcp,ab12\n")
    assert compare.read_rows(path)["config"].tolist() == ["0123", "ab12"]


def test_the_committed_pages_are_generated_from_the_committed_csvs(tmp_path: Path) -> None:
    """docs/benchmarks.md and docs/recovery.md are what the scripts make of benchmarks/results/ today: a CSV
    committed without regenerating its page fails here."""
    report = _module(REPORT, "bench_report")
    md, png = tmp_path / "benchmarks.md", tmp_path / "benchmarks.png"
    assert report.main(["--md", str(md), "--png", str(png)]) == 0
    assert md.read_text().replace(f" --md {md} --png {png}", "") == (ROOT / "docs" / "benchmarks.md").read_text()
    recovery = _module(ROOT / "benchmarks" / "recovery.py", "bench_recovery")
    assert recovery.main(["--report", "--md", str(tmp_path / "recovery.md")]) == 0
    assert (tmp_path / "recovery.md").read_text() == (ROOT / "docs" / "recovery.md").read_text()


def test_rows_of_another_recipe_are_not_merged_into_a_table(tmp_path: Path):
    merge_rows = _module(ROOT / "benchmarks" / "merge_rows.py", "merge_rows")
    for name, digest in (("t", "three-epochs"), ("n", "one-epoch")):
        pd.DataFrame([{"method": "lcp", "budget": 0.5, "seed": 0}]).to_csv(tmp_path / f"{name}.csv", index=False)
        meta = {"config_hash": digest, "config": {"methods": ["lcp"]}, "host": {}, "runs": []}
        (tmp_path / f"{name}.meta.json").write_text(json.dumps(meta))
    before = (tmp_path / "t.csv").read_text()
    with pytest.raises(SystemExit, match="holds rows of another recipe"):
        merge_rows.merge([tmp_path / "n.csv"], tmp_path / "t.csv", [0.5])
    assert (tmp_path / "t.csv").read_text() == before


def test_a_merge_keeps_only_the_runs_that_made_its_rows(tmp_path: Path):
    """The table's wall time and dates come from ``runs``: a run of another budget whose rows were not merged,
    or one that finished no row, stays out."""
    merge_rows = _module(ROOT / "benchmarks" / "merge_rows.py", "merge_rows")
    rows = [
        ("lcp", 0.5, "2026-12-01T10:30:00+00:00"),
        ("lcp", 0.3, "2026-12-01T12:30:00+00:00"),
        ("uniform", 0.5, "2026-12-01T15:30:00+00:00"),
    ]
    pd.DataFrame([{"method": m, "budget": b, "seed": 0, "finished": f} for m, b, f in rows]).to_csv(
        tmp_path / "a.csv", index=False
    )
    runs = [
        {"command": "one", "started": "2026-12-01T10:00:00+00:00", "finished": "2026-12-01T11:00:00+00:00"},
        {"command": "two", "started": "2026-12-01T12:00:00+00:00", "finished": "2026-12-01T13:00:00+00:00"},
        {"command": "none", "started": "2026-12-01T14:00:00+00:00", "finished": "2026-12-01T14:01:00+00:00"},
        {"command": "cut off early", "started": "2026-12-01T09:00:00+00:00"},  # ended before "one" started
        {"command": "cut off", "started": "2026-12-01T15:00:00+00:00"},  # made the uniform row, then was killed
    ]
    meta = {"config_hash": "h", "config": {"methods": ["lcp", "uniform"]}, "host": {}, "runs": runs}
    (tmp_path / "a.meta.json").write_text(json.dumps(meta))
    merge_rows.merge([tmp_path / "a.csv"], tmp_path / "m.csv", [0.5], "merge")
    merged = json.loads((tmp_path / "m.meta.json").read_text())
    assert [r["command"] for r in merged["runs"]] == ["one", "cut off", "merge"]
    merge_rows.merge([tmp_path / "a.csv"], tmp_path / "m.csv", [0.5], "again")  # the meta updated, not replaced
    merged = json.loads((tmp_path / "m.meta.json").read_text())
    assert [r["command"] for r in merged["runs"]] == ["one", "cut off", "merge", "again"]


def test_the_latency_sentence_follows_the_rows_not_the_last_runs_config():
    """A table timed by one run and extended by untimed ones (or merged from both) must not claim every row was
    timed, whatever the config it kept says."""
    report = _module(ROOT / "benchmarks" / "report.py", "report")
    csv = ROOT / "benchmarks" / "results" / "compare_resnet20.csv"
    df, meta = pd.read_csv(csv), json.loads(csv.with_suffix(".meta.json").read_text())
    assert meta["config"].get("latency_repeats", 20) > 0
    assert "timed back to back for every row" in report.setup_text(df, meta)
    df.loc[df.index[-1], [c for c in df.columns if c.startswith("latency")]] = float("nan")
    text = report.setup_text(df, meta)
    assert "for every row" not in text and "rows with `-` ran beside other jobs" in text


def test_a_row_that_kept_fewer_macs_than_its_budget_is_named():
    """FastNAS's ResNet-56 row stops at 0.463 of the MACs for a 0.5 budget: the findings say it ran with less."""
    report = _module(ROOT / "benchmarks" / "report.py", "report")
    s = report.summarise(pd.read_csv(ROOT / "benchmarks" / "results" / "compare_bn_resnet56.csv"))
    assert "`modelopt` kept 0.463 of the MACs, more than 0.01 under the budget" in report.findings_text(s)
    assert "under the budget" not in report.findings_text(s, macs_budget=False)
    assert "under the budget" not in report.findings_text(s[s["method"] != "modelopt"])
    over = s.copy()
    over.loc[over["method"] == "modelopt", "macs_ratio"] = 0.5008  # what a 0.1% tolerance let through
    assert "`modelopt` kept 0.5008 of the MACs, over the budget" in report.findings_text(over)
    assert "over the budget" not in report.findings_text(s)


def test_the_latency_benchmark_writes_each_row_and_keeps_them_on_a_rerun(capsys, tmp_path: Path):
    """benchmarks/latency.py saves after every row; a rerun with the same settings measures nothing again, one
    with other settings measures again."""
    latency = _module(ROOT / "benchmarks" / "latency.py", "bench_latency")
    quick = dict(rounds=1, min_seconds=0.0, cut_repeats=1, kinds=("macs",), image_size=16)
    threads = torch.get_num_threads()
    try:
        saved: list[list[dict]] = []
        first = latency.run(["resnet20"], [0.5, 0.3], 1, 2, 2, save=lambda rows: saved.append(list(rows)), **quick)
        assert [len(s) for s in saved] == [1, 2] and len(first) == 2
        first.to_csv(tmp_path / "l.csv", index=False)
        written = pd.read_csv(tmp_path / "l.csv")  # as a rerun reads it: empty cells are NaN
        again = latency.run(["resnet20"], [0.5, 0.3], 1, 2, 2, prior=written, **quick)
        assert capsys.readouterr().out.count("kept from the earlier run") == 2
        assert list(again["macs_ratio"]) == list(first["macs_ratio"])
        assert set(first["machine"]) == {latency._machine("cpu")}
        for other in ({"repeats": 3}, {"big_batch": 4}, {"image_size": 24}):  # other settings: measured again
            kw = {"models": ["resnet20"], "budgets": [0.5], "threads": 1, "repeats": 2, "big_batch": 2, **quick}
            latency.run(**{**kw, **other}, prior=written)
            assert "kept from the earlier run" not in capsys.readouterr().out, other
    finally:
        torch.set_num_threads(threads)


def test_a_run_that_made_no_row_stays_out_of_a_tables_dates_and_time():
    """The page's dates and run time are those of the runs that made its rows: a run still going (or killed)
    before its first row stays out, and so does a finished run of other rows; a run cut off after it made a
    row no finished run explains stays in, ending at the next start of a run on the same ``--out``."""
    report = _module(REPORT, "bench_report_runs")
    t = "2026-12-06T{}:00+00:00".format
    made = {"command": "compare.py --out a.csv", "started": t("10:00"), "finished": t("11:00"), "wall_s": 3600.0}
    other = {"command": "compare.py --out b.csv", "started": t("10:00"), "finished": t("10:20"), "wall_s": 1200.0}
    going = {"command": "compare.py --out a.csv", "started": t("12:00")}  # no row yet: it would stretch the dates
    cut = {"command": "compare.py --out d.csv", "started": t("08:00")}  # cut off after its row at 08:30
    after = {"command": "compare.py --out d.csv", "started": t("08:45"), "finished": t("08:50"), "wall_s": 300.0}
    meta = {"runs": [cut, after, made, other, going]}
    df = pd.DataFrame({"method": ["lcp", "global"], "finished": [t("10:30"), t("08:30")]})
    runs = report._runs(meta, df)
    assert runs == [cut, made]
    assert report._dates(runs, df) == "2026-12-06 08:00 to 2026-12-06 11:00" and report._wall(runs) == 3600.0
    assert report._dates(meta["runs"], df) == "2026-12-06 08:00 to 2026-12-06 12:00"  # what the page said before
    # the cut-off run has no run time: the page sums the rows' own seconds instead of undercounting
    assert report._unfinished(runs) and not report._unfinished([made, other])
    # a run still going that made a row: the dates end at that row, not at the run's start
    first = pd.DataFrame({"method": ["ads"], "finished": [t("13:30")]})
    assert report._runs({"runs": [going]}, first) == [going]
    assert report._dates([going], first) == "2026-12-06 12:00 to 2026-12-06 13:30"
    assert report._dates([going], pd.DataFrame({"method": ["ads"]})) == "2026-12-06 12:00"  # rows without times
    assert (
        report._dates([going], pd.DataFrame({"finished": ["2026-12-06T14:00:00+01:00"]}))
        == "2026-12-06 12:00 to 2026-12-06 13:00"
    )
    # parallel chains: a run of other budgets that ran while the row was made is not the row's
    chain = {**made, "command": "compare.py --methods lcp --budgets 0.5 --out c.csv", "wall_s": 600.0}
    own = {**made, "command": "compare.py --methods lcp --budgets 0.3 --seeds 0 --out e.csv"}
    rows = pd.DataFrame({"method": ["lcp"], "budget": [0.3], "seed": [0], "finished": [t("10:30")]})
    assert report._runs({"runs": [chain, own]}, rows) == [own]
    # times compared as times, not strings: 10:00+01:00 is 09:00 UTC, before the cut-off run's 09:30
    early = {"command": "compare.py --out d.csv", "started": "2026-12-06T10:00:00+01:00", "finished": t("09:10")}
    cut2 = {"command": "compare.py --out=d.csv", "started": t("09:30")}
    rows = pd.DataFrame({"method": ["lcp"], "finished": [t("09:45")]})
    assert report._runs({"runs": [early, cut2]}, rows) == [cut2]
    # a run without --out wrote the recipe's CSV: a later run on it (any spelling of its path) bounds it
    killed = {"command": "compare.py", "started": t("08:00")}
    later = {"command": "compare.py --out /x/benchmarks/results/r.csv", "started": t("10:00"), "finished": t("11:00")}
    meta = {"runs": [killed, later], "config": {"out": "benchmarks/results/r.csv"}}
    assert report._runs(meta, pd.DataFrame({"method": ["lcp"], "finished": [t("10:30")]})) == [later]
    # rows without times: every run, as before
    assert report._runs(meta, pd.DataFrame({"method": ["lcp"]})) == [killed, later]


def test_refit_cost_times_the_default_refit(capsys) -> None:
    """``benchmarks/refit_cost.py`` refits a global cut on random images and says how many layers, images, seconds."""
    cost = _module(ROOT / "benchmarks" / "refit_cost.py", "bench_refit_cost")
    threads = torch.get_num_threads()
    try:
        assert cost.main(["--model", "resnet20", "--image-size", "16", "--images", "40", "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    line = capsys.readouterr().out.strip()
    assert line.startswith("resnet20 at 16 px, budget 0.5, 1 thread(s): refitted ") and " on 40 images in " in line
    assert int(line.split("refitted ")[1].split()[0]) > 0


def test_recovery_hints_tap_each_resolutions_last_block_and_ignore_widths():
    """The attention-transfer variant (``hint``): it taps each resolution's last block, compares attention maps
    that do not depend on the width or the scale, and leaves no hooks behind."""
    import lcp

    rec = _module(ROOT / "benchmarks" / "recovery.py", "bench_recovery_hints")
    x = torch.randn(2, 3, 32, 32)
    assert rec.hint_layers(lcp.create_model("resnet20"), x) == ["layer1", "layer2", "layer3"]
    mobilenet = ["features.1", "features.3", "features.6", "features.13", "features"]  # the last: its 4x4 output
    assert rec.hint_layers(lcp.create_model("mobilenetv2"), x) == mobilenet
    f = torch.randn(3, 16, 8, 8)
    a = rec.attention_map(f)
    assert a.shape == (3, 64) and torch.allclose(a.norm(dim=1), torch.ones(3))
    assert torch.allclose(rec.attention_map(2 * f), a)  # scale-free
    assert rec.attention_loss([f], [torch.cat([f, f], 1)]).item() < 1e-12  # the same channels twice: the same map
    assert rec.attention_loss([f], [torch.randn(3, 5, 8, 8)]).item() > 0
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 3, stride=2, padding=1)
    )
    x = torch.randn(1, 3, 8, 8)
    assert rec.hint_layers(net, x) == ["1", "2"]
    with rec.taps(net, ["1", "2"]) as out:
        net(x)
        assert [tuple(t.shape) for t in out] == [(1, 4, 8, 8), (1, 2, 4, 4)]
    net(x)
    assert len(out) == 2 and all(not m._forward_hooks for m in net.modules())  # closed: nothing taps any more


def _table(path: Path, rows: list[dict], meta: dict | None = None) -> None:
    pd.DataFrame(rows).to_csv(path, index=False)
    base = {"config_hash": "h", "config": {"methods": sorted({r["method"] for r in rows})}, "host": {}, "runs": []}
    path.with_suffix(".meta.json").write_text(json.dumps({**base, **(meta or {})}))


def test_a_failed_or_skipped_row_never_replaces_a_finished_one(tmp_path: Path, capsys):
    """merge_rows.py: an error or skipped row of the same method, budget and seed leaves the ok row in place,
    whether the ok row is in the table or in another input; a failed row with no finished one is merged."""
    merge_rows = _module(ROOT / "benchmarks" / "merge_rows.py", "merge_rows")
    ok = [{"method": "lcp", "budget": 0.5, "seed": 0, "top1_pruned": 88.0, "status": "ok"}]
    _table(tmp_path / "t.csv", ok)
    bad = [
        {"method": "lcp", "budget": 0.5, "seed": 0, "status": "error: CUDA out of memory"},
        {"method": "modelopt", "budget": 0.5, "seed": 0, "status": "skipped: nvidia-modelopt is not installed"},
        {"method": "global", "budget": 0.5, "seed": 0, "status": "error: boom"},
    ]
    _table(tmp_path / "bad.csv", bad)
    good = [{"method": "modelopt", "budget": 0.5, "seed": 0, "top1_pruned": 87.0, "status": "ok"}]
    _table(tmp_path / "good.csv", good)
    merge_rows.merge([tmp_path / "good.csv", tmp_path / "bad.csv"], tmp_path / "t.csv", [0.5])
    df = pd.read_csv(tmp_path / "t.csv").set_index("method")
    assert df.loc["lcp", "status"] == "ok" and df.loc["lcp", "top1_pruned"] == 88.0
    assert df.loc["modelopt", "status"] == "ok" and df.loc["modelopt", "top1_pruned"] == 87.0
    assert df.loc["global", "status"] == "error: boom"
    assert "kept the finished row of lcp" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("column", "old", "new", "refused"),
    [
        ("config", "aaaa", "bbbb", True),  # e.g. amc rows with another number of episodes
        ("search_candidates", "40", "80", True),
        ("search_candidates", "80.0", "80", False),  # one count, written with and without gaps in the column
        ("search_budgets", "0.3;0.5", "0.5", True),  # one search fitted at both budgets, one at 0.5 alone
    ],
)
def test_a_merge_refuses_rows_of_one_method_made_with_other_settings(tmp_path: Path, column, old, new, refused):
    """Rows of one method whose settings differ would be averaged as one by the report: the merge is refused
    and the table left as it was (a replaced row does not count)."""
    merge_rows = _module(ROOT / "benchmarks" / "merge_rows.py", "merge_rows")
    rows = [{"method": "lcp", "budget": 0.5, "seed": s, "status": "ok", column: old} for s in (0, 1)]
    _table(tmp_path / "t.csv", rows)
    before = (tmp_path / "t.csv").read_text()
    _table(tmp_path / "n.csv", [{"method": "lcp", "budget": 0.5, "seed": 2, "status": "ok", column: new}])
    if refused:
        with pytest.raises(SystemExit, match=f"lcp rows with {column}"):
            merge_rows.merge([tmp_path / "n.csv"], tmp_path / "t.csv", [0.5])
        assert (tmp_path / "t.csv").read_text() == before
    else:
        merge_rows.merge([tmp_path / "n.csv"], tmp_path / "t.csv", [0.5])
        assert sorted(pd.read_csv(tmp_path / "t.csv")["seed"]) == [0, 1, 2]
    replacing = [{"method": "lcp", "budget": 0.5, "seed": s, "status": "ok", column: new} for s in (0, 1)]
    _table(tmp_path / "r.csv", replacing)  # every old row replaced: one setting again
    merge_rows.merge([tmp_path / "r.csv"], tmp_path / "t.csv", [0.5])


@pytest.mark.parametrize(
    ("old", "new", "refused"),
    [
        ({"base_weights": "aaaa", "top1_base": 83.8}, {"base_weights": "bbbb", "top1_base": 83.8}, True),
        ({"top1_base": 83.81}, {"base_weights": "bbbb", "top1_base": 84.2}, True),  # a row older than the column
        ({"top1_base": 89.58}, {"base_weights": "bbbb", "top1_base": 89.57}, False),  # one network, CPU and CUDA
    ],
)
def test_a_merge_refuses_rows_cut_from_another_baseline(tmp_path: Path, old, new, refused):
    """Rows of different baselines (e.g. the network trained again after a lost run) are never one table."""
    merge_rows = _module(ROOT / "benchmarks" / "merge_rows.py", "merge_rows")
    _table(tmp_path / "t.csv", [{"method": "ads", "budget": 0.5, "seed": 0, "status": "ok", **old}])
    before = (tmp_path / "t.csv").read_text()
    _table(tmp_path / "n.csv", [{"method": "uniform", "budget": 0.5, "seed": 0, "status": "ok", **new}])
    if refused:
        with pytest.raises(SystemExit, match="more than one baseline"):
            merge_rows.merge([tmp_path / "n.csv"], tmp_path / "t.csv", [0.5])
        assert (tmp_path / "t.csv").read_text() == before
    else:
        merge_rows.merge([tmp_path / "n.csv"], tmp_path / "t.csv", [0.5])
        assert sorted(pd.read_csv(tmp_path / "t.csv")["method"]) == ["ads", "uniform"]


def test_a_ceiling_merge_adds_no_budget_and_keeps_the_search_budgets(tmp_path: Path):
    """The ceiling's budget 1 is not a pruning budget, and the table's search budgets are those its lcp
    searches were fitted at (the inputs'), not the merge's --budgets."""
    merge_rows = _module(ROOT / "benchmarks" / "merge_rows.py", "merge_rows")
    cfg = {"methods": ["lcp"], "budgets": [0.5], "seeds": [0]}
    meta = {"config": cfg, "search_budgets": [0.3, 0.5]}
    _table(tmp_path / "n.csv", [{"method": "lcp", "budget": 0.5, "seed": 0, "status": "ok"}], meta)
    merge_rows.merge([tmp_path / "n.csv"], tmp_path / "t.csv", [0.5])
    merged = json.loads((tmp_path / "t.meta.json").read_text())
    assert merged["search_budgets"] == [0.3, 0.5] and not merged.get("searched_separately")
    _table(tmp_path / "c.csv", [{"method": "ceiling", "budget": 1.0, "seed": 1, "status": "ok"}], {"config": cfg})
    merge_rows.merge([tmp_path / "c.csv"], tmp_path / "t.csv", [1.0])
    merged = json.loads((tmp_path / "t.meta.json").read_text())
    assert merged["config"]["budgets"] == [0.5] and merged["search_budgets"] == [0.3, 0.5]
    assert not merged.get("searched_separately") and merged["config"]["seeds"] == [0, 1]


def test_extra_seeds_give_the_ceiling_one_row_per_seed_at_budget_one():
    """A recipe's extra_seeds: the unpruned network is fine-tuned once per extra seed (budget 1), not once per
    pruning budget."""
    compare = _module(COMPARE, "bench_compare")
    cfg = {
        "seeds": [0],
        "budgets": [0.5, 0.3],
        "methods": ["ceiling", "lcp", "uniform"],
        "extra_seeds": {"seeds": [1], "methods": ["ceiling", "lcp"]},
    }
    extra = [t for t in compare.tasks(cfg) if t[2] == 1]
    assert extra == [("ceiling", 1.0, 1), ("lcp", 0.5, 1), ("lcp", 0.3, 1)]


def test_lcp_rows_fitted_at_other_budgets_are_named(tmp_path: Path):
    """A search averaged over 0.3 and 0.5 and one at 0.5 alone cut other networks: rows of the first are named
    to a run of the second at the same budget (which compare.py then refuses), not at another budget; the cells
    are read back from the CSV as text; rows without the cell take the meta's budgets, unless the table's
    searches ran separately."""
    compare = _module(COMPARE, "bench_compare")
    cfg = {"budgets": [0.5], "search": {"search_budget": None}}
    assert compare.fitted_at_text(cfg) == "0.5"
    assert compare.fitted_at_text({"budgets": [0.5, 0.3], "search": {"search_budget": None}}) == "0.3;0.5"
    assert compare.fitted_at_text({"budgets": [0.5, 0.3], "search": {"search_budget": 0.3}}) == "0.3"
    rows = pd.DataFrame(
        [
            {"method": "lcp", "budget": 0.5, "seed": 0, "status": "ok", "search_budgets": "0.3;0.5"},
            {"method": "lcp", "budget": 0.5, "seed": 1, "status": "ok", "search_budgets": "0.5"},
            {"method": "lcp", "budget": 0.5, "seed": 2, "status": "error: x", "search_budgets": "0.2"},
        ]
    )
    assert compare.searched_at_other_budgets(rows, cfg, {}, {0.5}) == ["0.3;0.5"]
    assert compare.searched_at_other_budgets(rows, cfg, {}, {0.3}) == []  # no lcp row at 0.3 to mix with
    one = pd.DataFrame([{"method": "lcp", "budget": 0.3, "seed": 0, "status": "ok", "search_budgets": "0.3"}])
    one.to_csv(tmp_path / "t.csv", index=False)
    assert compare.searched_at_other_budgets(compare.read_rows(tmp_path / "t.csv"), cfg, {}, {0.3}) == ["0.3"]
    legacy = pd.DataFrame([{"method": "lcp", "budget": 0.5, "seed": 0, "status": "ok"}])
    assert compare.searched_at_other_budgets(legacy, cfg, {"search_budgets": [0.3, 0.5]}, {0.5}) == ["0.3;0.5"]
    separately = {"search_budgets": [0.3, 0.5], "searched_separately": True}
    assert compare.searched_at_other_budgets(legacy, cfg, separately, {0.5}) == []
    assert compare.searched_at_other_budgets(legacy, cfg, {"search_budgets": [0.5]}, {0.5}) == []


def test_recovery_gap_to_the_ceiling_is_paired_by_seed(tmp_path: Path):
    """docs/recovery.md's gap: the ceiling minus the pruned network on the seeds both have, not the difference
    of means over different seeds (pruned seeds 0 and 1, ceiling seed 0 only)."""
    rec = _module(ROOT / "benchmarks" / "recovery.py", "bench_recovery")
    out = tmp_path / "recovery_x.csv"
    recipe = tmp_path / "recovery_x.yaml"
    recipe.write_text(f"model: resnet20\ncut: {tmp_path}\nout: {out}\nvariants:\n  plain: {{lr: 0.01, epochs: 1}}\n")
    v = rec.read_recipe(recipe)["variants"]["plain"]
    base = {"model": "resnet20", "cut": str(tmp_path), "macs_ratio": 0.5, "variant": "plain", **v}
    base.update(top1_noft=50.0, holdout_top1=80.0, finetune_s=1.0, host="vm", date="2026-12-07")
    rows = [
        {**base, "net": "pruned", "seed": 0, "top1": 80.0},
        {**base, "net": "pruned", "seed": 1, "top1": 84.0},
        {**base, "net": "ceiling", "seed": 0, "top1": 90.0, "macs_ratio": 1.0},
    ]
    pd.DataFrame(rows).to_csv(out, index=False)
    text = rec.report([recipe], tmp_path / "recovery.md")
    row = next(r for r in text.splitlines() if r.startswith("| plain |")).split("|")
    assert row[14].strip() == "82.00 ± 2.83" and row[16].strip() == "90.00"
    assert row[17].strip() == "10.00"  # seed 0: 90 - 80 (unpaired it would be 8.00)


def test_a_latency_rerun_of_some_models_keeps_the_other_rows():
    """benchmarks/latency.py --out: a rerun of one model (or budget, or budget kind) keeps the rows of the
    others; only the rows it makes itself are replaced."""
    latency = _module(ROOT / "benchmarks" / "latency.py", "bench_latency")
    row = {"model": "resnet56", "budget_type": "latency_b64", "budget": 0.5}
    assert latency._planned(row, ["resnet56"], [0.5], ["latency"])
    assert not latency._planned(row, ["mobilenetv2"], [0.5], ["macs", "latency"])
    assert not latency._planned(row, ["resnet56"], [0.3], ["latency"])
    assert not latency._planned(row, ["resnet56"], [0.5], ["macs"])
    assert latency._planned({**row, "budget_type": "macs"}, ["resnet56"], [0.5], ["macs"])


def test_a_search_stopped_by_sigterm_keeps_the_time_it_took(tmp_path: Path):
    """compare.py under ``timeout`` (SIGTERM): the interrupted search's time is saved for the resumed run's
    ``search_s`` (Python's default SIGTERM exits without unwinding, and the time was lost)."""
    script = tmp_path / "stop.py"
    script.write_text(
        "import os, signal, sys, time, types\n"
        f"sys.path.insert(0, {str(ROOT / 'benchmarks')!r})\n"
        "import compare\n"
        "compare.exit_on_sigterm()\n"
        "def search():\n"
        "    time.sleep(0.2)\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    time.sleep(30)\n"
        "bench = types.SimpleNamespace(log=print)\n"
        f"compare.Bench._searched(bench, __import__('pathlib').Path({str(tmp_path / 's')!r}), 'x', search)\n"
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 128 + signal.SIGTERM, done.stderr[-2000:]
    partial = json.loads((tmp_path / "s" / "search_partial.json").read_text())
    assert 0.2 <= partial["search_s"] < 30


def test_search_table_keys_its_rows_and_folders_by_budget_rounding_and_device(tmp_path: Path, monkeypatch):
    """benchmarks/search_table.py: a row at 0.5 of the MACs does not stand for a run at 0.3 (nor any width for
    --round-to 16); each setting gets its own run folder, and the command passes --round-to explicitly."""
    st = _module(ROOT / "benchmarks" / "search_table.py", "bench_search_table")
    monkeypatch.setenv("LCP_DATA", str(tmp_path))
    monkeypatch.setenv("LCP_WEIGHTS", str(tmp_path))
    old = {"model": "resnet56", "search_preset": "fast", "seed": 0, "candidates": 80, "best_fitness": 0.4}
    old |= {"top1_pruned_noft": 60.0, "search_s": 10.0}
    pd.DataFrame([old]).to_csv(tmp_path / "t.csv", index=False)  # a row from before the budget column: 0.5
    calls: list[tuple] = []

    def fake_cell(model, preset, optimizer, most, seed, args):
        calls.append((args.budget, args.round_to))
        return {**old, "optimizer": optimizer, "candidates_max": most, "budget": args.budget,
                "round_to": args.round_to, "device": "cpu", "seed": seed}  # fmt: skip

    monkeypatch.setattr(st, "cell", fake_cell)
    base = ["--models", "resnet56", "--seeds", "0", "--out", str(tmp_path / "t.csv")]
    assert st.main(base) == 0 and calls == []  # the default setting: already there
    assert st.main([*base, "--budget", "0.3"]) == 0 and calls == [(0.3, 1)]
    assert st.main([*base, "--round-to", "16"]) == 0 and calls[-1] == (0.5, 16)
    assert st.main([*base, "--budget", "0.3"]) == 0 and len(calls) == 2  # now in the table
    monkeypatch.undo()

    ran: list[list[str]] = []

    def fake_run(cmd, check):
        ran.append(cmd)
        folder = Path(cmd[cmd.index("--out") + 1])
        folder.mkdir(parents=True)
        pd.DataFrame([{"top1_pruned_noft": 60.0, "macs_ratio": 0.3}]).to_csv(folder / "report.csv", index=False)
        search = {"candidates_evaluated": 80, "best_fitness": 0.5, "identity_fitness": 1.0, "seconds": 8.0}
        (folder / "search.json").write_text(json.dumps({**search, "prior_seconds": 2.0}))

    monkeypatch.setattr(st.subprocess, "run", fake_run)
    args = st.parse_args(["--budget", "0.3", "--work", str(tmp_path / "w")])
    st.cell("resnet56", "fast", "legr", 0, 0, args)
    args = st.parse_args(["--budget", "0.5", "--work", str(tmp_path / "w"), "--round-to", "16"])
    st.cell("resnet56", "fast", "legr", 0, 0, args)
    assert len(ran) == 2 and len({c[c.index("--out") + 1] for c in ran}) == 2  # two folders
    assert [c[c.index("--round-to") + 1] for c in ran] == ["1", "16"]


def test_transfer_rows_are_keyed_by_the_source_setting():
    """benchmarks/transfer.py: a row of amc at 0.5 does not stand for lfgcl or 0.3; rows from before the key
    columns read their source and budget from the ``source`` text."""
    tr = _module(ROOT / "benchmarks" / "transfer.py", "bench_transfer")
    legacy = pd.Series(
        {"row": "transfer", "seed": 0, "source": "amc on cifar10 at 0.5 (64.94% there)", "base_epochs": 3}
    )
    assert tr._key(legacy) == ("transfer", 0, "amc", 0.5, 3.0, 1)
    new = pd.Series({"row": "uniform", "seed": 1, "source_method": "lfgcl", "budget": 0.3, "base_epochs": 5,
                     "round_to": 16, "source": "lfgcl on cifar10 at 0.3 (50.00% there)"})  # fmt: skip
    assert tr._key(new) == ("uniform", 1, "lfgcl", 0.3, 5.0, 16)


def test_a_merge_of_chains_seeded_with_the_tables_keeps_a_one_budget_table_one_budget(tmp_path: Path):
    """gpu_tables.sh's chains start from copies of both committed tables (their meta: searched separately at 0.3
    and 0.5) and add lcp rows fitted at 0.5: merged back into the 0.5 table, its search budgets stay [0.5]."""
    merge_rows = _module(ROOT / "benchmarks" / "merge_rows.py", "merge_rows")
    cfg = {"methods": ["lcp"], "budgets": [0.5], "seeds": [0]}
    old = {"method": "lcp", "budget": 0.5, "seed": 0, "status": "ok"}
    _table(tmp_path / "t.csv", [old], {"config": cfg, "search_budgets": [0.5]})
    chain = [old, {"method": "lcp", "budget": 0.3, "seed": 0, "status": "ok"}]
    chain.append({"method": "lcp", "budget": 0.5, "seed": 1, "status": "ok", "search_budgets": "0.5"})
    _table(tmp_path / "c.csv", chain, {"config": cfg, "search_budgets": [0.3, 0.5], "searched_separately": True})
    merge_rows.merge([tmp_path / "c.csv"], tmp_path / "t.csv", [0.5])
    merged = json.loads((tmp_path / "t.meta.json").read_text())
    assert merged["search_budgets"] == [0.5] and not merged.get("searched_separately")
    assert sorted(pd.read_csv(tmp_path / "t.csv")["seed"]) == [0, 1]


def test_agent_curves_read_a_connection_controllers_episodes(tmp_path: Path, capsys) -> None:
    """A controller.csv (ads / lwp) is a run of learning episodes: the table gives its first and last 50 and the best;
    a file of neither kind is one line."""
    curves = _module(ROOT / "benchmarks" / "agent_curves.py", "bench_agent_curves")
    f = tmp_path / "controller.csv"
    rows = ["episode,update,reward,seconds"] + [f"{i},{(i - 1) // 4 + 1},{0.4 + i / 1000},2.0" for i in range(1, 121)]
    f.write_text("\n".join(rows) + "\n")
    assert curves.main([f"ads={f}", "--png", str(tmp_path / "c.png")]) == 0
    line = capsys.readouterr().out.splitlines()[-1]
    assert line.startswith("| ads | 120 | - | - | 0.426 | 0.495 |") and "episode 120, agent" in line
    assert (tmp_path / "c.png").stat().st_size > 0
    bad = tmp_path / "other.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(SystemExit, match="neither an agent.csv"):
        curves.main([f"x={bad}"])
