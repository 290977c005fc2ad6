"""The meta-learned compensation search: LeGR evolution, nevergrad, fitness, resume, parallel evaluation."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from lcp.cut.ranking import Transforms
from lcp.engine.cost import CostModel
from lcp.engine.graph import ChannelGraph
from lcp.errors import LcpError
from lcp.methods.legr import Fitness, make_fitness, search, write_outputs
from lcp.training.train import recalibrate_bn
from tests.helpers import REPO, Recorder, random_bundle, tiny_graph

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny() -> tuple[ChannelGraph, CostModel, np.ndarray]:
    return tiny_graph()


def is_identity(tf: Transforms) -> bool:
    return bool(np.all(tf.alpha == 1.0) and np.all(tf.kappa == 0.0))


# -------------------------------------------------------------------------------------------------- legr


def test_identity_first_and_never_worse(tiny):
    graph, cost, scores = tiny
    fit = Recorder(graph, cost, scores)
    res = search(graph, scores, fit, candidates=30, population=8, tournament=4, progress=False)
    assert is_identity(fit.calls[0])
    assert len(fit.calls) == len(res.history) == 30
    assert [h["candidate"] for h in res.history] == list(range(1, 31))
    # the search found a better candidate than the identity (identity first, best a min: "<=" could not fail)
    assert res.best_fitness < res.history[0]["fitness"] and not is_identity(res.transforms)
    assert res.best_fitness == min(h["fitness"] for h in res.history) == res.history[-1]["best"]
    assert res.best_fitness == fit(res.transforms)
    assert len(res.transforms.alpha) == len(graph.groups) and res.transforms.groups == [g.name for g in graph.groups]


def test_standardized_member_aligns_group_statistics(tiny):
    graph, cost, scores = tiny
    fit = Recorder(graph, cost, scores)
    search(graph, scores, fit, candidates=3, population=8, tournament=4, progress=False)
    tf = fit.calls[1]  # the second member: every group with the mean and std of all prunable units
    ref = scores[np.asarray(graph.prunable_units)]
    for g in graph.groups:
        s = tf.alpha[g.index] * scores[np.asarray(g.units)] + tf.kappa[g.index]
        assert np.mean(s) == pytest.approx(np.mean(ref), rel=1e-9)
        if len(g.units) > 1 and np.std(scores[np.asarray(g.units)]) > 0:
            assert np.std(s) == pytest.approx(np.std(ref), rel=1e-9)
    off = Recorder(graph, cost, scores)
    search(graph, scores, off, candidates=3, population=8, tournament=4, progress=False, standardized_member=False)
    assert not np.allclose(off.calls[1].kappa, tf.kappa)


def test_same_seed_same_transforms(tiny):
    graph, cost, scores = tiny
    runs = [
        search(
            graph,
            scores,
            Recorder(graph, cost, scores),
            candidates=25,
            population=8,
            tournament=4,
            seed=s,
            progress=False,
        )
        for s in (3, 3, 4)
    ]
    assert np.array_equal(runs[0].transforms.alpha, runs[1].transforms.alpha)
    assert np.array_equal(runs[0].transforms.kappa, runs[1].transforms.kappa)
    assert [h["fitness"] for h in runs[0].history] == [h["fitness"] for h in runs[1].history]
    assert [h["fitness"] for h in runs[0].history] != [h["fitness"] for h in runs[2].history]


def test_additive_keeps_alpha_one(tiny):
    graph, cost, scores = tiny
    fit = Recorder(graph, cost, scores)
    res = search(graph, scores, fit, compensation="additive", candidates=20, population=6, tournament=3, progress=False)
    assert all(np.all(tf.alpha == 1.0) for tf in fit.calls)
    assert np.all(res.transforms.alpha == 1.0)
    assert any(np.any(tf.kappa != 0.0) for tf in fit.calls)


def test_failing_candidate_is_skipped(tiny, caplog):
    graph, cost, scores = tiny
    fit = Recorder(graph, cost, scores, fail_every=3)
    res = search(graph, scores, fit, candidates=12, population=5, tournament=2, progress=False)
    values = [h["fitness"] for h in res.history]
    assert len(values) == 12 and values[2] == math.inf and math.isfinite(values[0])
    assert math.isfinite(res.best_fitness)
    assert "synthetic failure" in caplog.text


def test_bad_arguments(tiny):
    graph, cost, scores = tiny
    fit = Recorder(graph, cost, scores)
    with pytest.raises(LcpError, match="unknown optimizer 'legrr'.*legr, ngopt, cma"):
        search(graph, scores, fit, optimizer="legrr", progress=False)
    with pytest.raises(LcpError, match="compensation"):
        search(graph, scores, fit, compensation="scale", progress=False)
    assert not fit.calls


# --------------------------------------------------------------------------------------------- nevergrad


@pytest.mark.parametrize("name", ["oneplusone", "cma", "TwoPointsDE"])
def test_nevergrad_by_name(tiny, name):
    graph, cost, scores = tiny
    fits = [Recorder(graph, cost, scores) for _ in range(2)]
    res = [search(graph, scores, f, optimizer=name, candidates=12, seed=5, progress=False) for f in fits]
    assert is_identity(fits[0].calls[0]) and len(fits[0].calls) == 12
    assert res[0].best_fitness < res[0].history[0]["fitness"] and not is_identity(res[0].transforms)
    assert res[0].best_fitness == min(h["fitness"] for h in res[0].history) == fits[0](res[0].transforms)
    assert np.array_equal(res[0].transforms.kappa, res[1].transforms.kappa)  # seeded: deterministic


def test_nevergrad_additive(tiny):
    graph, cost, scores = tiny
    fit = Recorder(graph, cost, scores)
    res = search(graph, scores, fit, optimizer="ngopt", compensation="additive", candidates=10, progress=False)
    assert all(np.all(tf.alpha == 1.0) for tf in fit.calls) and np.all(res.transforms.alpha == 1.0)


# ------------------------------------------------------------------------------------------------ resume

SCRIPT = """
import json, sys, time
import numpy as np
sys.path.insert(0, {repo!r})
from tests.helpers import Recorder, tiny_graph
from lcp.methods.legr import search

class Slow(Recorder):
    def __call__(self, tf):
        time.sleep({delay})
        return super().__call__(tf)

def main(optimizer, state_path, resume, delay=0.0):
    graph, cost, scores = tiny_graph()
    fit = Slow(graph, cost, scores) if delay else Recorder(graph, cost, scores)
    res = search(graph, scores, fit, optimizer=optimizer, candidates=40, population=8, tournament=4, seed=7,
                 state_path=state_path, resume=resume, progress=False)
    return res, len(fit.calls)

if __name__ == "__main__":
    res, _ = main(sys.argv[1], sys.argv[2], False, {delay})
"""


def test_kill_and_resume_matches_uninterrupted(tmp_path):
    optimizer = "legr"
    script = tmp_path / "run_search.py"
    script.write_text(textwrap.dedent(SCRIPT.format(repo=str(REPO), delay=0.03)))
    sys.path.insert(0, str(tmp_path))
    try:
        import run_search  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(tmp_path))
    full, _ = run_search.main(optimizer, None, False)

    state = tmp_path / "state.json"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, str(script), optimizer, str(state)], env=env, cwd=tmp_path)
    done = 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            done = len(json.loads(state.read_text())["evaluated"])
        except (OSError, ValueError, KeyError):
            done = 0
        if done >= 15:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the search ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = len(json.loads(state.read_text())["evaluated"])
    assert 15 <= killed_at < 40

    resumed, calls = run_search.main(optimizer, state, True)
    assert calls <= 40 - killed_at  # nothing evaluated twice (a pending result may be reused)
    assert np.array_equal(resumed.transforms.alpha, full.transforms.alpha)
    assert np.array_equal(resumed.transforms.kappa, full.transforms.kappa)
    assert [h["fitness"] for h in resumed.history] == [h["fitness"] for h in full.history]


class Abort(BaseException):
    """Stands in for a kill: not an Exception, so the search does not catch it."""


@pytest.mark.parametrize("optimizer", ["oneplusone", "legr"])
def test_resume_after_abort_matches_uninterrupted(tiny, tmp_path, optimizer):
    graph, cost, scores = tiny
    kw = dict(optimizer=optimizer, candidates=30, population=6, tournament=3, seed=9, progress=False)
    full = search(graph, scores, Recorder(graph, cost, scores), **kw)

    class Dying(Recorder):
        def __call__(self, tf: Transforms) -> float:
            if len(self.calls) == 17:
                raise Abort
            return super().__call__(tf)

    state = tmp_path / "state.json"
    with pytest.raises(Abort):
        search(graph, scores, Dying(graph, cost, scores), state_path=state, **kw)
    assert len(json.loads(state.read_text())["evaluated"]) == 17
    fit = Recorder(graph, cost, scores)
    res = search(graph, scores, fit, state_path=state, resume=True, **kw)
    assert len(fit.calls) == 13  # nothing evaluated twice
    assert [h["fitness"] for h in res.history] == [h["fitness"] for h in full.history]
    assert np.array_equal(res.transforms.kappa, full.transforms.kappa)


def test_resume_refuses_other_settings(tiny, tmp_path):
    graph, cost, scores = tiny
    state = tmp_path / "state.json"
    search(
        graph,
        scores,
        Recorder(graph, cost, scores),
        candidates=6,
        population=4,
        tournament=2,
        state_path=state,
        progress=False,
    )
    with pytest.raises(LcpError, match="seed=0 \\(now 1\\)"):
        search(
            graph,
            scores,
            Recorder(graph, cost, scores),
            candidates=6,
            population=4,
            tournament=2,
            seed=1,
            state_path=state,
            resume=True,
            progress=False,
        )
    fit = Recorder(graph, cost, scores)  # a finished state resumes without evaluating anything
    res = search(
        graph, scores, fit, candidates=6, population=4, tournament=2, state_path=state, resume=True, progress=False
    )
    assert not fit.calls and len(res.history) == 6


# ----------------------------------------------------------------------------------------------- fitness


def test_fitness_prefers_good_networks_and_never_uses_test(tiny):
    graph, cost, scores = tiny
    bundle = random_bundle()
    bundle.test_x = bundle.test_x[:0]  # reading the test split would now fail
    fit = make_fitness(graph, cost, scores, bundle, budget=0.6, recal_batches=2, eval_images=48, batch_size=32)
    assert isinstance(fit, Fitness) and fit.n_eval == 48
    ident = Transforms.identity(graph)
    before = {k: v.clone() for k, v in graph.model.state_dict().items()}  # taken before any evaluation
    value = fit(ident)
    assert math.isfinite(value) and value > 0
    assert fit(ident) == value  # cached batches: the same candidate scores the same
    res = search(graph, scores, fit, candidates=10, population=5, tournament=2, progress=False)
    assert res.history[0]["fitness"] == value
    assert res.best_fitness < value and fit(res.transforms) == res.best_fitness  # a better network, and its score
    after = graph.model.state_dict()  # the search never changes the original (weights and BatchNorm statistics)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_fitness_is_the_plain_held_out_loss_of_the_recalibrated_cut(tiny):
    """Channels-last and the BatchNorm folding are only faster: the score equals recalibration then cross-entropy
    on the held-out batches in the plain (contiguous, unfolded) network."""
    graph, cost, scores = tiny
    fit = make_fitness(graph, cost, scores, random_bundle(), budget=0.6, recal_batches=2, eval_images=48, batch_size=32)
    assert fit.channels_last
    tf = Transforms.identity(graph)
    plain = fit.prune(tf).eval()
    with torch.no_grad():
        recalibrate_bn(plain, [x.contiguous() for x in fit.recal], batches=len(fit.recal))
        loss = sum(
            float(torch.nn.functional.cross_entropy(plain(x.contiguous()), t, reduction="sum"))
            for x, t in zip(fit.eval_x, fit.eval_target)
        )
    assert fit(tf) == pytest.approx(loss / fit.n_eval, rel=1e-5)


def test_fitness_over_several_budgets_is_their_mean(tiny):
    graph, cost, scores = tiny
    bundle = random_bundle()
    kw = dict(recal_batches=2, eval_images=48, batch_size=32)
    tf = Transforms(
        np.linspace(0.5, 2.0, len(graph.groups)), np.zeros(len(graph.groups)), [g.name for g in graph.groups]
    )
    each = [make_fitness(graph, cost, scores, bundle, budget=b, **kw)(tf) for b in (0.5, 0.8)]
    both = make_fitness(graph, cost, scores, bundle, budget=[0.5, 0.8], **kw)(tf)
    assert each[0] != each[1]
    assert both == pytest.approx(sum(each) / 2, rel=1e-6)
    with pytest.raises(LcpError):
        make_fitness(graph, cost, scores, bundle, budget=[0.5, 1.5], **kw)


def test_fitness_with_tau_steps(tiny):
    graph, cost, scores = tiny
    bundle = random_bundle()
    fit, plain = (
        make_fitness(graph, cost, scores, bundle, budget=0.6, tau=t, recal_batches=1, eval_images=32, batch_size=32)
        for t in (3, 0)
    )
    state = {k: v.clone() for k, v in graph.model.state_dict().items()}
    value = fit(Transforms.identity(graph))
    assert math.isfinite(value) and value != plain(Transforms.identity(graph))  # the steps changed the cut's loss
    assert all(torch.equal(state[k], v) for k, v in graph.model.state_dict().items())  # original untouched


def test_label_free_fitness_reads_no_labels(tiny):
    graph, cost, scores = tiny
    bundle = random_bundle(labeled=False)
    with pytest.raises(LcpError, match="unlabeled"):
        make_fitness(graph, cost, scores, bundle, budget=0.6, eval_images=32)
    fit = make_fitness(
        graph, cost, scores, bundle, budget=0.6, label_free=True, recal_batches=2, eval_images=32, batch_size=32
    )
    value = fit(Transforms.identity(graph))
    assert math.isfinite(value) and value > 0
    light = make_fitness(
        graph, cost, scores, bundle, budget=0.99, label_free=True, recal_batches=2, eval_images=32, batch_size=32
    )
    assert light(Transforms.identity(graph)) < value  # pruning less moves the outputs less
    tau, no_tau = (
        make_fitness(
            graph, cost, scores, bundle, budget=0.6, label_free=True, tau=t, recal_batches=1, eval_images=32,
            batch_size=32,
        )
        for t in (2, 0)
    )  # fmt: skip
    assert math.isfinite(tau(Transforms.identity(graph)))
    assert tau(Transforms.identity(graph)) != no_tau(Transforms.identity(graph))


def test_fitness_failure_gives_inf(tiny, caplog):
    graph, cost, scores = tiny
    fit = make_fitness(graph, cost, scores, random_bundle(), budget=0.6, recal_batches=1, eval_images=16)
    bad = Transforms(np.ones(1), np.zeros(1), ["x"])  # one pair for a graph with several groups
    assert fit(bad) == math.inf
    assert "candidate skipped" in caplog.text


def test_write_outputs(tiny, tmp_path):
    graph, cost, scores = tiny
    res = search(
        graph,
        scores,
        Recorder(graph, cost, scores, fail_every=4),
        candidates=8,
        population=4,
        tournament=2,
        progress=False,
    )
    write_outputs(res, tmp_path)
    lines = (tmp_path / "search.csv").read_text().splitlines()
    assert lines[0] == "candidate,fitness,best,seconds" and len(lines) == 9
    assert lines[4].split(",")[1] == "inf"
    assert (tmp_path / "search.png").stat().st_size > 0


# ---------------------------------------------------------------------------------------------- parallel


def test_local_workers(tiny):
    graph, cost, scores = tiny
    fit = make_fitness(graph, cost, scores, random_bundle(), budget=0.6, recal_batches=1, eval_images=32, batch_size=32)
    kw = dict(candidates=12, population=6, tournament=3, seed=2, progress=False)
    a = search(graph, scores, fit, workers=2, **kw)
    b = search(graph, scores, fit, workers=2, **kw)
    assert a.history[0]["fitness"] == pytest.approx(fit(Transforms.identity(graph)), rel=1e-5)
    assert len(a.history) == 12 and all(math.isfinite(h["fitness"]) for h in a.history)
    np.testing.assert_allclose(a.transforms.kappa, b.transforms.kappa)


def test_dask_cluster(tiny):
    distributed = pytest.importorskip("distributed")
    graph, cost, scores = tiny
    fit = make_fitness(graph, cost, scores, random_bundle(), budget=0.6, recal_batches=1, eval_images=32, batch_size=32)
    with (
        distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None) as lc,
        distributed.Client(lc) as client,
    ):
        res = search(graph, scores, fit, candidates=10, population=4, tournament=2, executor=client, progress=False)
        by_address = search(
            graph,
            scores,
            fit,
            optimizer="oneplusone",
            candidates=6,
            executor="dask://" + lc.scheduler_address.removeprefix("tcp://"),
            progress=False,
        )
    assert len(res.history) == 10 and all(math.isfinite(h["fitness"]) for h in res.history)
    assert res.history[0]["fitness"] == pytest.approx(fit(Transforms.identity(graph)), rel=1e-5)
    assert len(by_address.history) == 6 and res.best_fitness < res.history[0]["fitness"]
    assert by_address.history[0]["fitness"] == pytest.approx(res.history[0]["fitness"], rel=1e-5)
