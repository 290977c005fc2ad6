"""Latency budgets: the per-layer lookup table, the latency cost model and the measured cut.

Timings are never asserted here (benchmarks/latency.py measures them); where the cut's logic is tested,
``lcp.cut.latency.measure`` is replaced by a deterministic stand-in that is a function of the network's MACs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import lcp
import lcp.cut.latency
from lcp.cut import importance as imp
from lcp.cut.latency_table import LatencyTable, LayerTable, input_shapes
from lcp.cut.pruner import prune_graph
from lcp.engine.cost import CostModel
from lcp.engine.graph import build_graph
from lcp.errors import LcpError, UnreachableBudget
from lcp.models.zoo import CifarResNet

SIZE = (3, 16, 16)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def graph():
    torch.manual_seed(0)
    return build_graph(CifarResNet(1).eval(), torch.zeros(1, *SIZE))


def fake_measure(model, input_size, **kw):
    """Deterministic 'latency': 0.1 ms plus 1 ms per million MACs."""
    ms = 0.1 + lcp.count_macs(model, torch.zeros(1, *input_size)) / 1e6
    return {"median_ms": ms, "p10_ms": ms, "p90_ms": ms, "images_per_s": 1e3 / ms}


def fake_time_layer(module, n_in, n_out, depthwise, shapes, *, batch, **kw):
    """The stand-in's per-layer timing: 1 ms per million MACs of the probe layer, so the table is exact."""
    probe = lcp.cut.latency.probe_layer(module, n_in, n_out, depthwise)
    return (
        sum(
            lcp.count_macs(
                probe,
                torch.zeros(1, probe.in_channels, *s[1:])
                if not isinstance(module, nn.Linear)
                else torch.zeros(1, *s[:-1], n_in),
            )
            for s in shapes
        )
        / 1e6
    )


@pytest.fixture
def fake_timing(monkeypatch, tmp_path):
    """Deterministic timings (whole network and per-layer table) and a cache of their own."""
    monkeypatch.setattr(lcp.cut.latency, "measure", fake_measure)
    monkeypatch.setattr(lcp.cut.latency, "time_layer", fake_time_layer)
    monkeypatch.setenv("LCP_CACHE", str(tmp_path / "cache"))


def test_layer_table_interpolates_bilinearly_and_clamps():
    t = LayerTable([2, 4], [10, 20], [[1.0, 3.0], [5.0, 7.0]])
    assert t(2, 10) == 1.0 and t(4, 20) == 7.0
    assert t(3, 15) == pytest.approx(4.0)
    assert t(3, 10) == pytest.approx(3.0) and t(2, 15) == pytest.approx(2.0)
    assert t(1, 5) == 1.0 and t(9, 99) == 7.0  # clamped at the grid's ends
    assert LayerTable.from_json(t.to_json())(3, 15) == pytest.approx(4.0)
    assert t(0, 15) == 0.0 and t(3, 0) == 0.0  # a layer emptied with its residual branch does not run
    depthwise = LayerTable([0], [10, 20], [[1.0, 3.0]])
    assert depthwise(0, 15) == pytest.approx(2.0) and depthwise(0, 0) == 0.0


def test_unexplained_time_goes_with_the_layers_and_leaves_with_a_removed_branch(graph, fake_timing):
    """What the layer timings miss (norms, activations, additions, dispatch: here the stand-in's 0.1 ms) is a
    fixed share per timed layer: width cuts keep it, a layer that no longer runs (a branch removed with
    ``--depth``) takes its share with it."""
    from lcp.engine.depth import allow_depth

    table = LatencyTable.build(graph, repeats=2, warmup=1)
    full = sum(t(t.in_grid[-1], t.out_grid[-1]) for t in table.tables.values())
    shares = table.overhead_ms
    assert set(shares) == set(table.tables) and len(set(shares.values())) == 1
    assert table.const_ms + sum(shares.values()) == pytest.approx(table.base_ms - full)
    ri = next(iter(table.tables))
    t = table.tables[ri]
    assert table.record_ms(ri, t.out_grid[-1], t.in_grid[-1]) == pytest.approx(t.ms[-1][-1] + shares[ri])
    assert table.record_ms(ri, 0, t.in_grid[-1]) == 0.0
    allow_depth(graph, True)
    g = next(g for g in graph.groups if graph.depth[g.index])
    cost = CostModel(graph, latency=table)
    for u in g.units[:-1]:
        cost.remove(u)
    one_left = cost.value("latency")
    cost.remove(g.units[-1])  # the branch goes: its two convs and their shares
    assert one_left - cost.value("latency") > 2 * shares[ri] * 0.999


def test_table_covers_every_prunable_layer_and_is_cached(graph):
    table = LatencyTable.build(graph, repeats=2, warmup=1)
    convs = [
        i
        for i, r in enumerate(graph.records)
        if r.kind in ("conv", "linear") and r.in_ids is not None and r.out_ids is not None
    ]
    assert sorted(table.tables) == convs and table.info["timed"] > 0
    assert all(min(min(row) for row in t.ms) > 0 for t in table.tables.values())
    # the prediction at full width is the measured whole network by construction
    cost = CostModel(graph, latency=table)
    assert cost.value("latency") == pytest.approx(table.base_ms)
    again = LatencyTable.build(graph, repeats=2, warmup=1)
    assert again.info["timed"] == 0 and again.info["cache"] == table.info["cache"]
    assert {k: v.ms for k, v in again.tables.items()} == {k: v.ms for k, v in table.tables.items()}
    # a damaged entry (valid JSON, wrong content) is measured again, not a KeyError
    cache = json.loads(Path(table.info["cache"]).read_text())
    first = next(iter(cache))
    cache[first] = {"in": [1], "out": [1]}
    Path(table.info["cache"]).write_text(json.dumps(cache))
    healed = LatencyTable.build(graph, repeats=2, warmup=1)
    assert healed.info["timed"] == 1


def test_the_cache_key_names_the_device(monkeypatch: pytest.MonkeyPatch):
    from lcp.cut.latency_table import _device_key

    assert _device_key("cpu", 1, 2) != _device_key("mps", 1, 2)
    # cuda:N was keyed as the CPU: the card's name and index are in the key (no GPU needed to check it)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda dev=None: "Some GPU")
    keys = {_device_key(d, 1, 2) for d in ("cpu", "cuda", "cuda:0", "cuda:1")}
    assert len(keys) == 3 and _device_key("cuda", 1, 2) == _device_key("cuda:0", 1, 2)
    assert "Some_GPU-1" in _device_key("cuda:1", 1, 2)
    # two CPU models sharing a cache do not share timings (platform.processor() is empty on Linux)
    import lcp.cut.latency_table as table

    cpu_keys = set()
    for model in ("AMD EPYC", "Intel Xeon"):
        monkeypatch.setattr(table, "_cpu_model", lambda model=model: model)
        cpu_keys.add(_device_key("cpu", 1, 2))
    assert len(cpu_keys) == 2


def test_timings_and_the_table_keep_each_submodules_mode():
    """The latency cut times and runs the caller's model: every submodule's flag stays as the caller set it."""
    torch.manual_seed(0)
    model = CifarResNet(1).train()
    model.layer1.eval()
    before = [m.training for m in model.modules()]
    lcp.cut.latency.measure(model, SIZE, warmup=0, repeats=1)
    lcp.cut.latency.peak_memory_mb(model, SIZE, batch=1)
    assert input_shapes(build_graph(model, torch.zeros(1, *SIZE)), {"conv1"}) == {"conv1": [SIZE]}
    assert [m.training for m in model.modules()] == before
    double = build_graph(CifarResNet(1).double(), torch.zeros(1, *SIZE, dtype=torch.float64))
    assert input_shapes(double, {"conv1"}) == {"conv1": [SIZE]}  # run in the model's own dtype


def test_latency_cost_is_incremental_and_needs_a_table(graph):
    table = LatencyTable(
        {
            ri: LayerTable([1, len(r.in_ids)], [1, len(r.out_ids)], [[0.0, 1.0], [1.0, 2.0]])
            for ri, r in enumerate(graph.records)
            if r.kind == "conv" and r.in_ids is not None and r.out_ids is not None
        },
        base_ms=50.0,
        const_ms=3.0,
        info={"layers": 0},
    )
    cost = CostModel(graph, latency=table)
    rng = np.random.default_rng(0)
    units = rng.permutation(graph.prunable_units)[:10]
    for u in units:
        cost.remove(int(u))
    fresh = CostModel(graph, latency=table)
    fresh.n_out, fresh.n_in = list(cost.n_out), list(cost.n_in)
    expected = table.const_ms + sum(table.record_ms(i, o, n) for i, (o, n) in enumerate(zip(fresh.n_out, fresh.n_in)))
    assert cost.value("latency") == pytest.approx(expected)
    assert cost.value("latency") < table.const_ms + sum(t(t.in_grid[-1], t.out_grid[-1]) for t in table.tables.values())
    for u in units:
        cost.restore(int(u))
    assert cost.value("latency") == pytest.approx(CostModel(graph, latency=table).value("latency"))
    with pytest.raises(LcpError, match="latency table"):
        CostModel(graph).value("latency")


def test_latency_cut_meets_the_measured_target(graph, fake_timing):
    base = fake_measure(graph.model, SIZE)["median_ms"]
    for budget in (0.7, 0.5):
        res = prune_graph(
            graph, budget=budget, budget_type="latency", method="global", latency={"batch": 1, "tolerance": 0.05}
        )
        measured = fake_measure(res.model, SIZE)["median_ms"] / base
        assert res.info["latency_ratio"] == pytest.approx(measured)
        assert (1 - 0.05) * budget <= measured <= budget, (budget, measured, res.info)
        assert res.plan.budget_type == "latency" and res.verification.ok


def curved_ms(model, input_size):
    """A 'true' latency the linear table cannot predict: a per-pass term that shrinks slower than MACs."""
    mmacs = lcp.count_macs(model, torch.zeros(1, *input_size)) / 1e6
    return 0.1 + mmacs + 2.0 * mmacs**0.5


@pytest.mark.parametrize("sigma", [0.0, 0.015])
def test_latency_cut_corrects_the_table_and_confirms_under_noise(graph, fake_timing, monkeypatch, sigma):
    rng = np.random.default_rng(0)
    calls: dict[int, int] = {}

    def measure(model, input_size, **kw):
        calls[id(model)] = calls.get(id(model), 0) + 1
        ms = curved_ms(model, input_size) * (1 + sigma * rng.standard_normal())
        return {"median_ms": ms, "p10_ms": ms, "p90_ms": ms, "images_per_s": 1e3 / ms}

    monkeypatch.setattr(lcp.cut.latency, "measure", measure)
    base = curved_ms(graph.model, SIZE)
    for budget in (0.8, 0.6):
        calls.clear()
        res = prune_graph(graph, budget=budget, budget_type="latency", method="global", latency={"batch": 1})
        true = curved_ms(res.model, SIZE) / base
        # the table alone predicts the network too fast: it took more than one walk to correct it
        assert res.info["latency_walks"] > 1, res.info
        # the accepted network was timed at least twice (5 rounds of model and reference each time), until
        # the median of its pooled rounds was known to a quarter of the tolerance
        assert calls[id(res.model)] >= 10 and res.info["latency_timings"] >= res.info["latency_walks"] + 1
        assert res.info["latency_error"] <= 0.05 / 4
        assert 0.95 * budget <= res.info["latency_ratio"] <= budget
        assert 0.95 * budget - 3 * sigma <= true <= budget + 3 * sigma, (budget, true, res.info)


def test_latency_budget_walks_the_same_path_as_macs(graph, fake_timing):
    """One ranking, two stopping rules: a latency-budget network is the MACs-budget network at its own MACs
    ratio, so at equal accuracy it is exactly as fast (docs/latency.md)."""
    for budget in (0.8, 0.5):
        lat = prune_graph(graph, budget=budget, budget_type="latency", method="global", latency={"batch": 1})
        macs = prune_graph(graph, budget=lat.plan.macs_ratio + 1e-12, budget_type="macs", method="global")
        assert lat.plan.removed.any() and np.array_equal(lat.plan.removed, macs.plan.removed)


def test_unreachable_latency_budget_names_the_lowest(graph, fake_timing):
    with pytest.raises(UnreachableBudget, match="latency budget 0.01 cannot be met") as e:
        prune_graph(graph, budget=0.01, budget_type="latency", method="global", latency={"batch": 1})
    assert 0.01 < e.value.lowest < 1


def test_search_fitness_cuts_by_the_latency_table(graph, fake_timing):
    from lcp.cut.ranking import plan

    scores = imp.unit_scores(graph, imp.filter_scores(graph, "l2"), "mean")
    table = LatencyTable.build(graph, repeats=2, warmup=1)
    cost = CostModel(graph, latency=table)
    p = plan(graph, cost, scores, budget=0.8, budget_type="latency", method="global")
    for u in np.nonzero(p.removed)[0]:
        cost.remove(int(u))
    assert cost.value("latency") <= 0.8 * table.base_ms
    assert p.removed.any()


def test_cli_latency_budget_reports_the_measured_ratio(tiny_folder, resnet20_ckpt, tmp_path, fake_timing):
    import csv

    from lcp.cli import main

    out = tmp_path / "lat"
    code = main(
        [
            "prune",
            "--model",
            "resnet20",
            "--data",
            str(tiny_folder),
            "--checkpoint",
            str(resnet20_ckpt),
            "--budget",
            "0.6",
            "--budget-type",
            "latency",
            "--method",
            "global",
            "--finetune-epochs",
            "0",
            "--holdout",
            "9",
            "--batch-size",
            "16",
            "--recal-batches",
            "2",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    row = next(csv.DictReader(open(out / "report.csv")))
    assert row["budget_type"] == "latency"
    ratio = float(row["latency_pruned_ms"]) / float(row["latency_base_ms"])
    assert 0.6 * 0.95 <= ratio <= 0.6 and float(row["speedup"]) == pytest.approx(1 / ratio, rel=1e-3)


@pytest.mark.parametrize("env,per_round", [(None, 100), ("0.1", 10), ("0", 4)])
def test_paired_latency_min_seconds_default_is_read_at_call_time(monkeypatch, env, per_round):
    """``min_seconds`` left out: ``$LCP_MIN_TIMING_SECONDS``, else ``DEFAULT_MIN_SECONDS`` (1 s); 0 turns it off."""
    calls = []

    def measure(model, input_size, *, repeats, **kw):
        calls.append(repeats)
        return {"median_ms": 2.0, "p10_ms": 2.0, "p90_ms": 2.0, "images_per_s": 500.0}

    monkeypatch.setattr(lcp.cut.latency, "measure", measure)
    if env is None:
        monkeypatch.delenv("LCP_MIN_TIMING_SECONDS", raising=False)
    else:
        monkeypatch.setenv("LCP_MIN_TIMING_SECONDS", env)
    net = nn.Linear(2, 2)
    t = lcp.cut.latency.paired_latency(net, net, (2,), rounds=5, repeats=20)
    # 2 ms a pass: min_seconds / 2 ms / 5 rounds timings per round (at least ceil(20 / 5) = 4)
    assert calls[-10:] == [per_round] * 10 and t["ratio"] == 1.0
    assert len(calls) == 10 + (env != "0")  # the estimate of a pass is skipped when min_seconds is 0
    monkeypatch.setattr(lcp.cut.latency, "DEFAULT_MIN_SECONDS", 0.2)
    monkeypatch.delenv("LCP_MIN_TIMING_SECONDS", raising=False)
    calls.clear()
    lcp.cut.latency.paired_latency(net, net, (2,), rounds=5, repeats=20)
    assert calls[-10:] == [20] * 10  # the module default, read when called


def test_bench_times_a_pruned_network_against_its_original_in_alternating_rounds(monkeypatch):
    """A machine that slows down while it times: one network after the other gave the drift as a speed-up
    (lcp bench printed 2.15x for a 1.6x network); alternating rounds give the true ratio."""
    clock = [0]

    def measure(model, input_size, *, batch=1, repeats=20, **kw):
        clock[0] += 1
        ms = model.cost_ms * batch * (1 + 0.05 * clock[0])  # 5% slower at every timing
        return {"median_ms": ms, "p10_ms": 0.9 * ms, "p90_ms": 1.1 * ms, "images_per_s": batch * 1e3 / ms}

    monkeypatch.setattr(lcp.cut.latency, "measure", measure)
    monkeypatch.setenv("LCP_MIN_TIMING_SECONDS", "0")
    original, pruned = nn.Linear(4, 4), nn.Linear(4, 2)
    original.cost_ms, pruned.cost_ms = 10.0, 5.0  # truly 2x
    table = lcp.cut.latency.bench(
        {"original": original, "pruned": pruned}, (4,), batches=(8, 1), compile=False, onnx=False
    )
    assert [(r.model, r.batch) for r in table.itertuples()] == [
        ("original", 8),
        ("original", 1),
        ("pruned", 8),
        ("pruned", 1),
    ]
    speedup = table.set_index(["model", "batch"])["speedup"]
    assert speedup["pruned"].to_numpy() == pytest.approx([2.0, 2.0], rel=0.06)  # each round drifts 5% only
    assert speedup["original"].isna().all()  # the reference has no speed-up of its own
    assert (table["p10_ms"] <= table["median_ms"]).all() and (table["median_ms"] <= table["p90_ms"]).all()
    alone = lcp.cut.latency.bench({"original": original}, (4,), batches=(1,), compile=False, onnx=False)
    assert list(alone["model"]) == ["original"] and "speedup" not in alone


def test_time_gains_per_channel_down_to_the_floor_and_per_whole_branch(graph, fake_timing):
    """The time a channel saves is its group's table saving down to its floor, per channel; a depth unit's
    branch saves its whole time (its layers' fixed shares included) when it goes whole."""
    from lcp.cut.time_aware import time_gains
    from lcp.engine.depth import allow_depth

    table = LatencyTable.build(graph, repeats=2, warmup=1)
    cost = CostModel(graph, latency=table)
    floor = graph.floors(0.1, 2)
    gains, branches = time_gains(graph, cost, floor, np.zeros(len(graph.groups), dtype=bool))
    assert branches == {} and cost.value("latency") == pytest.approx(table.base_ms)  # the cost model as it was
    for g in graph.groups:
        units = [u for u in g.units if graph.units[u].prunable]
        if not units:
            continue
        for u in units[: len(g.units) - int(floor[g.index])]:
            cost.remove(u)
        saved = table.base_ms - cost.value("latency")
        cost.reset()
        assert gains[units] == pytest.approx(saved / (len(g.units) - int(floor[g.index])))
    allow_depth(graph, True)
    _, branches = time_gains(graph, cost, floor, graph.depth)
    assert set(branches) == set(np.nonzero(graph.depth)[0].tolist())
    g = graph.groups[next(iter(branches))]
    for u in g.units:
        cost.remove(u)
    assert branches[g.index] == pytest.approx(table.base_ms - cost.value("latency"))
    cost.reset()


def test_time_aware_walk_removes_whole_branches(graph, fake_timing):
    """A branch is one entry of the time-aware order: the walk removes what is left of its group at once."""
    from lcp.cut.ranking import Walker, ranking
    from lcp.cut.time_aware import time_aware_ranking, time_gains
    from lcp.engine.depth import allow_depth

    allow_depth(graph, True)
    table = LatencyTable.build(graph, repeats=2, warmup=1)
    cost = CostModel(graph, latency=table)
    scores = imp.unit_scores(graph, imp.filter_scores(graph, "l2"), "mean")
    walker = Walker(graph, cost)
    gains, branches = time_gains(graph, cost, walker.floor, walker.depth)
    first = min(branches, key=lambda gi: branches[gi])
    branches = {first: 1e6}  # one branch that saves everything: it comes first
    order = time_aware_ranking(graph, ranking(graph, scores), gains, branches)
    assert order[0] == -(first + 1) and len(order) == len(graph.prunable_units) + 1
    removed, batches = walker.walk(order, 0.999 * table.base_ms, "latency")
    assert batches[0] == graph.groups[first].units and removed[graph.groups[first].units].all()
    assert removed.sum() == len(graph.groups[first].units)


def test_time_aware_ranking_keeps_each_groups_order_and_favours_the_time_it_buys(graph):
    from lcp.cut.ranking import ranking
    from lcp.cut.time_aware import time_aware_ranking

    scores = imp.unit_scores(graph, imp.filter_scores(graph, "l2"), "mean")
    gains = np.where(np.isnan(scores), np.nan, 1.0)
    plain = ranking(graph, scores)
    assert np.array_equal(time_aware_ranking(graph, plain, gains), plain)  # equal gains: the same order
    fast = graph.groups[0].units  # this group's channels save 10x the time of any other
    gains[fast] = 10.0
    order = time_aware_ranking(graph, ranking(graph, scores), gains).tolist()
    plain = ranking(graph, scores).tolist()
    for g in graph.groups:  # within a group, still by score
        mine = [u for u in order if u in set(g.units)]
        assert mine == [u for u in plain if u in set(g.units)]
    assert np.mean([order.index(u) for u in fast]) < np.mean([plain.index(u) for u in fast])
    gains[fast] = 0.0  # saves nothing: last
    assert set(time_aware_ranking(graph, ranking(graph, scores), gains).tolist()[-len(fast) :]) == set(fast)


def test_time_aware_latency_cut_meets_the_target_by_another_path(graph, fake_timing):
    base = fake_measure(graph.model, SIZE)["median_ms"]
    plain = prune_graph(graph, budget=0.6, budget_type="latency", method="global", latency={"batch": 1})
    aware = prune_graph(
        graph, budget=0.6, budget_type="latency", method="global", latency={"batch": 1, "time_aware": True}
    )
    measured = fake_measure(aware.model, SIZE)["median_ms"] / base
    assert 0.95 * 0.6 <= measured <= 0.6 and aware.verification.ok
    assert not np.array_equal(aware.plan.removed, plain.plan.removed)


def test_time_aware_needs_a_latency_budget(tiny_folder, resnet20_ckpt, tmp_path, capsys):
    from lcp.cli import main

    out = tmp_path / "run"
    argv = ["prune", "--model", "resnet20", "--data", str(tiny_folder), "--checkpoint", str(resnet20_ckpt)]
    assert main([*argv, "--budget", "0.5", "--time-aware", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--time-aware" in err[0] and "latency" in err[0] and not out.exists()


def test_probe_layers_of_convs_with_their_own_constructor():
    """timm's Conv2dSame and StdConv2d take no padding_mode: the latency table probes them as their torch class
    (it was a TypeError traceback for every latency budget or --round-to auto on such models)."""
    from timm.layers import Conv2dSame, StdConv2d

    from lcp.cut.latency import probe_layer

    for conv in (Conv2dSame(8, 16, 3, stride=2), StdConv2d(8, 16, 3)):
        probe = probe_layer(conv, 4, 6, depthwise=False)
        assert isinstance(probe, torch.nn.Conv2d) and (probe.in_channels, probe.out_channels) == (4, 6)
        assert probe.stride == conv.stride and probe(torch.zeros(1, 4, 9, 9)).shape[1] == 6


def test_timings_run_in_the_models_dtype_and_a_model_of_two_inputs_is_refused(monkeypatch: pytest.MonkeyPatch):
    from lcp.cut.latency import measure, peak_memory_mb, time_layer
    from lcp.cut.latency_table import LatencyTable

    half = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3)).to(torch.bfloat16)
    assert measure(half, (3, 12, 12), batch=1, warmup=0, repeats=1)["median_ms"] > 0
    # the peak counts bfloat16 activations: 2 bytes each (a float32 input raised a dtype mismatch)
    weights = sum(p.numel() for p in half.parameters())
    outputs = 1 * 8 * 10 * 10 * 2 + 1 * 8 * 8 * 8  # two convs and the ReLU's output
    assert peak_memory_mb(half, (3, 12, 12), batch=1) == 2 * (weights + 3 * 12 * 12 + outputs) / 2**20
    dev = torch.device("cpu")
    assert time_layer(half[0], 3, 4, False, [(3, 12, 12)], batch=1, dev=dev, warmup=0, repeats=1) > 0

    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 3), nn.Conv2d(3, 8, 3)

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return self.a(x) + self.b(y)

    from lcp.engine.graph import build_graph

    g = build_graph(Two(), (torch.randn(1, 3, 8, 8), torch.randn(1, 3, 8, 8)))
    with pytest.raises(LcpError, match="one input tensor; this model takes 2"):
        LatencyTable.build(g, cache=False)
