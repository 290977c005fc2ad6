"""Where the search starts (the ``fast`` preset): residual streams, structured members, the measured
per-layer sensitivity, members and near-member draws in the evolution, and the presets on the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lcp.cut.ranking import plan
from lcp.engine.graph import build_graph
from lcp.errors import LcpError
from lcp.methods.legr import search
from lcp.methods.legr.evaluator import standardized, transforms_from_vector
from lcp.methods.legr.method import PRESETS
from lcp.methods.legr.prior import measure_sensitivity, sensitivity_member, stream_groups, structured_members
from lcp.models.factory import create_model
from tests.helpers import Recorder, lcp_cli, read_report, tiny_args, tiny_graph


@pytest.fixture(scope="module")
def tiny():
    return tiny_graph()


def _graph(name: str):
    return build_graph(create_model(name).eval(), torch.zeros(1, 3, 32, 32))


def test_streams_are_the_groups_several_dense_layers_write() -> None:
    resnet = _graph("resnet20")
    assert [g.name.split("+")[0] for g in resnet.groups if stream_groups(resnet)[g.index]] == [
        "conv1",
        "layer2.0.conv2",
        "layer3.0.conv2",
    ]
    mnv2 = _graph("mobilenetv2")
    streams = [g for g in mnv2.groups if stream_groups(mnv2)[g.index]]
    # the projection outputs joined by residual adds; an expand conv coupled to its depthwise conv is not a stream
    assert [g.name for g in streams] == [
        "features.2.conv.2+1",
        "features.4.conv.2+2",
        "features.7.conv.2+3",
        "features.11.conv.2+2",
        "features.14.conv.2+2",
    ]


def test_the_stream_member_keeps_streams_whole_and_the_standardized_one_does_not(tiny) -> None:
    graph, cost, scores = tiny
    std, kept, summed = structured_members(graph, scores, "mean")
    assert np.array_equal(std, standardized(graph, scores))
    streams = stream_groups(graph)
    assert streams.any() and not streams.all()
    stream_units = np.array([u.group >= 0 and streams[u.group] for u in graph.units])

    def removed(z):
        return plan(graph, cost, scores, budget=0.5, method="lcp", transforms=transforms_from_vector(graph, z)).removed

    assert removed(std)[stream_units].any()
    assert not removed(kept)[stream_units].any()
    assert removed(kept).any()
    n = len(graph.groups)  # summed scores: alpha is the number of producers, kappa 0
    producers = [len(graph.units[graph.groups[g].units[0]].producers) for g in range(n)]
    assert np.allclose(np.exp(summed[:n]), producers) and not summed[n:].any()
    assert len(structured_members(graph, scores, "sum")) == 2  # scores already summed: no summed member


def test_sensitivity_measures_each_group_alone_and_is_monotone(tiny) -> None:
    graph, _, scores = tiny
    weight = np.arange(1, len(graph.groups) + 1, dtype=np.float64)
    group_of = np.array([u.group for u in graph.units])
    masks = []

    def loss_of(removed: np.ndarray) -> float:
        masks.append(removed.copy())
        groups = set(group_of[removed].tolist())
        assert len(groups) <= 1  # one group at a time
        if 2 in groups and removed.sum() >= 4:
            return float("inf")  # a failed cut
        return 1.0 + float(sum(weight[group_of[removed]] ** 2)) / 100

    levels = (0.25, 0.5, 0.75)
    damage = measure_sensitivity(graph, scores, loss_of, graph.floors(0.1), levels=levels)
    assert damage.shape == (len(graph.groups), 3) and len(masks) == 1 + 3 * len(graph.groups)
    assert not masks[0].any()  # the unpruned baseline first
    assert np.all(np.diff(damage, axis=1) <= 0)  # keeping more never hurts more
    assert np.all(np.isfinite(damage)) and damage[2, 0] == damage.max()  # the failure counts as the worst
    for g in graph.groups:  # the lowest scores of a group go first
        units = np.array(g.units)
        cut = masks[1 + 3 * g.index + 2]  # keep 0.75
        if cut.any():
            assert scores[units][cut[units]].max() <= scores[units][~cut[units]].min()


def test_an_interrupted_sensitivity_measurement_keeps_its_cuts_and_resumes(tiny) -> None:
    """Ctrl-C in the middle: ``keep`` gets what was measured (a failed cut as null), and passed back as ``known``
    only the rest is measured, to the same damage as an uninterrupted run."""
    graph, _, scores = tiny
    group_of = np.array([u.group for u in graph.units])
    calls: list[int] = []
    stop_at = [7]

    def loss_of(removed: np.ndarray) -> float:
        if len(calls) == stop_at[0]:
            raise KeyboardInterrupt
        calls.append(int(removed.sum()))
        if 2 in set(group_of[removed].tolist()) and removed.sum() >= 4:
            return float("inf")
        return 1.0 + float(removed.sum()) / 100

    floors, levels = graph.floors(0.1), (0.25, 0.5, 0.75)
    kept: list[dict] = []
    with pytest.raises(KeyboardInterrupt):
        measure_sensitivity(graph, scores, loss_of, floors, levels=levels, keep=kept.append, keep_every=1e9)
    assert len(kept) == 1 and len(kept[0]["measured"]) == 6 and kept[0]["base"] == 1.0  # the baseline and 6 cuts
    partial = json.loads(json.dumps(kept[0]))  # as sensitivity.json holds it
    calls.clear()
    stop_at[0] = -1
    resumed = measure_sensitivity(graph, scores, loss_of, floors, levels=levels, known=partial)
    assert len(calls) == 3 * len(graph.groups) - 6  # neither the baseline nor the 6 cuts again
    full = measure_sensitivity(graph, scores, loss_of, floors, levels=levels)
    np.testing.assert_array_equal(resumed, full)


def test_the_sensitivity_member_cuts_the_insensitive_group_first(tiny) -> None:
    graph, cost, scores = tiny
    n = len(graph.groups)
    damage = np.tile([0.2, 0.1, 0.05], (n, 1))
    damage[0] = [50.0, 20.0, 10.0]  # the first group hurts a lot
    damage[1] = [0.002, 0.001, 0.0005]  # the second hardly at all
    z = sensitivity_member(graph, cost, scores, damage)
    assert z.shape == (2 * n,) and np.all(np.isfinite(z))
    p = plan(graph, cost, scores, budget=0.6, method="lcp", transforms=transforms_from_vector(graph, z))
    kept = [1 - p.removed[np.array(graph.groups[g].units)].mean() for g in range(n)]
    assert kept[0] == 1.0 and kept[1] < min(kept[2:])


class Keyed(Recorder):
    """A Recorder that, like ``Fitness``, tells which cut a candidate makes."""

    def key(self, tf) -> str:
        p = plan(self.graph, self.cost, self.scores, budget=0.5, method="lcp", transforms=tf)
        return np.packbits(p.removed).tobytes().hex()


def test_members_come_first_and_refine_keeps_the_best_and_never_repeats_a_cut(tiny, tmp_path: Path) -> None:
    graph, cost, scores = tiny
    n = len(graph.groups)
    member = np.concatenate([np.full(n, 0.5), np.zeros(n)])
    fit = Keyed(graph, cost, scores)
    state = tmp_path / "state.json"
    kw = dict(candidates=30, population=6, tournament=2, seed=1, progress=False, members=[member])
    res = search(graph, scores, fit, state_path=state, refine=True, **kw)
    assert res.evaluated == 30
    assert np.allclose(fit.calls[0].alpha, 1) and np.allclose(fit.calls[2].alpha, np.exp(0.5))
    keys = [fit.key(tf) for tf in fit.calls]
    assert len(set(keys[3:])) == len(keys[3:])  # after the fixed members, no cut is evaluated twice
    kept = json.loads(state.read_text())["population"]["fitness"]
    assert min(kept) == res.best_fitness  # the best was never aged out
    plain = Keyed(graph, cost, scores)
    search(graph, scores, plain, **kw)  # without refine, LeGR's evolution repeats cuts on this tiny graph
    assert len({plain.key(tf) for tf in plain.calls}) < len(plain.calls)
    with pytest.raises(LcpError, match="members must be finite"):
        search(graph, scores, fit, candidates=2, progress=False, members=[member[:-1]])


@pytest.mark.parametrize("seed, stop", [(4, 9), (1, 4), (1, 6)])
def test_a_search_with_members_resumes_to_the_same_result(tiny, tmp_path: Path, seed: int, stop: int) -> None:
    """Stopped anywhere and resumed, the search draws the same candidates as without a stop (a fresh run did not
    count the fixed members' cuts as seen, a resumed one did, so their children could differ)."""
    graph, cost, scores = tiny
    n = len(graph.groups)
    kw = dict(
        candidates=20,
        population=6,
        tournament=3,
        seed=seed,
        progress=False,
        members=[np.concatenate([np.full(n, -0.2), np.ones(n) * 0.01])],
        refine=True,
    )
    full = search(graph, scores, Keyed(graph, cost, scores), **kw)
    state = tmp_path / "state.json"
    search(graph, scores, Keyed(graph, cost, scores), state_path=state, stop_after=stop, **kw)
    fit = Keyed(graph, cost, scores)
    res = search(graph, scores, fit, state_path=state, resume=True, **kw)
    assert len(fit.calls) == 20 - stop
    assert [h["fitness"] for h in res.history] == [h["fitness"] for h in full.history]
    other = dict(kw, members=[np.zeros(2 * n)])
    with pytest.raises(LcpError, match="members"):
        search(graph, scores, Keyed(graph, cost, scores), state_path=state, resume=True, **other)


def test_presets_on_the_command_line(tiny_folder: Path, resnet20_ckpt: Path, tmp_path: Path) -> None:
    assert PRESETS["legr"].candidates == 400 and PRESETS["legr"].population == 64 and PRESETS["legr"].tournament == 16
    fast = tmp_path / "fast"
    args = tiny_args(tiny_folder, resnet20_ckpt, fast, "--method", "lcp", "--candidates", "6", "--threads", "1")
    res = lcp_cli(*args)
    assert res.code == 0, res.err
    assert "fast preset" in res.out and "per-layer sensitivity" in res.out
    sens = json.loads((fast / "sensitivity.json").read_text())
    assert len(sens["damage"]) == 12 and json.loads((fast / "search.json").read_text())["prior_seconds"] >= 0
    assert float(read_report(fast)["macs_ratio"]) <= 0.5
    again = lcp_cli(*args, "--resume")  # a finished run is read back: nothing is measured or searched again
    assert again.code == 0, again.err
    assert "finished in an earlier attempt" in again.out and "per-layer sensitivity" not in again.out
    # lcp search resumed in its folder reads the measurement back instead of measuring again
    search = [
        "search", "--model", "resnet20", "--data", tiny_folder, "--checkpoint", resnet20_ckpt, "--holdout", "9",
        "--budget", "0.5", "--candidates", "6", "--threads", "1", "--no-progress", "--out", tmp_path / "search",
    ]  # fmt: skip
    first = lcp_cli(*search)
    assert first.code == 0 and "per-layer sensitivity" in first.out and "reused from" not in first.out, first.err
    resumed = lcp_cli(*search, "--resume")
    assert resumed.code == 0 and "per-layer sensitivity: reused from sensitivity.json" in resumed.out, resumed.err
    legr = tmp_path / "legr"
    res = lcp_cli(
        *tiny_args(
            tiny_folder,
            resnet20_ckpt,
            legr,
            "--method",
            "lcp",
            "--search-preset",
            "legr",
            "--candidates",
            "3",
            "--threads",
            "1",
        )
    )
    assert res.code == 0, res.err
    assert "legr preset" in res.out and not (legr / "sensitivity.json").exists()
    bad = lcp_cli(*tiny_args(tiny_folder, resnet20_ckpt, tmp_path / "bad", "--method", "lcp", "--search-preset", "x"))
    assert bad.code == 2


def test_ctrl_c_during_the_sensitivity_measurement_keeps_it_for_resume(
    tiny_folder: Path, resnet20_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """lcp prune interrupted in the middle of the measurement: exit 130, the cuts so far in sensitivity.json, and
    --resume measures only the rest."""
    from lcp.methods.legr.fitness import Fitness

    real, calls = Fitness.for_removed, []

    def counted(self, removed):
        if len(calls) == 9 and stop[0]:
            raise KeyboardInterrupt
        calls.append(1)
        return real(self, removed)

    stop = [True]
    monkeypatch.setattr(Fitness, "for_removed", counted)
    out = tmp_path / "run"
    args = tiny_args(tiny_folder, resnet20_ckpt, out, "--method", "lcp", "--candidates", "4", "--threads", "1")
    res = lcp_cli(*args)
    assert res.code == 130, res.err
    sens = json.loads((out / "sensitivity.json").read_text())
    assert "damage" not in sens and len(sens["partial"]["measured"]) >= 8
    calls.clear()
    stop[0] = False
    again = lcp_cli(*args, "--resume")
    assert again.code == 0, again.err
    assert "cuts measured before, reused" in again.out
    whole = 1 + 3 * 12  # the baseline and three keep levels of 12 groups, measured once in all
    sens = json.loads((out / "sensitivity.json").read_text())
    assert len(sens["damage"]) == 12 and "partial" not in sens
    assert len(calls) >= whole - 9 and len(calls) < whole + 4  # the rest of the measurement and the 4 candidates


def test_a_damaged_sensitivity_file_is_measured_again() -> None:
    from lcp.methods.legr.method import _cached_damage

    key = {"scores": "abc"}
    good = {"key": key, "seconds": 3.0, "damage": [[0.3, 0.2, 0.1]] * 2}
    assert _cached_damage(good, key, (2, 3)) is not None
    for bad in (
        None,
        [],
        {**good, "key": {"scores": "other"}},
        {**good, "damage": "x"},
        {**good, "damage": [[0.3, 0.2]] * 2},
        {**good, "damage": [[float("nan"), 0.2, 0.1]] * 2},
        {**good, "seconds": "soon"},
        {"key": key},
    ):
        assert _cached_damage(bad, key, (2, 3)) is None
    from lcp.methods.legr.method import _cached_partial

    part = {"key": key, "seconds": 2.0, "partial": {"base": 1.5, "measured": [[0, 1, 0.2], [1, 0, None]]}}
    assert _cached_partial(part, key) == {"base": 1.5, "measured": [(0, 1, 0.2), (1, 0, None)]}
    for bad in (
        good,
        {**part, "key": {"scores": "other"}},
        {**part, "partial": {"base": None, "measured": []}},
        {**part, "partial": {"base": 1.0, "measured": [[0, "x", 1.0]]}},
        {**part, "partial": {"base": 1.0, "measured": [[0, 1]]}},
        {**part, "seconds": "soon"},
    ):
        assert _cached_partial(bad, key) is None


def test_the_fast_preset_stops_in_time_and_search_stop_reproduces_it(
    tiny_folder: Path, resnet20_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dataclasses

    import lcp.methods.legr.method as method

    monkeypatch.setitem(PRESETS, "fast", dataclasses.replace(PRESETS["fast"], seconds=1e-3))
    common = ("--method", "lcp", "--candidates", "8", "--threads", "1")
    skipped = tmp_path / "skipped"  # the measurement does not fit the time budget either: the hint says so
    res = lcp_cli(*tiny_args(tiny_folder, resnet20_ckpt, skipped, *common))
    assert res.code == 0, res.err
    assert "per-layer sensitivity skipped" in res.out and "which --search-stop" in res.out and "may differ" in res.out
    monkeypatch.setattr(method, "SENSITIVITY_SHARE", 1e9)  # the measurement runs; the candidates stop on time
    timed = tmp_path / "timed"
    res = lcp_cli(*tiny_args(tiny_folder, resnet20_ckpt, timed, *common))
    assert res.code == 0, res.err
    summary = json.loads((timed / "search.json").read_text())
    assert summary["stopped_by"] == "time" and summary["candidates_evaluated"] < 8
    assert f"--search-stop {summary['candidates_evaluated']} reproduces it" in res.out
    again = tmp_path / "again"  # --search-stop overrides the preset's time budget: the same candidates
    n = summary["candidates_evaluated"]
    res = lcp_cli(*tiny_args(tiny_folder, resnet20_ckpt, again, *common, "--search-stop", n))
    assert res.code == 0, res.err
    assert json.loads((again / "transforms.json").read_text()) == json.loads((timed / "transforms.json").read_text())
    unlimited = tmp_path / "unlimited"  # 0: no time budget
    res = lcp_cli(*tiny_args(tiny_folder, resnet20_ckpt, unlimited, *common, "--search-time", "0"))
    assert res.code == 0, res.err
    assert json.loads((unlimited / "search.json").read_text())["candidates_evaluated"] == 8


def test_a_sensitivity_measurement_too_slow_for_the_budget_is_given_up(tiny) -> None:
    graph, _, scores = tiny
    now = [0.0]
    calls = []

    def slow(removed: np.ndarray) -> float:
        now[0] += 10.0  # ten seconds per cut
        calls.append(removed)
        return 1.0

    total = 1 + 3 * len(graph.groups)
    floors = graph.floors(0.1)
    assert measure_sensitivity(graph, scores, slow, floors, seconds=10.0 * total - 1, clock=lambda: now[0]) is None
    assert len(calls) == 2  # the baseline and one cut, then the projection says no
    calls.clear()
    done = measure_sensitivity(graph, scores, slow, floors, seconds=10.0 * total + 1, clock=lambda: now[0])
    assert done is not None and len(calls) == total

    def stopped(removed: np.ndarray) -> float:  # Ctrl-C in the first cut, after the baseline
        if removed.any():
            raise KeyboardInterrupt
        return slow(removed)

    kept: list[dict] = []
    with pytest.raises(KeyboardInterrupt):
        measure_sensitivity(graph, scores, stopped, floors, seconds=1.0, clock=lambda: now[0], keep=kept.append)
    assert kept[-1]["measured"] == []  # the baseline only: the resumed run still projects, and gives up
    calls.clear()
    again = measure_sensitivity(
        graph, scores, slow, floors, seconds=10.0 * total - 1, clock=lambda: now[0], known=kept[-1]
    )
    assert again is None and len(calls) == 1


def test_a_skipped_measurement_stays_skipped_on_resume(
    tiny_folder: Path, resnet20_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lcp.methods.legr.method as method

    monkeypatch.setattr(method, "SENSITIVITY_SHARE", 1e-9)  # no time for the measurement
    out = tmp_path / "run"
    args = tiny_args(tiny_folder, resnet20_ckpt, out, "--method", "lcp", "--candidates", "5", "--threads", "1")
    res = lcp_cli(*args, "--search-time", "600")
    assert res.code == 0, res.err
    assert "per-layer sensitivity skipped" in res.out
    assert json.loads((out / "sensitivity.json").read_text())["skipped"] is True
    state = out / "search_state.json"
    data = json.loads(state.read_text())  # as if killed after 3 candidates
    data["evaluated"], data["history"] = data["evaluated"][:3], data["history"][:3]
    state.write_text(json.dumps(data))
    monkeypatch.setattr(method, "SENSITIVITY_SHARE", 0.75)
    (out / "report.csv").unlink()
    res = lcp_cli(*args, "--search-time", "600", "--resume")
    assert res.code == 0, res.err
    assert "skipped, as in the run" in res.out
