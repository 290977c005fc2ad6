"""RL search over DenseNet connections: ``ads`` (accuracy reward) and ``lwp`` (FLOPs-shaped reward).

Both use one ENAS-style controller (Pham et al. 2018): an LSTM cell steps once per consumer (dense layer,
transition, classifier) in graph order; at consumer c it emits one keep probability per incoming connection
s -> c with ENAS's skip-connection attention, p = sigmoid(C tanh((v^T tanh(W_a h_s + W_q h_c) + b) / T)),
where h_s is the hidden state of the step that produced source s (a learned anchor for sources that are not
consumers, such as the stem). Keep/drop is sampled per connection (Bernoulli), then *projected* onto the budget
(``ConnectionGraph.project``: drop the lowest-probability kept connections until the cost fits; ``ads`` also
adds back the highest-probability dropped ones while they fit), so every evaluated network meets the budget.
The policy is trained with REINFORCE on the projected action (teacher-forced log-probability), an exponential
moving-average baseline and an entropy bonus.

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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .connections import CONNECTION_METHODS, ConnectionGraph
from .errors import LcpError
from .io import PathLike, atomic_write_text, load_tensor_metadata, load_tensors, save_tensors

log = logging.getLogger("lcp.controllers")

_STATE_FORMAT = "lcp-connection-controller/1"
N_FEATURES = 6


@dataclass
class ControllerConfig:
    """REINFORCE controller hyperparameters (ENAS's where known; see docs/connections.md)."""

    episodes: int = 30
    hidden: int = 64
    lr: float = 1e-3
    baseline_decay: float = 0.95
    entropy_weight: float = 1e-4
    tanh_constant: float = 1.5
    temperature: float = 1.0
    init_keep: float = 0.5  # initial keep probability (sets the logit bias)
    lwp_lambda: float = 0.1  # lwp: bonus per unit of cost saved
    lwp_gamma: float = 1.0  # lwp: penalty per unit of cost over the budget

    def check(self) -> None:
        if self.episodes < 1 or self.hidden < 1 or not (0 < self.init_keep < 1) or self.lr <= 0:
            raise LcpError("episodes and hidden must be at least 1, init_keep in (0, 1), lr > 0")
        if not (0 <= self.baseline_decay < 1) or self.temperature <= 0:
            raise LcpError("baseline_decay must be in [0, 1) and temperature > 0")


@dataclass
class ControllerResult:
    """Best connection mask found, its reward and one history row per episode."""

    keep: np.ndarray
    best_reward: float
    history: list[dict] = field(default_factory=list)


class Controller(nn.Module):
    """LSTM controller emitting keep probabilities for every connection, consumer by consumer."""

    def __init__(self, cg: ConnectionGraph, cfg: ControllerConfig):
        super().__init__()
        self.cfg = cfg
        h = cfg.hidden
        self.embed = nn.Linear(N_FEATURES + 1, h)
        self.cell = nn.LSTMCell(h, h)
        self.w_anchor = nn.Linear(h, h, bias=False)
        self.w_query = nn.Linear(h, h, bias=False)
        self.v = nn.Linear(h, 1, bias=False)
        self.input_anchor = nn.Parameter(torch.zeros(h))
        p = cfg.init_keep
        target = float(np.clip(math.log(p / (1 - p)) / cfg.tanh_constant, -0.999, 0.999))
        self.bias = nn.Parameter(torch.tensor(math.atanh(target) * cfg.temperature))
        for w in (self.embed.weight, self.w_anchor.weight, self.w_query.weight, self.v.weight):
            nn.init.uniform_(w, -0.1, 0.1)  # ENAS: uniform(-0.1, 0.1)
        self.register_buffer("features", torch.as_tensor(_features(cg), dtype=torch.float32), persistent=False)
        self.sources = [torch.as_tensor(c.sources, dtype=torch.long) for c in cg.consumers]
        # for every connection: consumer step that produced its source, or -1 for a non-consumer source
        self.src_step = [int(cg.consumer_of_record.get(int(s), -1)) for s in cg.src]
        self.n = cg.n

    def forward(self, actions: Tensor | None = None, gen: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """(logits of every connection, actions): samples when ``actions`` is None, else teacher-forces them."""
        cfg = self.cfg
        h = torch.zeros(1, cfg.hidden)
        c = torch.zeros(1, cfg.hidden)
        prev = torch.ones(1, 1)
        logits = torch.zeros(self.n)
        out = torch.zeros(self.n) if actions is None else actions.float()
        anchors: list[Tensor] = []
        base_anchor = self.w_anchor(self.input_anchor)
        logit_list: list[tuple[Tensor, Tensor]] = []
        for step, src in enumerate(self.sources):
            x = torch.cat([self.features[step:step + 1], prev], 1)
            h, c = self.cell(torch.tanh(self.embed(x)), (h, c))
            anchors.append(self.w_anchor(h[0]))
            q = self.w_query(h[0])
            a = torch.stack([anchors[self.src_step[k]] if self.src_step[k] >= 0 else base_anchor
                             for k in src.tolist()])
            raw = (self.v(torch.tanh(a + q)).squeeze(1) + self.bias) / cfg.temperature
            lg = cfg.tanh_constant * torch.tanh(raw)
            logit_list.append((src, lg))
            if actions is None:
                act = torch.bernoulli(torch.sigmoid(lg.detach()), generator=gen)
                out[src] = act
            else:
                act = out[src]
            prev = act.mean().reshape(1, 1)
        for src, lg in logit_list:
            logits = logits.index_put((src,), lg)
        return logits, out


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
        rows.append([c.block / max(1, n_blocks - 1), pos[i] / max(1, counts[c.block] - 1),
                     len(recs[c.record].in_ids) / max_in, cg.full_cost[i][0] / total,
                     1.0 if c.kind == "conv" else 0.0, len(c.sources) / max_src])
    return np.asarray(rows, dtype=np.float32)


def shaped_reward(method: str, acc: float, rho: float, budget: float, cfg: ControllerConfig) -> float:
    """``ads``: acc. ``lwp``: acc + lambda (1 - rho) within the budget, acc - gamma (rho - budget) over it."""
    if method == "ads":
        return acc
    if rho <= budget + 1e-12:
        return acc + cfg.lwp_lambda * (1.0 - rho)
    return acc - cfg.lwp_gamma * (rho - budget)


def search_connections(cg: ConnectionGraph, evaluate: Callable[[np.ndarray], dict], *, method: str = "ads",
                       budget: float, budget_type: str = "macs", cfg: ControllerConfig | None = None, seed: int = 0,
                       state_path: PathLike | None = None, resume: bool = False, progress: bool = True,
                       settings: dict | None = None) -> ControllerResult:
    """Run ``cfg.episodes`` REINFORCE episodes; ``evaluate(keep)`` returns at least {"acc": held-out top-1 in [0, 1]}.

    The state (controller, Adam, sampling generator, baseline, history, best mask) is written atomically to
    ``state_path`` after every episode; ``resume`` continues it and ends with the same mask as an uninterrupted
    run (an interrupted episode is re-run).
    """
    from tqdm.auto import tqdm

    if method not in CONNECTION_METHODS:
        raise LcpError(f"unknown connection method {method!r}; choose one of {', '.join(CONNECTION_METHODS)}")
    if budget_type not in ("macs", "params"):
        raise LcpError(f"method {method} takes a macs or params budget, not {budget_type}")
    cfg = cfg or ControllerConfig()
    cfg.check()
    full_mask = cg.project(cg.full(), np.zeros(cg.n), budget=budget, metric=budget_type)  # unreachable: raises now
    settings = {"format": _STATE_FORMAT, "method": method, "seed": seed, "budget": budget, "budget_type": budget_type,
                "controller": asdict(cfg), "connections": cg.n, **(settings or {})}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        ctl = Controller(cg, cfg)
    opt = torch.optim.Adam(ctl.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(seed)
    history: list[dict] = []
    best: dict = {"reward": -math.inf, "keep": full_mask.astype(int).tolist()}
    baseline: float | None = None
    path = Path(state_path) if state_path is not None else None
    if resume and path is not None and path.is_file():
        try:
            st = json.loads(load_tensor_metadata(path)["state"])
            old = st["settings"]
        except (KeyError, ValueError):
            raise LcpError(f"controller state {path} is not lcp controller state: delete it or start without "
                           "--resume") from None
        diff = [k for k in set(settings) | set(old) if old.get(k) != settings.get(k)]
        if diff:
            raise LcpError(f"controller state {path} was made with other settings ({', '.join(sorted(diff)[:4])}): "
                           "use the same settings or start without --resume")
        t = load_tensors(path)
        ctl.load_state_dict({k[4:]: v for k, v in t.items() if k.startswith("ctl.")})
        sd = opt.state_dict()
        state = {}
        for i in range(len(sd["param_groups"][0]["params"])):
            keys = [k for k in t if k.startswith(f"opt.{i}.")]
            if keys:
                state[i] = {k.split(".", 2)[2]: t[k].clone() for k in keys}
        sd["state"] = state
        opt.load_state_dict(sd)
        gen.set_state(t["gen_state"].clone())
        history, best, baseline = st["history"], st["best"], st["baseline"]

    def save() -> None:
        if path is None:
            return
        tensors = {f"ctl.{k}": v for k, v in ctl.state_dict().items()}
        for i, s in opt.state_dict()["state"].items():
            for k, v in s.items():
                tensors[f"opt.{i}.{k}"] = torch.as_tensor(v)
        tensors["gen_state"] = gen.get_state()
        st = {"settings": settings, "history": history, "best": best, "baseline": baseline}
        save_tensors(tensors, path, metadata={"state": json.dumps(st)})

    base = cg.base(budget_type)
    bar = tqdm(total=cfg.episodes, initial=len(history), desc=method, disable=not progress, dynamic_ncols=True,
               leave=False)
    try:
        for episode in range(len(history), cfg.episodes):
            t0 = time.perf_counter()
            with torch.no_grad():
                logits, sampled = ctl(gen=gen)
            probs = torch.sigmoid(logits).numpy().astype(np.float64)
            keep = cg.project(sampled.numpy() > 0.5, probs, budget=budget, metric=budget_type,
                              fill=method == "ads")
            result = evaluate(keep)
            acc = float(result["acc"])
            rho = cg.value(keep, budget_type) / base
            reward = shaped_reward(method, acc, rho, budget, cfg) if math.isfinite(acc) else -1.0
            baseline = reward if baseline is None else baseline + (1 - cfg.baseline_decay) * (reward - baseline)
            logits, _ = ctl(torch.as_tensor(keep, dtype=torch.float32))
            logp = -F.binary_cross_entropy_with_logits(logits, torch.as_tensor(keep, dtype=torch.float32),
                                                       reduction="sum")
            p = torch.sigmoid(logits)
            entropy = -(p * F.logsigmoid(logits) + (1 - p) * F.logsigmoid(-logits)).sum()
            loss = -(reward - baseline) * logp - cfg.entropy_weight * entropy
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if reward > best["reward"]:
                best = {"reward": reward, "keep": keep.astype(int).tolist(), "episode": episode + 1}
            history.append({"episode": episode + 1, "reward": reward, "best": best["reward"], "acc": acc,
                            "loss": float(result.get("loss", float("nan"))), "cost": rho,
                            "kept": int(keep.sum()), "sampled_kept": int(sampled.sum()),
                            "alive": int(cg.alive(keep).sum()), "baseline": baseline,
                            "entropy": float(entropy.detach()), "seconds": time.perf_counter() - t0})
            save()
            bar.set_postfix(best=f"{best['reward']:.4f}", refresh=False)
            bar.update(1)
    finally:
        bar.close()
    return ControllerResult(np.asarray(best["keep"], dtype=bool), float(best["reward"]), history)


class HeldOut:
    """``evaluate(keep)``: build the pruned network, recalibrate BatchNorm on ``recal`` batches, then top-1 and
    mean cross-entropy on the held-out batches (never the test split)."""

    def __init__(self, cg: ConnectionGraph, recal: list[Tensor], eval_x: list[Tensor], eval_y: list[Tensor],
                 device: str | torch.device = "cpu"):
        self.device = dev = torch.device(device)  # where candidates run; the batches are moved there once
        self.cg, self.recal = cg, [x.to(dev) for x in recal]
        self.eval_x, self.eval_y = [x.to(dev) for x in eval_x], [y.to(dev) for y in eval_y]
        self.n = sum(len(y) for y in eval_y)
        if self.n == 0 or not recal:
            raise LcpError("the connection search needs held-out images and training batches")
        if any(bool((y < 0).any()) for y in eval_y):
            raise LcpError("the held-out images are unlabeled: methods ads and lwp need labels")

    def __call__(self, keep: np.ndarray) -> dict:
        from .train import recalibrate_bn

        model = self.cg.apply(keep).to(self.device)
        model.eval()
        with torch.inference_mode():
            recalibrate_bn(model, self.recal, batches=len(self.recal))
            correct, total = 0, 0.0
            for x, y in zip(self.eval_x, self.eval_y):
                out = model(x).float()
                total += float(F.cross_entropy(out, y, reduction="sum"))
                correct += int((out.argmax(1) == y).sum())
        return {"acc": correct / self.n, "loss": total / self.n}

    @classmethod
    def from_bundle(cls, cg: ConnectionGraph, bundle: "DataBundle", *, recal_batches: int = 4,  # noqa: F821
                    eval_images: int = 1000, batch_size: int = 128, seed: int = 0,
                    device: str | torch.device = "cpu") -> "HeldOut":
        recal = []
        for x, _ in bundle.loader("train", batch_size, shuffle=True, seed=seed):
            if len(recal) == recal_batches:
                break
            recal.append(x)
        xs, ys = [], []
        for x, y in bundle.loader("holdout", batch_size, limit=eval_images):
            xs.append(x)
            ys.append(y)
        return cls(cg, recal, xs, ys, device)


def write_controller_csv(history: list[dict], path: PathLike) -> None:
    """One row per episode (reward, best, acc, loss, cost, kept, alive, baseline, entropy, seconds), atomically."""
    cols = ("episode", "reward", "best", "acc", "loss", "cost", "kept", "sampled_kept", "alive", "baseline",
            "entropy", "seconds")
    lines = [",".join(cols)]
    for h in history:
        lines.append(",".join("" if h.get(c) is None else (str(h[c]) if isinstance(h[c], int) else f"{h[c]:.6g}")
                              for c in cols))
    atomic_write_text(path, "\n".join(lines) + "\n")


# ------------------------------------------------------------------------------------------------- pipeline


def run_connection_prune(cfg: "PruneConfig", loaded: "Loaded", graph: "ChannelGraph",  # noqa: F821
                         out: Path, state: dict, save_state: Callable[..., None],
                         log: Callable[[str], None], keep: np.ndarray | None = None,
                         source: dict[str, str] | None = None) -> "pd.DataFrame":  # noqa: F821
    """``lcp prune --method ads|lwp``: search the connections at ``cfg.budget``, cut, recalibrate, evaluate,
    fine-tune and write model.safetensors, channels.json (with the removed connections), connections.json,
    controller.csv and report.csv into ``out``. With ``keep`` (``--structure-from``) the connections are given:
    no search; ``source`` (where they came from) adds report columns and channels.json keys."""
    from . import store
    from .io import atomic_write_json
    from .report import write_report
    from .train import evaluate, finetune, recalibrate_bn

    if cfg.budgets and len(cfg.budgets) > 1:
        raise LcpError(f"method {cfg.method} searches one budget: pass --budget, not several --budgets")
    budget = cfg.all_budgets()[0]
    if cfg.budget_type not in ("macs", "params"):
        raise LcpError(f"method {cfg.method} takes --budget-type macs or params, not {cfg.budget_type}")
    if cfg.kd or cfg.label_free:
        raise LcpError(f"method {cfg.method} rewards held-out accuracy: --label-free and --kd are not supported")
    cg = ConnectionGraph(graph)
    log(f"{loaded.name}: {cg.summary()}")
    best_reward, search_s = None, 0.0
    if keep is None:
        ccfg = ControllerConfig(episodes=cfg.episodes)
        reward = "held-out top-1" if cfg.method == "ads" else f"held-out top-1 + {ccfg.lwp_lambda:g} (1 - cost ratio)"
        log(f"searching connections: {cfg.method} controller, {cfg.episodes} episodes at {budget:g} of "
            f"{cfg.budget_type}, reward {reward}")
        t0 = time.perf_counter()
        ev = HeldOut.from_bundle(cg, loaded.bundle, seed=cfg.seed, device=cfg.device)
        result = search_connections(cg, ev, method=cfg.method, budget=budget, budget_type=cfg.budget_type,
                                    cfg=ccfg, seed=cfg.seed, state_path=out / "controller_state.safetensors",
                                    resume=cfg.resume, progress=cfg.progress,
                                    settings={"model": loaded.name, "weights": loaded.weights})
        search_s = state.get("search_s") or time.perf_counter() - t0
        save_state(search_s=search_s)
        write_controller_csv(result.history, out / "controller.csv")
        keep, best_reward = result.keep, result.best_reward
    t1 = time.perf_counter()
    pruned, verification = cg.prune(keep)
    prune_s = time.perf_counter() - t1
    macs, params = cg.evaluate(keep)
    alive = cg.alive(keep)
    log(f"kept {int(keep.sum())} of {cg.n} connections, {int(alive.sum())} of {len(alive)} consumers alive: "
        f"{macs / cg.macs_base:.3f} of MACs, {params / cg.params_base:.3f} of params; verified {verification}")
    atomic_write_json(out / "connections.json", {"reward": best_reward, "kept": int(keep.sum()),
                                                 "connections": cg.n, "removed": cg.names(keep),
                                                 "dead": [c.name for c, a in zip(cg.consumers, alive) if not a],
                                                 "blocks": cg.adjacency(keep)})
    dev = cfg.device
    pruned = pruned.to(dev)
    train = loaded.bundle.loader("train", cfg.batch_size, shuffle=True, augment=False, seed=cfg.seed)
    if cfg.recal_batches > 0:
        recalibrate_bn(pruned, train, batches=cfg.recal_batches, device=dev)
    test = loaded.bundle.loader("test", 256)
    done = dict(state.get("connections", {}))
    if "top1_pruned_noft" not in done:
        done["top1_pruned_noft"] = evaluate(pruned, test, device=dev)["top1"]
        save_state(connections=done)
    log(f"top-1: baseline {state['top1_base']:.2f}%, pruned before fine-tuning {done['top1_pruned_noft']:.2f}%")
    t2 = time.perf_counter()
    ckpt = out / "finetune.ckpt"
    if cfg.finetune_epochs > 0:
        finetune(pruned, loaded.bundle, epochs=cfg.finetune_epochs, lr=cfg.lr, batch_size=cfg.batch_size,
                 ckpt_path=ckpt, resume=cfg.resume and ckpt.is_file(), seed=cfg.seed, progress=cfg.progress,
                 device=dev)
        top1 = evaluate(pruned, test, device=dev)["top1"]
    else:
        top1 = done["top1_pruned_noft"]
    finetune_s = time.perf_counter() - t2
    pruned = pruned.cpu()
    spec = store.channels_spec(graph, np.zeros(len(graph.units), dtype=bool), pruned, model_name=loaded.name,
                               num_classes=loaded.bundle.num_classes, input_size=loaded.input_size,
                               extra={"budget": budget, "budget_type": cfg.budget_type, "method": cfg.method,
                                      "macs": macs, "params": params, "dataset": loaded.dataset,
                                      "data": loaded.data_spec, "removed_connections": cg.names(keep),
                                      **(source or {})})
    store.write(out, pruned, spec)
    row = {"model": loaded.name, "dataset": loaded.dataset, "method": cfg.method, "importance": "",
           "budget_type": cfg.budget_type, "budget": budget, "macs_base": cg.macs_base, "macs_pruned": macs,
           "macs_ratio": macs / cg.macs_base, "params_base": cg.params_base, "params_pruned": params,
           "params_ratio": params / cg.params_base, "finetune_epochs": cfg.finetune_epochs, "seed": cfg.seed,
           "top1_base": state["top1_base"], "top1_pruned_noft": done["top1_pruned_noft"], "top1_pruned": top1,
           "search_s": search_s, "prune_s": prune_s, "finetune_s": finetune_s,
           "connections_kept": int(keep.sum()), "connections": cg.n, "verification_error": verification.max_rel_error,
           **(source or {})}
    report = write_report(row, out / "report.csv")
    ckpt.unlink(missing_ok=True)
    log(f"top-1 after {cfg.finetune_epochs} fine-tuning epochs: {top1:.2f}%; outputs in {out}")
    return report
