"""The ads / lwp controllers (lcp.methods.connections) that search DenseNet connections, and ``--method ads``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lcp.engine.connection_importance import connection_prior
from lcp.engine.connections import ConnectionGraph, build
from lcp.errors import LcpError, UnreachableBudget
from lcp.methods.connections import ControllerConfig, HeldOut, match_toy, search_connections, shaped_reward
from tests.helpers import assert_one_line_error, lcp_cli, save_state_dict, tiny_densenet

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cg() -> ConnectionGraph:
    return build(tiny_densenet(), torch.zeros(1, 3, 16, 16))


# ------------------------------------------------------------------------------------------------ controllers


def random_heldout(cg: ConnectionGraph) -> HeldOut:
    g = torch.Generator().manual_seed(0)
    recal = [torch.randn(16, 3, 16, 16, generator=g) for _ in range(2)]
    xs = [torch.randn(32, 3, 16, 16, generator=g)]
    ys = [torch.randint(0, 10, (32,), generator=g)]
    return HeldOut(cg, recal, xs, ys)


@pytest.mark.parametrize("method", ["ads", "lwp"])
def test_controller_runs_and_meets_the_budget(cg, method):
    ev = random_heldout(cg)
    seen = []

    def evaluate(keep):
        seen.append(keep.copy())
        return ev(keep)

    cfg = ControllerConfig(episodes=4)
    res = search_connections(cg, evaluate, method=method, budget=0.5, cfg=cfg, seed=0, progress=False)
    assert len(res.history) == 4 and len(seen) == 5  # the importance prior's mask first, then one per episode
    prior = cg.project(cg.full(), connection_prior(cg), budget=0.5, fill=method == "ads")
    assert (seen[0] == prior).all()
    for keep in seen + [res.keep]:
        assert cg.value(keep, "macs") <= 0.5 * cg.macs_base
        cg.check(keep)
    prior_reward = shaped_reward(method, ev(prior)["acc"], cg.value(prior, "macs") / cg.macs_base, 0.5, cfg)
    assert res.best_reward == pytest.approx(max(prior_reward, *(h["reward"] for h in res.history)))
    if method == "ads":  # filled up to the budget: no dropped connection still fits
        for keep in seen:
            for k in np.nonzero(~keep)[0]:
                more = keep.copy()
                more[k] = True
                assert cg.value(more, "macs") > 0.5 * cg.macs_base or cg.value(more, "macs") == cg.value(keep, "macs")
    if method == "lwp":
        h = res.history[0]
        assert h["reward"] == pytest.approx(h["acc"] + cfg.lwp_lambda * (1 - h["cost"]))


def weak_and_strong_inputs(sources: int):
    """A tiny DenseNet's connections and its first consumer of at least ``sources`` inputs, whose first input's
    weights are zeroed (weak) and second's scaled up 100 times (strong)."""
    g = build(tiny_densenet(), torch.zeros(1, 3, 16, 16))
    c = next(c for c in g.consumers if len(c.sources) >= sources)
    weak, strong = c.sources[0], c.sources[1]
    w = dict(g.graph.gm.named_modules())[c.name].weight
    with torch.no_grad():
        w[:, torch.as_tensor(g.connections[weak].positions)] = 0.0
        w[:, torch.as_tensor(g.connections[strong].positions)] *= 100.0
    return g, c, weak, strong


def test_slice_l1_prior_ranks_connections_by_their_weights():
    """A connection whose input slice has no weight scores lowest, one with large weights highest, and the
    controller starts from that order (prior_weight 0: flat offsets, no prior evaluation)."""
    g, c, weak, strong = weak_and_strong_inputs(2)
    score = g.slice_l1()
    assert score[weak] == 0.0 and score.argmin() == weak and score.argmax() == strong
    prior = connection_prior(g)
    assert prior.argmin() == weak and abs(prior.mean()) < 1e-9
    from lcp.methods.connections.controller import Controller

    assert torch.allclose(Controller(g, ControllerConfig()).offset.detach(), torch.as_tensor(prior).float())
    assert (Controller(g, ControllerConfig(prior_weight=0.0)).offset.detach() == 0).all()
    seen = []
    flat = ControllerConfig(episodes=2, prior_weight=0.0)
    search_connections(g, lambda k: seen.append(k) or {"acc": 0.5}, budget=0.5, cfg=flat, progress=False)
    assert len(seen) == 2
    with pytest.raises(LcpError, match="prior_weight"):
        ControllerConfig(prior_weight=-1.0).check()


def test_output_share_prior_ranks_each_consumers_inputs_by_what_they_produce():
    """A slice whose weights are zero produces nothing (share 0, lowest prior); a slice scaled up 100 times
    produces nearly all of its consumer's output; a consumer reading one source gets all of it from that one.
    Measuring leaves the network as it was (every submodule's mode, BatchNorm statistics)."""
    from lcp.engine.connection_importance import slice_output_share

    g, c, weak, strong = weak_and_strong_inputs(3)
    batches = [torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    stats = {k: v.clone() for k, v in g.graph.gm.state_dict().items()}
    g.graph.gm.train()
    some_norm = next(m for m in g.graph.gm.modules() if isinstance(m, torch.nn.BatchNorm2d))
    some_norm.eval()
    share = slice_output_share(g, batches)
    assert g.graph.gm.training and not some_norm.training
    assert all(torch.equal(v, g.graph.gm.state_dict()[k]) for k, v in stats.items())
    assert share[weak] == 0.0 and share[strong] > 0.9
    single = [d for d in g.consumers if len(d.sources) == 1]
    assert single and all(share[d.sources[0]] == pytest.approx(1.0) for d in single)
    prior = connection_prior(g, batches)
    assert abs(prior.mean()) < 1e-9 and prior.std() == pytest.approx(1.0)
    rank = {k: i for i, k in enumerate(sorted(c.sources, key=lambda k: prior[k]))}
    assert rank[weak] == 0 and rank[strong] == len(c.sources) - 1


def test_output_share_is_what_the_consumer_makes_of_that_slice_alone():
    """Against the consumer module itself run on its input with every other slice zeroed (bias off, padding
    as the module pads), and the prior orders all connections by the tail share: what a consumer loses if the
    connection and every lesser input of it go."""
    from lcp.engine.connection_importance import slice_output_share

    g = build(tiny_densenet(), torch.zeros(1, 3, 16, 16))
    gm, modules = g.graph.gm, dict(g.graph.gm.named_modules())
    batches = [torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(7))]
    inputs = {}

    def keep_input(name):
        def hook(_mod, args, _out):
            inputs[name] = args[0]

        return hook

    hooks = [modules[c.name].register_forward_hook(keep_input(c.name)) for c in g.consumers]
    with torch.no_grad():
        gm(batches[0])
    for h in hooks:
        h.remove()
    expected = np.zeros(g.n)
    for c in g.consumers:
        mod, x = modules[c.name], inputs[c.name]
        bias, mod.bias = mod.bias, None
        with torch.no_grad():
            total = float(mod(x).pow(2).sum())
            for k in c.sources:
                only = torch.zeros_like(x)
                pos = torch.as_tensor(g.connections[k].positions)
                dim = 1 if x.dim() == 4 else -1
                only.index_copy_(dim, pos, x.index_select(dim, pos))
                expected[k] = float(mod(only).pow(2).sum()) / total
        mod.bias = bias
    share = slice_output_share(g, batches)
    assert share == pytest.approx(expected, rel=1e-4, abs=1e-9)
    tail = np.zeros(g.n)
    for c in g.consumers:
        for k in c.sources:
            tail[k] = sum(share[j] for j in c.sources if share[j] <= share[k])
    prior = connection_prior(g, batches)
    assert (np.argsort(prior, kind="stable") == np.argsort(tail, kind="stable")).all()


def test_the_search_starts_from_the_prior_it_is_given_and_resumes_only_with_it(cg, tmp_path):
    """``search_connections(prior=)``: the first evaluated mask is that prior's projection and the offsets start
    from it; a state resumes with a prior of the same name (``settings["prior"]``) and is refused with another."""
    from lcp.methods.connections.controller import Controller

    given = np.random.default_rng(0).standard_normal(cg.n)
    cfg = ControllerConfig(episodes=1)
    assert torch.allclose(Controller(cg, cfg, given).offset.detach(), torch.as_tensor(given).float())
    seen = []
    state = tmp_path / "s.safetensors"
    ev = toy_evaluate(cg)
    named = {"prior": "measured"}

    def run(episodes, **kw):
        return search_connections(
            cg, ev, budget=0.5, cfg=ControllerConfig(episodes=episodes), progress=False, state_path=state, **kw
        )

    search_connections(
        cg,
        lambda k: seen.append(k) or ev(k),
        budget=0.5,
        cfg=cfg,
        progress=False,
        prior=given,
        state_path=state,
        settings=named,
    )
    assert (seen[0] == cg.project(cg.full(), given, budget=0.5, fill=True)).all()
    with pytest.raises(LcpError, match=r"other settings \(prior\)"):
        run(1, resume=True, prior=given, settings={"prior": "another"})
    with pytest.raises(LcpError, match=r"other settings \(prior\)"):
        run(1, resume=True)  # no prior given: the slice-L1 one
    assert len(run(1, resume=True, prior=given, settings=named).history) == 1  # finished: nothing re-run
    with pytest.raises(LcpError, match="one value per connection"):
        search_connections(cg, ev, budget=0.5, cfg=cfg, progress=False, prior=given[:-1])


def test_shaped_reward():
    cfg = ControllerConfig(lwp_lambda=0.2, lwp_gamma=2.0)
    assert shaped_reward("ads", 0.8, 0.4, 0.5, cfg) == 0.8
    assert shaped_reward("lwp", 0.8, 0.4, 0.5, cfg) == pytest.approx(0.8 + 0.2 * 0.6)
    assert shaped_reward("lwp", 0.8, 0.6, 0.5, cfg) == pytest.approx(0.8 - 2.0 * 0.1)


def toy_evaluate(cg):
    """A cheap deterministic reward: fraction of kept connections that come from the block input."""
    first = np.array([cg.consumers[int(c)].sources[0] == k for k, c in enumerate(cg.dst)])

    def evaluate(keep):
        return {"acc": float((keep & first).sum() / max(1, keep.sum()))}

    return evaluate


def test_same_seed_same_result_and_resume_equals_uninterrupted(cg, tmp_path):
    cfg = ControllerConfig(episodes=7, samples=3)  # updates after episodes 3, 6 and 7
    ev = toy_evaluate(cg)
    a = search_connections(
        cg, ev, method="ads", budget=0.5, cfg=cfg, seed=3, progress=False, state_path=tmp_path / "a.safetensors"
    )
    assert [h["update"] for h in a.history] == [1, 1, 1, 2, 2, 2, 3]
    b = search_connections(cg, ev, method="ads", budget=0.5, cfg=cfg, seed=3, progress=False)
    assert np.array_equal(a.keep, b.keep)
    assert [h["reward"] for h in a.history] == [h["reward"] for h in b.history]
    c = search_connections(cg, ev, method="ads", budget=0.5, cfg=cfg, seed=4, progress=False)
    assert [h["kept"] for h in a.history] != [h["kept"] for h in c.history] or not np.array_equal(a.keep, c.keep)
    # interrupted after 2 episodes, then resumed
    part = tmp_path / "p.safetensors"
    search_connections(
        cg,
        ev,
        method="ads",
        budget=0.5,
        cfg=ControllerConfig(episodes=2, samples=3),
        seed=3,
        progress=False,
        state_path=part,
    )
    # the settings include the episode count: resuming with a longer run must use a state made for it
    with pytest.raises(LcpError, match="other settings"):
        search_connections(
            cg, ev, method="ads", budget=0.5, cfg=cfg, seed=3, progress=False, state_path=part, resume=True
        )
    calls = []

    class Stop(Exception):
        pass

    def stopping(keep):
        calls.append(1)
        if len(calls) == 5:  # 4 episodes saved: one update done, one sample of the next update pending
            raise Stop
        return ev(keep)

    part2 = tmp_path / "p2.safetensors"
    with pytest.raises(Stop):
        search_connections(cg, stopping, method="ads", budget=0.5, cfg=cfg, seed=3, progress=False, state_path=part2)
    r = search_connections(
        cg, ev, method="ads", budget=0.5, cfg=cfg, seed=3, progress=False, state_path=part2, resume=True
    )
    assert [h["reward"] for h in r.history] == [h["reward"] for h in a.history]
    assert [h["kept"] for h in r.history] == [h["kept"] for h in a.history]
    assert [h["entropy"] for h in r.history] == [h["entropy"] for h in a.history]  # same policy after resume
    assert np.array_equal(r.keep, a.keep)


def test_controller_learns_a_toy_reward(cg):
    """400 cheap episodes (100 updates of 4 masks) on a reward with a known optimum (match a target mask): the
    mean of the last 50 beats the first 50 by more than 0.05. Measured over seeds 0-29 (``benchmarks/rl_toy.py
    controller --episodes 400 --seeds 0-29``): gain +0.066 or more, mean +0.172, seed 0 +0.167; random masks
    projected onto the budget already match about 0.75 (docs/connections.md)."""
    _, evaluate = match_toy(cg, 0.6, seed=0)
    res = search_connections(
        cg, evaluate, method="ads", budget=0.6, cfg=ControllerConfig(episodes=400), seed=0, progress=False
    )
    r = [h["reward"] for h in res.history]
    assert np.mean(r[-50:]) > np.mean(r[:50]) + 0.05
    assert res.best_reward == max(r)


def test_top_masks_are_kept_and_rescored(cg):
    """The search keeps the prior's mask and the cfg.top best episodes; re-scoring picks the best by the new
    evaluation, not by the search's (noisy) reward."""
    from lcp.methods.connections.method import rescore

    _, evaluate = match_toy(cg, 0.6, seed=0)
    cfg = ControllerConfig(episodes=12, top=3)
    res = search_connections(cg, evaluate, method="ads", budget=0.6, cfg=cfg, seed=0, progress=False)
    episodes = [e["episode"] for e in res.top]
    assert 0 in episodes and len(episodes) == 4 and len(set(episodes)) == 4
    best3 = sorted(res.history, key=lambda h: (-h["reward"], h["episode"]))[:3]
    assert {h["episode"] for h in best3} == set(episodes) - {0}
    assert res.top[0]["reward"] == res.best_reward and np.array_equal(res.top[0]["keep"], res.keep)
    # a re-scoring evaluation that prefers the last-ranked mask
    last = np.asarray(res.top[-1]["keep"], dtype=bool)
    out = rescore(
        res,
        lambda k: {"acc": 1.0 if np.array_equal(k, last) else 0.5},
        method="ads",
        cg=cg,
        budget=0.6,
        budget_type="macs",
        cfg=cfg,
    )
    assert np.array_equal(out[0]["keep"], last) and out[0]["reward"] == 1.0
    assert out[0]["search_reward"] == res.top[-1]["reward"] and len(out) == 4
    with pytest.raises(LcpError, match="top"):
        ControllerConfig(top=0).check()


def test_unreachable_budget_in_search(cg):
    with pytest.raises(UnreachableBudget):
        search_connections(cg, toy_evaluate(cg), method="lwp", budget=0.01, progress=False)


# ------------------------------------------------------------------------------------------------ CLI


def _must_not_run(*args, **kwargs):
    raise AssertionError("a finished run was searched again")


def test_cli_ads_on_densenet40_then_load(tiny_folder, tmp_path, monkeypatch):
    import csv
    import json

    import lcp
    from lcp.cli import main

    ckpt = save_state_dict("densenet40", 3, tmp_path / "d40.pt")
    out = tmp_path / "ads"
    args = [
        "prune",
        "--model",
        "densenet40",
        "--checkpoint",
        str(ckpt),
        "--data",
        str(tiny_folder),
        "--input-size",
        "3",
        "8",
        "8",
        "--method",
        "ads",
        "--episodes",
        "2",
        "--budget",
        "0.5",
        "--finetune-epochs",
        "0",
        "--holdout",
        "12",
        "--recal-batches",
        "1",
        "--no-progress",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    report = next(csv.DictReader(open(out / "report.csv")))
    assert report["method"] == "ads" and 0.45 <= float(report["macs_ratio"]) <= 0.5
    assert float(report["verification_error"]) < 1e-6
    rows = list(csv.DictReader(open(out / "controller.csv")))
    assert [int(r["episode"]) for r in rows] == [1, 2]
    conn = json.load(open(out / "connections.json"))
    assert len(conn["blocks"]) == 3 and conn["kept"] < 273
    rescored = conn["rescored"]  # the prior's mask and the 2 episodes, re-scored on every held-out image
    assert sorted(e["episode"] for e in rescored) == [0, 1, 2] and conn["reward"] == rescored[0]["reward"]
    model = lcp.load(out)
    x = torch.randn(2, 3, 8, 8)
    assert model(x).shape == (2, 3)
    assert lcp.count_macs(model, torch.zeros(1, 3, 8, 8)) == int(report["macs_pruned"])
    with monkeypatch.context() as mp:  # the finished search is read back, not re-run
        mp.setattr(lcp.methods.connections.method, "search_connections", _must_not_run)
        assert main(args + ["--resume"]) == 0
    assert len(list(csv.DictReader(open(out / "controller.csv")))) == 2
    assert_one_line_error(
        lcp_cli(
            *[a for a in args[:-2] if a not in ("--budget", "0.5")], "--budgets", "0.6,0.5", "--out", tmp_path / "two"
        ),
        "method ads searches one budget",
        "--budget, not several --budgets",
    )


def test_api_connection_cut_saves_and_loads(tmp_path):
    """lcp.save of an ads cut records the removed connections (the channel plan does not hold them): the folder
    loads to the same network."""
    import lcp
    from tests.helpers import SEARCH_SIZE, random_bundle

    x = torch.zeros(1, *SEARCH_SIZE)
    torch.manual_seed(0)
    model = lcp.create_model("densenet40", num_classes=10).eval()
    res = lcp.prune(model, x, budget=0.6, method="ads", data=random_bundle(), episodes=2)
    assert res.verification.ok and res.info["spec"]["removed_connections"]
    loaded = lcp.load(lcp.save(res, tmp_path / "ads"))
    probe = torch.randn(2, *SEARCH_SIZE)
    with torch.no_grad():
        assert torch.allclose(loaded.eval()(probe), res.model.eval()(probe), atol=1e-5)


@pytest.mark.parametrize("method", ["lcp", "amc"])
def test_taylor_importance_with_a_learning_method(method):
    """The search (or agent) scores units by Taylor importance on training batches, as the cut does (it asked for
    batches it was not given, and refused)."""
    import lcp
    from tests.helpers import SEARCH_SIZE, random_bundle

    torch.manual_seed(0)
    model = lcp.create_model("resnet20", num_classes=10).eval()
    extra = {"candidates": 3, "search_preset": "legr"} if method == "lcp" else {"episodes": 3, "warmup_episodes": 1}
    res = lcp.prune(
        model, torch.zeros(1, *SEARCH_SIZE), budget=0.6, method=method, importance="taylor", data=random_bundle(),
        recal_batches=1, **extra,
    )  # fmt: skip
    assert res.verification.ok and res.plan.macs_ratio <= 0.6


@pytest.mark.parametrize(
    "damage",
    [{"as_list": True}, {"tensor": "gen_state"}, {"key": "var"}],
    ids=["a list", "no generator state", "no baseline variance"],
)
def test_a_damaged_controller_state_is_one_line_on_resume(tmp_path, damage) -> None:
    from tests.helpers import damage_search_state

    cg = build(tiny_densenet(), torch.zeros(1, 3, 16, 16))
    _, evaluate = match_toy(cg, 0.6)
    cfg, path = ControllerConfig(episodes=3), tmp_path / "ctl.safetensors"
    search_connections(cg, evaluate, budget=0.6, cfg=cfg, state_path=path, progress=False)
    damage_search_state(path, **damage)
    with pytest.raises(LcpError, match="delete it or start without --resume"):
        search_connections(cg, evaluate, budget=0.6, cfg=cfg, state_path=path, resume=True, progress=False)


def test_a_connection_named_by_anything_but_two_names_is_refused_in_one_line() -> None:
    cg = build(tiny_densenet(), torch.zeros(1, 3, 16, 16))
    with pytest.raises(LcpError, match="does not exist"):
        cg.from_names([[["dense1.0.conv"], "conv1"]])
