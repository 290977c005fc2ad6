"""RL search over DenseNet connections: ``ads`` (accuracy reward) and ``lwp`` (FLOPs-shaped reward).

Both use one ENAS-style controller (Pham et al. 2018): an LSTM cell steps once per consumer (dense layer,
transition, classifier) in graph order; at consumer c it emits one keep probability per incoming connection
s -> c with ENAS's skip-connection attention plus a learned per-connection offset,
p = sigmoid((v^T tanh(W_a h_s + W_q h_c) + b + o_sc) / T), where h_s is the hidden state of the step that
produced source s (a learned anchor for sources that are not consumers, such as the stem). Keep/drop is sampled
per connection (Bernoulli), then *projected* onto the budget (``ConnectionGraph.project``: drop the
lowest-probability kept connections until the cost fits; ``ads`` also adds back the highest-probability dropped
ones while they fit), so every evaluated network meets the budget. The policy is trained with REINFORCE on the
sampled masks (the projection is part of the environment), ``samples`` masks per update, advantages
(R - moving average) / moving std, an entropy bonus and gradient clipping. The offsets start from an
importance prior (``connection_prior``: each slice's share of its consumer's output on training batches, or
CondenseNet's slice-L1 without data), whose own mask is evaluated first (projected as the method projects its
samples): the result to beat.

Reward (held-out split, never test; the network is built physically, BatchNorm recalibrated on training
batches, weights inherited, no fine-tuning):
- ``ads``: held-out top-1 accuracy (a fraction), as the ADS abstract states.
- ``lwp``: R = acc + lam * (1 - rho) when rho <= beta, else acc - gamma * (rho - beta), with rho the cost ratio
  of the sampled network and beta the budget (reward shaping; LWP's exact formula is unpublished).
See docs/connections.md.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from lcp.engine.connection_importance import connection_prior
from lcp.engine.connections import ConnectionGraph
from lcp.engine.types import LayerKind
from lcp.errors import LcpError
from lcp.io import PathLike, load_tensor_metadata, load_tensors, save_tensors
from lcp.methods.connections.reinforce import Advantage, entropy, reinforce_step

log = logging.getLogger("lcp.methods.controllers")

_STATE_FORMAT = "lcp-connection-controller/2"
N_FEATURES = 6
CONNECTION_METHODS = ("ads", "lwp")


@dataclass
class ControllerConfig:
    """REINFORCE controller hyperparameters (ENAS's where known; measured choices in docs/connections.md)."""

    episodes: int = 30  # sampled masks (evaluations) in all
    samples: int = 4  # masks per controller update; the last update takes what is left
    hidden: int = 64
    lr: float = 3e-3  # Adam, LSTM and attention (ENAS: 1e-3)
    lr_offset: float = 3e-2  # Adam, the per-connection logit offsets
    baseline_decay: float = 0.95  # moving averages of the reward and of its squared deviation
    entropy_weight: float = 1e-2
    kl_weight: float = 0.1  # ENAS skip penalty: KL(p || q) per connection, q = density the budget allows
    grad_clip: float = 5.0  # max gradient norm (0: off)
    tanh_constant: float = 0.0  # ENAS 1.5: logit = 2 C tanh(raw); 0: logit = raw (see docs)
    temperature: float = 1.0
    init_keep: float = 0.5  # initial keep probability (sets the logit bias)
    prior_weight: float = 1.0  # initial logit offsets: this times the standardised importance prior (0: no prior)
    lwp_lambda: float = 0.1  # lwp: bonus per unit of cost saved
    lwp_gamma: float = 1.0  # lwp: penalty per unit of cost over the budget
    top: int = 5  # the best episodes kept (with the prior's mask) for re-scoring on more images at the end

    def check(self) -> None:
        if min(self.episodes, self.samples, self.hidden, self.top) < 1 or not (0 < self.init_keep < 1):
            raise LcpError("episodes, samples, hidden and top must be at least 1, init_keep in (0, 1)")
        if (
            self.lr <= 0
            or min(self.lr_offset, self.entropy_weight, self.kl_weight, self.grad_clip, self.prior_weight) < 0
        ):
            raise LcpError("lr must be > 0; lr_offset, entropy_weight, kl_weight, grad_clip and prior_weight >= 0")
        if not (0 <= self.baseline_decay < 1) or self.temperature <= 0 or self.tanh_constant < 0:
            raise LcpError("baseline_decay must be in [0, 1), temperature > 0, tanh_constant >= 0")


@dataclass
class ControllerResult:
    """Best connection mask found, its reward and one history row per episode; ``top``: the ``cfg.top`` best
    evaluated masks and the prior's (episode 0), each {"episode", "reward", "keep"}, best first."""

    keep: np.ndarray
    best_reward: float
    history: list[dict] = field(default_factory=list)
    top: list[dict] = field(default_factory=list)


class Controller(nn.Module):
    """LSTM controller emitting keep probabilities for every connection, consumer by consumer."""

    def __init__(self, cg: ConnectionGraph, cfg: ControllerConfig, prior: np.ndarray | None = None):
        super().__init__()
        self.cfg = cfg
        h = cfg.hidden
        self.embed = nn.Linear(N_FEATURES + 1, h)
        self.cell = nn.LSTMCell(h, h)
        self.w_anchor = nn.Linear(h, h, bias=False)
        self.w_query = nn.Linear(h, h, bias=False)
        self.v = nn.Linear(h, 1, bias=False)
        self.input_anchor = nn.Parameter(torch.zeros(h))
        # per-connection logit offset (own learning rate), starting from the importance prior
        prior = connection_prior(cg) if prior is None else prior
        self.offset = nn.Parameter(torch.as_tensor(cfg.prior_weight * prior, dtype=torch.float32))
        logit = math.log(cfg.init_keep / (1 - cfg.init_keep))
        if cfg.tanh_constant > 0:
            logit = math.atanh(float(np.clip(logit / (2 * cfg.tanh_constant), -0.999, 0.999)))
        self.bias = nn.Parameter(torch.tensor(logit * cfg.temperature))
        for w in (self.embed.weight, self.w_anchor.weight, self.w_query.weight, self.v.weight):
            nn.init.uniform_(w, -0.1, 0.1)  # ENAS: uniform(-0.1, 0.1)
        self.register_buffer("features", torch.as_tensor(_features(cg), dtype=torch.float32), persistent=False)
        self.sources = [torch.as_tensor(c.sources, dtype=torch.long) for c in cg.consumers]
        # for every connection: consumer step that produced its source, or -1 for a non-consumer source
        self.src_step = [int(cg.consumer_of_record.get(int(s), -1)) for s in cg.src]
        self.n = cg.n
        self.order = torch.argsort(torch.cat(self.sources))  # step-concatenated logits -> connection order

    def forward(self, actions: Tensor | None = None, gen: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """(logits, actions), both (B, n): samples one mask (B = 1) when ``actions`` is None, else teacher-forces
        the (B, n) or (n,) ``actions``."""
        cfg = self.cfg
        out = torch.zeros(1, self.n) if actions is None else actions.float().reshape(-1, self.n)
        b = out.shape[0]
        h = torch.zeros(b, cfg.hidden)
        c = torch.zeros(b, cfg.hidden)
        prev = torch.ones(b, 1)
        anchors: list[Tensor] = []
        base_anchor = self.w_anchor(self.input_anchor).expand(b, -1)
        logit_list: list[Tensor] = []
        for step, src in enumerate(self.sources):
            x = torch.cat([self.features[step : step + 1].expand(b, -1), prev], 1)
            h, c = self.cell(torch.tanh(self.embed(x)), (h, c))
            anchors.append(self.w_anchor(h))
            a = torch.stack(
                [anchors[self.src_step[k]] if self.src_step[k] >= 0 else base_anchor for k in src.tolist()], 1
            )  # (B, sources, hidden)
            raw = (
                self.v(torch.tanh(a + self.w_query(h)[:, None])).squeeze(2) + self.bias + self.offset[src]
            ) / cfg.temperature
            # ENAS samples a skip from softmax(C tanh([-raw, raw])), i.e. sigmoid(2 C tanh(raw))
            lg = 2 * cfg.tanh_constant * torch.tanh(raw) if cfg.tanh_constant > 0 else raw
            logit_list.append(lg)
            if actions is None:
                out[:, src] = torch.bernoulli(torch.sigmoid(lg.detach()), generator=gen)
            prev = out[:, src].mean(1, keepdim=True)
        return torch.cat(logit_list, 1)[:, self.order], out


def _features(cg: ConnectionGraph) -> np.ndarray:
    """Per consumer: block, position in block, input channels, share of the cost, is-conv, number of sources
    (each scaled to [0, 1])."""
    recs = cg.graph.records
    n_blocks = max(c.block for c in cg.consumers) + 1
    pos, counts = [], {}
    for c in cg.consumers:
        pos.append(counts.get(c.block, 0))
        counts[c.block] = pos[-1] + 1
    rows = []
    total = max(1, cg.macs_base)
    max_in = max(len(recs[c.record].in_ids) for c in cg.consumers)
    max_src = max(len(c.sources) for c in cg.consumers)
    for i, c in enumerate(cg.consumers):
        rows.append(
            [
                c.block / max(1, n_blocks - 1),
                pos[i] / max(1, counts[c.block] - 1),
                len(recs[c.record].in_ids) / max_in,
                cg.full_cost[i][0] / total,
                1.0 if c.kind == LayerKind.CONV else 0.0,
                len(c.sources) / max_src,
            ]
        )
    return np.asarray(rows, dtype=np.float32)


def shaped_reward(method: str, acc: float, rho: float, budget: float, cfg: ControllerConfig) -> float:
    """``ads``: acc. ``lwp``: acc + lambda (1 - rho) within the budget, acc - gamma (rho - budget) over it."""
    if method == "ads":
        return acc
    if rho <= budget + 1e-12:
        return acc + cfg.lwp_lambda * (1.0 - rho)
    return acc - cfg.lwp_gamma * (rho - budget)


def search_connections(
    cg: ConnectionGraph,
    evaluate: Callable[[np.ndarray], dict],
    *,
    method: str = "ads",
    budget: float,
    budget_type: str = "macs",
    cfg: ControllerConfig | None = None,
    seed: int = 0,
    state_path: PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
    settings: dict | None = None,
    prior: np.ndarray | None = None,
) -> ControllerResult:
    """Run ``cfg.episodes`` episodes (one sampled mask and one ``evaluate`` each); the controller is updated
    after every ``cfg.samples`` episodes (and after the last). ``evaluate(keep)`` returns at least
    {"acc": held-out top-1 in [0, 1]}. ``prior``: the importance of every connection the offsets start from and
    whose mask is evaluated first (``connection_prior``; default: its slice-L1 form, from the weights alone, which
    starts far lower than the output share on a trained DenseNet: docs/connections.md). The state records the
    prior by name (``settings["prior"]``), so a resume with a prior of another name is refused.

    The state (controller, Adam, sampling generator, baseline, the current update's masks and rewards, history,
    best mask) is written atomically to ``state_path`` after every episode; ``resume`` continues it and ends
    with the same mask as an uninterrupted run (an interrupted episode is re-run).
    """
    from tqdm.auto import tqdm

    if method not in CONNECTION_METHODS:
        raise LcpError(f"unknown connection method {method!r}; choose one of {', '.join(CONNECTION_METHODS)}")
    if budget_type not in ("macs", "params"):
        raise LcpError(f"method {method} takes a macs or params budget, not {budget_type}")
    cfg = cfg or ControllerConfig()
    cfg.check()
    full_mask = cg.project(cg.full(), np.zeros(cg.n), budget=budget, metric=budget_type)  # unreachable: raises now
    density = float(np.clip(full_mask.mean(), 0.01, 0.99))  # kept fraction of a mask at the budget
    importance = connection_prior(cg) if prior is None else np.asarray(prior, dtype=np.float64)
    if importance.shape != (cg.n,):
        raise LcpError(f"the importance prior has shape {importance.shape}, not one value per connection ({cg.n})")
    settings = {
        "prior": "slice-L1" if prior is None else "given",  # callers name theirs in ``settings``
        "format": _STATE_FORMAT,
        "method": method,
        "seed": seed,
        "budget": budget,
        "budget_type": budget_type,
        "controller": asdict(cfg),
        "connections": cg.n,
        **(settings or {}),
    }
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        ctl = Controller(cg, cfg, importance)
    shared = [p for name, p in ctl.named_parameters() if name != "offset"]
    opt = torch.optim.Adam([{"params": shared}, {"params": [ctl.offset], "lr": cfg.lr_offset}], lr=cfg.lr)
    gen = torch.Generator().manual_seed(seed)
    history: list[dict] = []
    best: dict = {"reward": -math.inf, "keep": full_mask.astype(int).tolist()}
    top: list[dict] = []  # the best evaluated masks (best first) and the prior's, as {"episode", "reward", "keep"}

    def remember(entry: dict) -> None:
        """Keep the prior's mask (episode 0) and the ``cfg.top`` best episodes."""
        prior = [e for e in [*top, entry] if e["episode"] == 0]
        others = sorted((e for e in [*top, entry] if e["episode"] != 0), key=lambda e: (-e["reward"], e["episode"]))
        top[:] = prior + others[: cfg.top]

    advantage = Advantage(cfg.baseline_decay)
    pending: list[tuple[np.ndarray, float]] = []  # (sampled mask, reward) of the episodes since the last update
    path = Path(state_path) if state_path is not None else None
    if resume and path is not None and path.is_file():
        try:
            st = json.loads(load_tensor_metadata(path)["state"])
            old = dict(st["settings"])
        except (KeyError, TypeError, ValueError):
            raise LcpError(
                f"controller state {path} is not lcp controller state: delete it or start without --resume"
            ) from None
        diff = [k for k in set(settings) | set(old) if old.get(k) != settings.get(k)]
        if diff:
            raise LcpError(
                f"controller state {path} was made with other settings ({', '.join(sorted(diff)[:4])}): "
                "use the same settings or start without --resume"
            )
        try:
            t = load_tensors(path)
            ctl.load_state_dict({k[4:]: v for k, v in t.items() if k.startswith("ctl.")})
            sd = opt.state_dict()
            state = {}
            for i in (i for g in sd["param_groups"] for i in g["params"]):
                keys = [k for k in t if k.startswith(f"opt.{i}.")]
                if keys:
                    state[i] = {k.split(".", 2)[2]: t[k].clone() for k in keys}
            sd["state"] = state
            opt.load_state_dict(sd)
            gen.set_state(t["gen_state"].clone())
            history, best, top[:] = st["history"], st["best"], st.get("top", [best])
            advantage.mean, advantage.var = st["baseline"], st["var"]
            pending = list(zip(t["pending"].numpy().astype(bool), st["pending_rewards"]))
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError, AttributeError):
            raise LcpError(f"controller state {path} is incomplete: delete it or start without --resume") from None

    def save() -> None:
        if path is None:
            return
        tensors = {f"ctl.{k}": v for k, v in ctl.state_dict().items()}
        for i, s in opt.state_dict()["state"].items():
            for k, v in s.items():
                tensors[f"opt.{i}.{k}"] = torch.as_tensor(v)
        tensors["gen_state"] = gen.get_state()
        tensors["pending"] = torch.as_tensor(np.array([k for k, _ in pending], dtype=np.uint8).reshape(-1, cg.n))
        st = {
            "settings": settings,
            "history": history,
            "best": best,
            "top": top,
            "baseline": advantage.mean,
            "var": advantage.var,
            "pending_rewards": [r for _, r in pending],
        }
        save_tensors(tensors, path, metadata={"state": json.dumps(st)})

    base = cg.base(budget_type)
    if best["reward"] == -math.inf and cfg.prior_weight > 0:
        # the prior's own mask (most important connections first) is the result to beat, like AMC's uniform policy
        prior = cg.project(cg.full(), importance, budget=budget, metric=budget_type, fill=method == "ads")
        acc = float(evaluate(prior)["acc"])
        rho = cg.value(prior, budget_type) / base
        reward = shaped_reward(method, acc, rho, budget, cfg) if math.isfinite(acc) else -1.0
        best = {"reward": reward, "keep": prior.astype(int).tolist(), "episode": 0}
        remember(dict(best))
        log.info("importance prior's mask: reward %.4f (cost %.3f)", reward, rho)
        save()
    bar = tqdm(
        total=cfg.episodes, initial=len(history), desc=method, disable=not progress, dynamic_ncols=True, leave=False
    )
    try:
        for episode in range(len(history), cfg.episodes):
            t0 = time.perf_counter()
            with torch.no_grad():
                logits, sampled = ctl(gen=gen)
            probs = torch.sigmoid(logits[0]).numpy().astype(np.float64)
            sample = sampled[0].numpy() > 0.5
            keep = cg.project(sample, probs, budget=budget, metric=budget_type, fill=method == "ads")
            result = evaluate(keep)
            acc = float(result["acc"])
            rho = cg.value(keep, budget_type) / base
            reward = shaped_reward(method, acc, rho, budget, cfg) if math.isfinite(acc) else -1.0
            pending.append((sample, reward))  # the sampled mask is the action; the projection is environment
            row = {
                "episode": episode + 1,
                "update": episode // cfg.samples + 1,
                "reward": reward,
                "acc": acc,
                "loss": float(result.get("loss", float("nan"))),
                "cost": rho,
                "kept": int(keep.sum()),
                "sampled_kept": int(sample.sum()),
                "alive": int(cg.alive(keep).sum()),
                "entropy": float(entropy(logits)[0]),
            }
            if len(pending) == cfg.samples or episode == cfg.episodes - 1:
                reinforce_step(ctl, opt, pending, advantage, cfg, density)
                pending = []
            entry = {"reward": reward, "keep": keep.astype(int).tolist(), "episode": episode + 1}
            if reward > best["reward"]:
                best = entry
            remember(entry)
            history.append(
                {**row, "best": best["reward"], "baseline": advantage.mean, "seconds": time.perf_counter() - t0}
            )
            save()
            bar.set_postfix(best=f"{best['reward']:.4f}", refresh=False)
            bar.update(1)
    finally:
        bar.close()
    ranked = sorted(top, key=lambda e: (-e["reward"], e["episode"]))
    return ControllerResult(np.asarray(best["keep"], dtype=bool), float(best["reward"]), history, ranked)
