"""Command line: ``lcp prune``, ``lcp eval``, ``lcp check``. Bad input ends with one line and exit code 2."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

from lcp.errors import LcpError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints usage too)
        self.exit(2, f"{self.prog}: error: {message}\n")


def _budget(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"budget must be a number in (0, 1], got '{text}'") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(
            f"budget must be in (0, 1] (the fraction of the baseline cost to keep: 0.5 keeps 50%), got {text}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return value


def _budget_list(text: str) -> list[float]:
    return [_budget(t) for t in text.split(",") if t.strip()]


def _add_prune_args(p: argparse.ArgumentParser) -> None:
    from lcp.engine.connections import CONNECTION_METHODS
    from lcp.cut.importance import AGGREGATIONS, CRITERIA
    from lcp.cut.ranking import AGENT_METHODS, BUDGET_TYPES, METHODS

    S = argparse.SUPPRESS  # unset options fall back to --recipe, then to PruneConfig's defaults
    p.add_argument("--recipe", help="YAML file of options (keys as the long options, with _); flags override it")
    p.add_argument("--model", default=S, help="zoo name (resnet56, mobilenetv2, ...), timm name or tv:NAME "
                                              "(default resnet56)")
    p.add_argument("--budget", type=_budget, default=S,
                   help="fraction of the baseline cost to keep, in (0, 1]; 0.5 keeps 50%% (default 0.5)")
    p.add_argument("--budgets", type=_budget_list, default=S,
                   help="several budgets, e.g. 0.7,0.5,0.3: one search, one output folder per budget")
    p.add_argument("--budget-type", choices=BUDGET_TYPES, default=S, help="what the budget counts: macs, params, or latency measured on --device (default macs)")
    p.add_argument("--method", choices=METHODS + AGENT_METHODS + CONNECTION_METHODS, default=S,
                   help="lcp: learned layer compensation (default); global: plain global ranking; "
                        "uniform: one keep ratio for all layers; random: seeded random ranking; "
                        "lfgcl / amc: keep ratio per layer from a DDPG agent, label-free KL / cross-entropy "
                        "reward; ads / lwp (DenseNets): dense connections kept by an LSTM controller, held-out "
                        "accuracy / FLOPs-shaped reward")
    p.add_argument("--transforms", default=S, help="transforms.json with learned (alpha, kappa) per group "
                                                   "(method lcp; skips the search)")
    p.add_argument("--importance", choices=CRITERIA, default=S, help="filter importance (default l2)")
    p.add_argument("--aggregate", choices=AGGREGATIONS, default=S,
                   help="how a coupled unit's filter scores combine (default mean; LeGR used sum)")
    p.add_argument("--data", default=S, help="cifar10 or an ImageFolder root with train/ and test/ or val/ "
                                             "(default: the model's data set)")
    p.add_argument("--checkpoint", default=S, help="state dict to start from (default: $LCP_WEIGHTS/"
                                                   "<model>_<data>.pt, then the user cache, else train one)")
    p.add_argument("--pretrained", action="store_true", default=S,
                   help="start from the hub's pretrained weights (timm, tv:; online) when no --checkpoint is given")
    p.add_argument("--input-size", type=int, nargs=3, metavar=("C", "H", "W"), default=S,
                   help="input size to prune and train at (default: the model's, from timm's pretrained_cfg)")
    p.add_argument("--out", default=S, help="output folder (default runs/prune)")
    p.add_argument("--finetune-epochs", type=_count, default=S, help="fine-tuning epochs after the cut (default 1)")
    p.add_argument("--lr", type=float, default=S, help="fine-tuning learning rate (default 0.01, cosine)")
    p.add_argument("--batch-size", type=int, default=S, help="training batch size (default 128)")
    p.add_argument("--kd", action="store_true", default=S, help="distill from the unpruned model while fine-tuning")
    p.add_argument("--recal-batches", type=_count, default=S, help="BatchNorm recalibration batches (default 20)")
    p.add_argument("--holdout", type=int, default=S, help="training images held out for selection and search "
                                                          "(default 5000)")
    p.add_argument("--round-to", type=int, default=S, help="keep widths in multiples of this many channel units")
    p.add_argument("--min-ratio", type=_fraction, default=S, help="per-group floor: keep at least this fraction "
                                                              "(and 2 channels) (default 0.1)")
    p.add_argument("--baseline-epochs", type=int, default=S, help="epochs when a baseline must be trained first")
    p.add_argument("--seed", type=int, default=S, help="random seed (default 0)")
    p.add_argument("--threads", type=int, default=S, help="torch CPU threads (also for latency timing)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=S,
                   help="device for fine-tuning, evaluation, latency measurements and the lfgcl/amc/ads/lwp searches "
                   "(the lcp search runs on the CPU; default cpu)")
    p.add_argument("--latency-batch", type=int, default=S, help="batch size of latency measurements (default 1)")
    p.add_argument("--resume", action="store_true", default=S, help="continue an interrupted run in --out")
    p.add_argument("--overwrite", action="store_true", default=S, help="replace another run in --out")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=S, help="no progress bars")
    g = p.add_argument_group("search (method lcp without --transforms)")
    g.add_argument("--search-budget", type=_budget, default=S, help="budget the search prunes to (default: every budget asked for, "
                                                        "their mean held-out loss)")
    g.add_argument("--candidates", type=int, default=S, help="candidates evaluated by the search (default 400)")
    g.add_argument("--population", type=int, default=S, help="legr population (default 64, LeGR's)")
    g.add_argument("--tournament", type=int, default=S, help="legr tournament size (default 16)")
    g.add_argument("--optimizer", default=S, help="legr (regularized evolution, default) or a nevergrad optimizer: "
                                                  "ngopt, cma, de, ...")
    g.add_argument("--compensation", choices=("affine", "additive"), default=S,
                   help="affine: alpha*s+kappa (LeGR, default); additive: s+kappa (LcP)")
    g.add_argument("--tau", type=int, default=S, help="SGD steps before scoring a candidate (default 0)")
    g.add_argument("--label-free", action="store_true", default=S,
                   help="fitness from matching the unpruned model's outputs (no labels needed)")
    g.add_argument("--workers", type=int, default=S, help="local processes evaluating candidates")
    g.add_argument("--executor", default=S, help="dask://HOST:PORT to evaluate candidates on a Dask cluster")
    a = p.add_argument_group("agent (methods lfgcl, amc, ads and lwp)")
    a.add_argument("--episodes", type=int, default=S, help="agent episodes, warm-up included (default 30)")
    a.add_argument("--warmup-episodes", type=_count, default=S,
                   help="random-action episodes before the agent learns (default 10)")


def _config(args: argparse.Namespace, cls: Any = None) -> Any:
    """The command's config (``PruneConfig`` unless ``cls``): recipe values, overridden by the given flags."""
    from lcp.run.pipeline import PruneConfig

    cls = cls or PruneConfig
    return cls(**_given(args, cls))


def _given(args: argparse.Namespace, cls: Any) -> dict[str, Any]:
    """The options set by the recipe or the flags (unset ones are left to the config's defaults)."""
    values: dict[str, Any] = {}
    if getattr(args, "recipe", None):
        values.update(_read_recipe(args.recipe, cls))
    values.update({k: v for k, v in vars(args).items() if k in cls.fields()})
    return values


def _read_recipe(path: str, cls: Any = None) -> dict[str, Any]:
    import yaml

    from lcp.run.pipeline import PruneConfig

    cls = cls or PruneConfig
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise LcpError(f"cannot read recipe {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise LcpError(f"recipe {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise LcpError(f"recipe {path} must be a mapping of options")
    data = {k.replace("-", "_"): v for k, v in data.items()}
    if "no_progress" in data:  # the recipe spelling of --no-progress
        data["progress"] = not data.pop("no_progress")
    unknown = sorted(set(data) - set(cls.fields()))
    if unknown:
        raise LcpError(f"recipe {path} has unknown options: {', '.join(unknown)}")
    if "budget" in data:
        try:
            data["budget"] = _budget(str(data["budget"]))
        except argparse.ArgumentTypeError as e:
            raise LcpError(f"recipe {path}: {e}") from None
    return data


def cmd_prune(args: argparse.Namespace) -> int:
    from lcp.run.pipeline import PruneConfig, run_prune
    from lcp.report import print_table

    given = _given(args, PruneConfig)
    cfg = PruneConfig(**given)
    if cfg.structure_from:
        from lcp.methods.structure import check_options

        check_options(cfg, given)  # --method lcp is refused too, though it is the default
        if "budget" not in given and "budgets" not in given:
            cfg.budget = None  # the structure fixes the cost; nothing to compare with
    report = run_prune(cfg)
    if len(report):  # empty on torchrun ranks other than 0
        print(print_table(report))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from lcp.run.pipeline import TrainConfig, run_train
    from lcp.report import print_table

    print(print_table(run_train(_config(args, TrainConfig))))
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from lcp.run.pipeline import run_search

    cfg = _config(args)
    if cfg.structure_from:
        raise LcpError("lcp search learns a structure; --structure-from belongs to lcp prune")
    if cfg.method != "lcp":
        raise LcpError("lcp search learns the compensation of method lcp; drop --method")
    run_search(cfg)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from lcp.models import store
    from lcp.training.data import load_data
    from lcp.io import read_json
    from lcp.models.factory import model_info
    from lcp.training.train import evaluate

    model = store.load(args.dir)
    spec = read_json(Path(args.dir) / "channels.json", what="channels.json")
    info = model_info(spec["model"])
    data = args.data or spec.get("data") or info.default_dataset
    if data is None:
        raise LcpError("pass --data (the data set to evaluate on)")
    bundle = load_data(data, input_size=info.input_size, mean=info.mean, std=info.std, holdout=0)
    if bundle.num_classes != spec["num_classes"]:
        raise LcpError(f"{data} has {bundle.num_classes} classes but the model has {spec['num_classes']}")
    res = evaluate(model, bundle.loader("test", 256))
    print(f"{spec['model']} from {args.dir}: top-1 {res['top1']:.2f}% on {len(bundle.test_x)} test images "
          f"(loss {res['loss']:.4f})")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    import torch

    from lcp.cut.diagnose import check
    from lcp.models.factory import create_model, model_info

    info = model_info(args.model)
    size = tuple(args.input_size) if args.input_size else info.input_size
    model = create_model(args.model, num_classes=args.num_classes, checkpoint=args.checkpoint,
                         pretrained=args.pretrained).eval()
    rep = check(model, torch.zeros(1, *size), budget=args.budget, ignore=args.ignore or (), name=info.name,
                suggest=args.suggest)
    print("\n".join(rep.lines()))
    if rep.status != "ok":
        print(f"lcp: error: {rep.model} cannot be pruned to {args.budget:g} safely: {rep.reason}", file=sys.stderr)
    return 0 if rep.status == "ok" else 2


def cmd_bench(args: argparse.Namespace) -> int:
    from lcp.models import store
    from lcp.io import atomic_path, read_json
    from lcp.cut.latency import bench
    from lcp.models.factory import create_model, model_info
    from lcp.report import print_table

    if (args.dir is None) == (args.model is None):
        raise LcpError("pass a pruned folder (lcp bench DIR) or --model NAME")
    if args.dir:
        spec = read_json(Path(args.dir) / "channels.json", what="channels.json")
        name, size = spec["model"], tuple(spec["input_size"])
        models = {"original": create_model(name, num_classes=spec["num_classes"]).eval(),
                  "pruned": store.load(args.dir)}
        out = Path(args.out or Path(args.dir) / "bench.csv")
    else:
        name, size = args.model, model_info(args.model).input_size
        models = {"original": create_model(args.model).eval()}
        out = Path(args.out or "bench.csv")
    table = bench(models, size, batches=tuple(args.batch), device=args.device, n_threads=args.threads,
                  repeats=args.repeats, compile=not args.no_compile)
    table.insert(0, "name", name)
    with atomic_path(out) as tmp:
        table.to_csv(tmp, index=False)
    print(print_table(table))
    print(f"written {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = _Parser(prog="lcp", description="Layer-compensated structured pruning for CNNs.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = sub.add_parser("prune", help="prune a trained model to a budget, fine-tune it and write a report",
                       description="Prune a trained model to a MACs or params budget. Example: "
                                   "lcp prune --model resnet56 --budget 0.5 --method global --out runs/r56")
    _add_prune_args(p)
    p.add_argument("--structure-from", metavar="DIR", default=argparse.SUPPRESS,
                   help="apply the pruned structure of an earlier lcp prune run (its --out folder: removed channels "
                        "or connections) to this model, data and weights, any number of classes; no search, "
                        "--budget not needed; then recalibration, fine-tuning and outputs as usual")
    p.set_defaults(func=cmd_prune)
    s = sub.add_parser("search", help="learn the layer compensation only and write transforms.json",
                       description="Learn per-group (alpha, kappa) with the meta-learner and write "
                                   "transforms.json; reuse it with lcp prune --transforms FILE at any budget.")
    _add_prune_args(s)
    s.set_defaults(func=cmd_search)
    t = sub.add_parser("train", help="train a baseline from scratch (checkpoint per epoch, --resume)",
                       description="Train a model from scratch on the train split (the held-out images are kept "
                                   "out). Example: lcp train --recipe recipes/densenet40_cifar10.yaml")
    S = argparse.SUPPRESS
    t.add_argument("--recipe", help="YAML file of options (keys as the long options, with _); flags override it")
    t.add_argument("--model", default=S, help="zoo name, timm name or tv:NAME (default densenet40)")
    t.add_argument("--data", default=S, help="cifar10 or an ImageFolder root (default: the model's data set)")
    t.add_argument("--input-size", type=int, nargs=3, metavar=("C", "H", "W"), default=S)
    t.add_argument("--epochs", type=int, default=S, help="training epochs (default 30)")
    t.add_argument("--lr", type=float, default=S, help="peak learning rate (default 0.1)")
    t.add_argument("--schedule", choices=("onecycle", "cosine"), default=S,
                   help="onecycle: 30%% warm-up then cosine (default); cosine: cosine from --lr")
    t.add_argument("--batch-size", type=int, default=S, help="batch size (default 128)")
    t.add_argument("--weight-decay", type=float, default=S, help="default 5e-4")
    t.add_argument("--holdout", type=_count, default=S,
                   help="training images kept out (the searches' fitness split, default 5000)")
    t.add_argument("--seed", type=int, default=S)
    t.add_argument("--threads", type=int, default=S, help="torch CPU threads")
    t.add_argument("--device", default=S, help="cpu (default) or cuda")
    t.add_argument("--out", default=S, help="output folder (default runs/train)")
    t.add_argument("--resume", action="store_true", default=S, help="continue an interrupted run in --out")
    t.add_argument("--overwrite", action="store_true", default=S, help="replace another run in --out")
    t.add_argument("--no-progress", dest="progress", action="store_false", default=S, help="no progress bars")
    t.set_defaults(func=cmd_train)
    e = sub.add_parser("eval", help="re-measure the accuracy of a pruned model folder")
    e.add_argument("dir", help="output folder of lcp prune")
    e.add_argument("--data", help="cifar10 or an ImageFolder root (default: the data set it was pruned on)")
    e.set_defaults(func=cmd_eval)
    c = sub.add_parser("check", help="trace, plan a cut, build and verify a model; say what is frozen and why")
    c.add_argument("--model", required=True, help="zoo name, timm name or tv:NAME")
    c.add_argument("--budget", type=_budget, default=0.5, help="MACs fraction to plan for (default 0.5)")
    c.add_argument("--ignore", action="append", help="module-name glob whose channels are kept (repeatable)")
    c.add_argument("--input-size", type=int, nargs=3, metavar=("C", "H", "W"),
                   help="example input size (default: the model's)")
    c.add_argument("--num-classes", type=int, default=None, help="classifier size (default: the model's)")
    c.add_argument("--checkpoint", default=None, help="weights to load first (optional)")
    c.add_argument("--pretrained", action="store_true", help="load the hub's pretrained weights first (online)")
    c.add_argument("--no-suggest", dest="suggest", action="store_false",
                   help="when it fails, do not search for --ignore patterns that make it prune (up to 2 minutes)")
    c.set_defaults(func=cmd_check)
    b = sub.add_parser("bench", help="latency, throughput and memory of a pruned folder against its original")
    b.add_argument("dir", nargs="?", help="output folder of lcp prune")
    b.add_argument("--model", help="bench one model by name instead")
    b.add_argument("--batch", type=int, nargs="+", default=[1, 64], help="batch sizes (default 1 64)")
    b.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    b.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    b.add_argument("--repeats", type=int, default=20, help="timed runs per measurement (median reported)")
    b.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    b.add_argument("--out", help="CSV path (default DIR/bench.csv)")
    b.set_defaults(func=cmd_bench)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except LcpError as err:
        print(f"lcp: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lcp: interrupted; run the same command with --resume to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
