"""Command line: ``lcp prune``, ``search``, ``train``, ``eval``, ``check``, ``bench``. Bad input ends with one line
and exit code 2.

The options of ``prune``, ``search`` and ``train`` are read from their declarations (``lcp.run.config``): flags,
types, choices, defaults and help are not re-typed here.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

from lcp.cut.diagnose import check
from lcp.cut.latency import bench
from lcp.errors import LcpError
from lcp.io import atomic_path, read_json
from lcp.methods.structure import check_options
from lcp.models import store
from lcp.models.factory import create_model, model_info
from lcp.options import add_arguments, unit_interval
from lcp.options import from_mapping as check_values
from lcp.report import print_table
from lcp.run.config import PruneConfig, TrainConfig
from lcp.run.pipeline import run_prune, run_search
from lcp.run.train_run import run_train
from lcp.training.data import load_data
from lcp.training.train import evaluate


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints usage too)
        self.exit(2, f"{self.prog}: error: {message}\n")


def _budget(text: str) -> float:
    try:
        value = float(text)
        unit_interval(value)
    except ValueError as e:
        reason = str(e) if "must be" in str(e) else f"must be a number in (0, 1], got '{text}'"
        raise argparse.ArgumentTypeError(f"budget {reason}") from None
    return value


def _recipe_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe", help="YAML file of options (keys as the long options, with _); flags override it")


def _config(args: argparse.Namespace, cls: type) -> Any:
    """The command's config: recipe values, overridden by the given flags, every value checked."""
    return cls.from_mapping(_given(args, cls), "options")  # flags are typed; ranges and recipes checked here


def _given(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The options set by the recipe or the flags (unset ones are left to the config's defaults)."""
    values: dict[str, Any] = {}
    if getattr(args, "recipe", None):
        values.update(_read_recipe(args.recipe, cls))
    values.update({k: v for k, v in vars(args).items() if k in cls.fields()})
    return values


def _read_recipe(path: str, cls: type) -> dict[str, Any]:
    """A recipe's options, each checked against its declaration (type, choices, range): one line on error."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise LcpError(f"cannot read recipe {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise LcpError(f"recipe {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    except ValueError as e:  # e.g. an integer too large for Python's str->int limit
        raise LcpError(f"recipe {path} cannot be read: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise LcpError(f"recipe {path} must be a mapping of options")
    data = {k.replace("-", "_") if isinstance(k, str) else k: v for k, v in data.items()}
    if "no_progress" in data:  # the recipe spelling of --no-progress
        data["progress"] = not data.pop("no_progress")
    return check_values(cls, data, f"recipe {path}")


def cmd_prune(args: argparse.Namespace) -> int:
    given = _given(args, PruneConfig)
    cfg = PruneConfig.from_mapping(given, "options")
    if cfg.structure_from:
        check_options(cfg, given)  # --method lcp is refused too, though it is the default
        if "budget" not in given and "budgets" not in given:
            cfg.budget = None  # the structure fixes the cost; nothing to compare with
    report = run_prune(cfg)
    if len(report):  # empty on torchrun ranks other than 0
        print(print_table(report))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    print(print_table(run_train(_config(args, TrainConfig))))
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    cfg = _config(args, PruneConfig)
    if cfg.method != "lcp":
        raise LcpError("lcp search learns the compensation of method lcp; drop --method")
    run_search(cfg)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
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
    print(
        f"{spec['model']} from {args.dir}: top-1 {res['top1']:.2f}% on {len(bundle.test_x)} test images "
        f"(loss {res['loss']:.4f})"
    )
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    info = model_info(args.model)
    size = tuple(args.input_size) if args.input_size else info.input_size
    model = create_model(
        args.model, num_classes=args.num_classes, checkpoint=args.checkpoint, pretrained=args.pretrained
    ).eval()
    rep = check(
        model, torch.zeros(1, *size), budget=args.budget, ignore=args.ignore or (), name=info.name, suggest=args.suggest
    )
    print("\n".join(rep.lines()))
    if rep.status != "ok":
        print(f"lcp: error: {rep.model} cannot be pruned to {args.budget:g} safely: {rep.reason}", file=sys.stderr)
    return 0 if rep.status == "ok" else 2


def cmd_bench(args: argparse.Namespace) -> int:
    if (args.dir is None) == (args.model is None):
        raise LcpError("pass a pruned folder (lcp bench DIR) or --model NAME")
    if args.dir:
        spec = read_json(Path(args.dir) / "channels.json", what="channels.json")
        name, size = spec["model"], tuple(spec["input_size"])
        models = {
            "original": create_model(name, num_classes=spec["num_classes"]).eval(),
            "pruned": store.load(args.dir),
        }
        out = Path(args.out or Path(args.dir) / "bench.csv")
    else:
        name, size = args.model, model_info(args.model).input_size
        models = {"original": create_model(args.model).eval()}
        out = Path(args.out or "bench.csv")
    table = bench(
        models,
        size,
        batches=tuple(args.batch),
        device=args.device,
        n_threads=args.threads,
        repeats=args.repeats,
        compile=not args.no_compile,
    )
    table.insert(0, "name", name)
    with atomic_path(out) as tmp:
        table.to_csv(tmp, index=False)
    print(print_table(table))
    print(f"written {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = _Parser(prog="lcp", description="Layer-compensated structured pruning for CNNs.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = sub.add_parser(
        "prune",
        help="prune a trained model to a budget, fine-tune it and write a report",
        description="Prune a trained model to a MACs or params budget. Example: "
        "lcp prune --model resnet56 --budget 0.5 --method global --out runs/r56",
    )
    _recipe_arg(p)
    add_arguments(p, PruneConfig)
    p.set_defaults(func=cmd_prune)
    s = sub.add_parser(
        "search",
        help="learn the layer compensation only and write transforms.json",
        description="Learn per-group (alpha, kappa) with the meta-learner and write "
        "transforms.json; reuse it with lcp prune --transforms FILE at any budget.",
    )
    _recipe_arg(s)
    add_arguments(s, PruneConfig, exclude=("structure_from",))
    s.set_defaults(func=cmd_search)
    t = sub.add_parser(
        "train",
        help="train a baseline from scratch (checkpoint per epoch, --resume)",
        description="Train a model from scratch on the train split (the held-out images are kept "
        "out). Example: lcp train --recipe recipes/densenet40_cifar10.yaml",
    )
    _recipe_arg(t)
    add_arguments(t, TrainConfig)
    t.set_defaults(func=cmd_train)
    e = sub.add_parser("eval", help="re-measure the accuracy of a pruned model folder")
    e.add_argument("dir", help="output folder of lcp prune")
    e.add_argument("--data", help="cifar10 or an ImageFolder root (default: the data set it was pruned on)")
    e.set_defaults(func=cmd_eval)
    c = sub.add_parser("check", help="trace, plan a cut, build and verify a model; say what is frozen and why")
    c.add_argument("--model", required=True, help="zoo name, timm name or tv:NAME")
    c.add_argument("--budget", type=_budget, default=0.5, help="MACs fraction to plan for (default 0.5)")
    c.add_argument("--ignore", action="append", help="module-name glob whose channels are kept (repeatable)")
    c.add_argument(
        "--input-size", type=int, nargs=3, metavar=("C", "H", "W"), help="example input size (default: the model's)"
    )
    c.add_argument("--num-classes", type=int, default=None, help="classifier size (default: the model's)")
    c.add_argument("--checkpoint", default=None, help="weights to load first (optional)")
    c.add_argument("--pretrained", action="store_true", help="load the hub's pretrained weights first (online)")
    c.add_argument(
        "--no-suggest",
        dest="suggest",
        action="store_false",
        help="when it fails, do not search for --ignore patterns that make it prune (up to 2 minutes)",
    )
    c.set_defaults(func=cmd_check)
    b = sub.add_parser("bench", help="latency, throughput and memory of a pruned folder against its original")
    b.add_argument("dir", nargs="?", help="output folder of lcp prune")
    b.add_argument("--model", help="bench one model by name instead")
    b.add_argument("--batch", type=int, nargs="+", default=[1, 64], help="batch sizes (default 1 64)")
    b.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps (default cpu)")
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
