"""The ``pyro-moe`` command line.

    pyro-moe list
    pyro-moe train MODEL --data NAME --estimator NAME --out DIR [--epochs ... --resume]
    pyro-moe evaluate RUN_DIR
    pyro-moe compare-estimators --model moe --data NAME --estimators a,b,c --out DIR
    pyro-moe bayes --data NAME --experts 1,2,3,4 --out DIR [--chains --warmup --samples]

Errors a user can cause, malformed stored files and operating-system errors (disk full, a
read-only file system) print one line, ``pyro-moe: error: ...``, and exit with status 2.
SIGINT / SIGTERM during training finish the step, write a checkpoint, print one line and exit
with status 130 / 143 (``--resume`` continues the run exactly); SIGTERM at any other moment is one
line and 143 too. See docs/reliability.md.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from pyro_moe.errors import ConfigError, PyroMoeError, TrainingInterrupted

TRAIN_OPTIONS = (
    "epochs",
    "batch_size",
    "lr",
    "guide_lr",
    "clip_norm",
    "patience",
    "seed",
    "max_steps",
    "device",
    "checkpoint_every",
    "max_nonfinite_skips",
    "distributed",
)


def parse_value(text: str) -> Any:
    """``"3"`` -> 3, ``"0.1"`` -> 0.1, ``"true"`` -> True, ``"none"`` -> None, else the string."""
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_options(pairs: Sequence[str] | None, what: str) -> dict[str, Any]:
    """``["k=v", ...]`` -> ``{"k": parsed v}``."""
    options = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"{what} option {pair!r} is not KEY=VALUE")
        options[key.strip().replace("-", "_")] = parse_value(value.strip())
    return options


def per_estimator_options(pairs: Sequence[str] | None) -> dict[str, dict[str, Any]]:
    """``["rloo.num_particles=4", ...]`` -> ``{"rloo": {"num_particles": 4}}``."""
    options: dict[str, dict[str, Any]] = {}
    for pair in pairs or []:
        name, dot, rest = pair.partition(".")
        if not dot or not name or "=" not in rest or "=" in name:
            raise ConfigError(f"estimator option {pair!r} is not NAME.KEY=VALUE")
        options.setdefault(name.strip(), {}).update(parse_options([rest], f"estimator {name}"))
    return options


def _add_train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a model; writes a run folder",
        description="Train MODEL on a data set with a gradient estimator.",
    )
    p.add_argument("model", nargs="?", help="model name (see `pyro-moe list`); omit with --resume")
    p.add_argument(
        "--data",
        help="data set name, or a .npz file: x with y and/or labels (split 60/20/20 with the "
        "seed; --data-option train_fraction=, valid_fraction=, split_seed=), or x_train, x_valid, "
        "x_test with y_* / labels_* (used as is)",
    )
    p.add_argument("--estimator", default="enum", help="gradient estimator (default: enum)")
    p.add_argument("--guide", help="guide name (default: the model's, exact for enum)")
    p.add_argument("--out", required=True, type=Path, help="run folder")
    p.add_argument(
        "-K",
        "--experts",
        "--components",
        dest="num_components",
        type=int,
        help="number of experts / mixture components K",
    )
    p.add_argument(
        "-o",
        "--option",
        action="append",
        metavar="KEY=VALUE",
        help="model option, e.g. -o gate=mlp -o hidden_dim=64",
    )
    p.add_argument("--data-option", action="append", metavar="KEY=VALUE")
    p.add_argument("--estimator-option", action="append", metavar="KEY=VALUE")
    _add_budget_options(p)
    p.add_argument("--guide-lr", type=float, help="learning rate of the guide's networks")
    p.add_argument("--device", help="cpu or cuda")
    p.add_argument(
        "--distributed",
        action="store_true",
        default=None,
        help="one process of a data-parallel job: torchrun --nproc-per-node N -m pyro_moe.cli "
        "train ... --distributed",
    )
    _add_reliability_options(p)
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier run in --out: only a run folder, and only the files pyro-moe "
        "wrote there are deleted, after everything else has been checked",
    )
    _add_allow_changed_data(p)
    p.add_argument("--no-figures", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_allow_changed_data(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--allow-changed-data",
        action="store_true",
        help="use the run's data file even if it changed since the run started (its SHA-256 is "
        "in config.json)",
    )


def _add_budget_options(p: argparse.ArgumentParser) -> None:
    """How long and how fast to train, with :class:`~pyro_moe.train.TrainConfig`'s defaults."""
    from pyro_moe.train import DEFAULT_BATCH_SIZE, TrainConfig

    d = TrainConfig()
    p.add_argument(
        "--epochs",
        type=int,
        help=f"at most this many epochs (default {d.epochs}); early stopping on the validation "
        "split usually ends training first",
    )
    p.add_argument(
        "--patience",
        type=int,
        help=f"stop when the validation metric has not improved by {d.min_delta:g} for this many "
        f"epochs (default {d.patience}); the best validation epoch's parameters are kept",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        help=f"rows per step (default {DEFAULT_BATCH_SIZE}, or every training row if fewer)",
    )
    p.add_argument("--lr", type=float, help=f"Adam learning rate (default {d.lr:g})")
    p.add_argument("--clip-norm", type=float, help=f"gradient-norm clip (default {d.clip_norm:g})")
    p.add_argument("--max-steps", type=int, help="stop after this many steps (default: no limit)")
    p.add_argument(
        "--seed", type=int, help=f"seed of the run and its pretraining (default {d.seed})"
    )


def _add_reliability_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--checkpoint-every",
        type=int,
        metavar="STEPS",
        help="also write a checkpoint every STEPS steps (default: after each epoch only)",
    )
    p.add_argument(
        "--max-nonfinite-skips",
        type=int,
        metavar="N",
        help="skip up to N steps with a NaN/inf loss or gradient before stopping (default 0)",
    )


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line naming the problem, with exit status 2 (no usage
    dump); its subcommands' parsers are of the same class."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def make_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="pyro-moe", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list models, guides, estimators and data sets")
    _add_train_parser(sub)
    _add_compare_parser(sub)
    _add_bayes_parser(sub)
    e = sub.add_parser("evaluate", help="test metrics of a finished run (its best parameters)")
    e.add_argument("run_dir", type=Path)
    e.add_argument("--split", default="test", choices=["train", "valid", "test"])
    _add_allow_changed_data(e)
    return parser


def _add_compare_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare-estimators",
        help="train with several estimators on one budget and measure their gradients",
        description="Train MODEL with each estimator (same budget, same seed), run the "
        "gradient-variance harness, write estimators.csv, estimators.md and figures.",
    )
    p.add_argument("--model", default="moe")
    p.add_argument("--data", required=True)
    p.add_argument("--estimators", required=True, help="comma-separated estimator names")
    p.add_argument("--guide", help="guide for every estimator (default: the model's)")
    p.add_argument("-K", "--experts", dest="num_components", type=int)
    p.add_argument("-o", "--option", action="append", metavar="KEY=VALUE")
    p.add_argument("--data-option", action="append", metavar="KEY=VALUE")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--estimator-option",
        action="append",
        metavar="NAME.KEY=VALUE",
        help="an option of one compared estimator, for its training and its harness "
        "measurement, e.g. rloo.num_particles=4 or enum.fast=false (repeatable)",
    )
    p.add_argument("--num-estimates", type=int, default=200, help="harness estimates")
    _add_output_arguments(p)


def _add_output_arguments(p: argparse.ArgumentParser) -> None:
    """--out, --overwrite, --no-figures and --quiet, as the comparison commands share them."""
    p.add_argument("--out", required=True, type=Path)
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier comparison in --out (only the files pyro-moe wrote)",
    )
    p.add_argument("--no-figures", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_bayes_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bayes",
        help="NUTS on a Bayesian mixture of experts for each K; compare the K's with ArviZ",
        description="For each number of experts K, sample the Bayesian mixture of experts by "
        "NUTS (the gate summed out), print the az.compare (PSIS-LOO) table and R-hat / ESS / "
        "divergences, write trace, rank, posterior-predictive and pair plots (PNG) and one "
        "netCDF InferenceData per K.",
    )
    p.add_argument("--data", required=True, help="data set name or .npz file (training split)")
    p.add_argument("--experts", default="1,2,3,4", help="comma-separated K values (1,2,3,4)")
    p.add_argument("--chains", type=int, default=2, help="NUTS chains per K (default 2)")
    p.add_argument("--warmup", type=int, default=200, help="warm-up steps per chain (200)")
    p.add_argument("--samples", type=int, default=200, help="kept draws per chain (200)")
    p.add_argument(
        "--max-tree-depth", type=int, default=10, help="NUTS's tree depth cap (default 10)"
    )
    p.add_argument(
        "--init-restarts", type=int, default=4, help="random starts of the mode search (4)"
    )
    p.add_argument(
        "--init-steps",
        type=int,
        default=300,
        help="Adam steps per start; 0: the chains start at random points (300)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--option", action="append", metavar="KEY=VALUE", help="model option")
    p.add_argument("--data-option", action="append", metavar="KEY=VALUE")
    _add_output_arguments(p)


def cmd_bayes(args: argparse.Namespace) -> int:
    from pyro_moe.bayes import NutsConfig
    from pyro_moe.choose_experts import compare_experts, parse_experts

    config = NutsConfig(
        chains=args.chains,
        warmup=args.warmup,
        samples=args.samples,
        seed=args.seed,
        max_tree_depth=args.max_tree_depth,
        init_restarts=args.init_restarts,
        init_steps=args.init_steps,
        progress=False if args.quiet else None,
    )
    table, _ = compare_experts(
        args.data,
        parse_experts(args.experts),
        config,
        args.out,
        model_options=parse_options(args.option, "model"),
        data_options=parse_options(args.data_option, "data"),
        overwrite=args.overwrite,
        figures=not args.no_figures,
        report=print,
    )
    if table is not None:
        print(table.to_string())
    print(f"written: {args.out / 'compare.md'}, one K*.nc per K")
    return 0


def _spec_from_args(args: argparse.Namespace, seed: int, **spec_fields: Any) -> Any:
    """The :class:`~pyro_moe.experiment.RunSpec` named by the shared ``MODEL --data --guide -K
    -o --data-option`` arguments; ``spec_fields`` adds what only one command has."""
    from pyro_moe.experiment import RunSpec

    model_options = parse_options(args.option, "model")
    if args.num_components is not None:
        model_options["num_components"] = args.num_components
    return RunSpec(
        model=args.model,
        data=args.data,
        guide=args.guide,
        model_options=model_options,
        data_options=parse_options(args.data_option, "data"),
        seed=seed,
        **spec_fields,
    )


def cmd_compare_estimators(args: argparse.Namespace) -> int:
    from pyro_moe.compare import SlowPathWarning, compare_estimators, slow_paths
    from pyro_moe.train import TrainConfig

    spec = _spec_from_args(args, seed=args.seed)
    train = {"epochs": args.epochs, "seed": args.seed, "progress": False, "patience": None}
    train.update({k: getattr(args, k) for k in ("batch_size", "lr") if getattr(args, k)})
    names = [n.strip() for n in args.estimators.split(",") if n.strip()]
    options = per_estimator_options(args.estimator_option)
    for note in slow_paths(spec, names, options):
        print(f"pyro-moe: note: {note.replace('`', '')}", file=sys.stderr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SlowPathWarning)  # printed above
        rows, _ = compare_estimators(
            spec,
            names,
            TrainConfig(**train),
            args.out,
            args.num_estimates,
            not args.no_figures,
            estimator_options=options,
            progress=False if args.quiet else None,
            overwrite=args.overwrite,
        )
    for row in rows:
        if row["group"] == "all":
            print(
                f"  {row['estimator']:14s} bias {row['bias']:.3g}  variance {row['variance']:.3g}"
                f"  snr {row['snr']:.3g}  valid loss {row['final_valid_loss']:.4g}"
            )
    print(f"written: {args.out / 'estimators.csv'}, {args.out / 'estimators.md'}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from pyro_moe import experiment  # noqa: F401  (fills the registries)
    from pyro_moe.registry import DATASETS, ESTIMATORS, GUIDES, MODELS, first_doc_line

    for title, registry in (
        ("models", MODELS),
        ("guides", GUIDES),
        ("estimators", ESTIMATORS),
        ("data sets", DATASETS),
    ):
        print(f"{title}:")
        for name, obj in registry.items():
            print(f"  {name:16s} {first_doc_line(obj)}")
    return 0


def _train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides = {k: getattr(args, k) for k in TRAIN_OPTIONS if getattr(args, k) is not None}
    if args.quiet:
        overrides["progress"] = False
    return overrides


def cmd_train(args: argparse.Namespace) -> int:
    from pyro_moe.distributed import shutdown
    from pyro_moe.experiment import resume_spec, run_experiment
    from pyro_moe.train import TrainConfig

    overrides = _train_overrides(args)
    if args.resume:
        spec, config = resume_spec(args.out, args.allow_changed_data, **overrides)
    else:
        if not args.model or not args.data:
            raise ConfigError("train needs a MODEL and --data (or --resume with --out)")
        spec = _spec_from_args(
            args,
            seed=overrides.get("seed", 0),
            estimator=args.estimator,
            estimator_options=parse_options(args.estimator_option, "estimator"),
        )
        config = TrainConfig(**overrides)
    result = run_experiment(
        spec,
        config,
        args.out,
        resume=args.resume,
        figures=not args.no_figures,
        overwrite=args.overwrite,
    )
    if result.run_dir is not None:  # only the writing process (rank 0) reports
        _print_summary(result)
    shutdown()
    return 0


def _print_summary(result: Any) -> None:
    print(
        f"stopped after {result.state.epoch} epochs ({result.state.stop_reason}), "
        f"{result.state.wall_seconds:.1f} s"
    )
    for key, value in result.summary.items():
        if key.startswith("test_"):
            print(f"  {key:20s} {value:.4f}")
    files = sorted(p.name for p in Path(result.run_dir).iterdir() if not p.name.startswith("."))
    print(f"run folder: {result.run_dir}  ({', '.join(files)})")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from pyro_moe.experiment import evaluate, load_run

    model, _, data = load_run(args.run_dir, allow_changed_data=args.allow_changed_data)
    print(json.dumps(evaluate(model, data, args.split), indent=2))
    return 0


COMMANDS = {
    "list": cmd_list,
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "compare-estimators": cmd_compare_estimators,
    "bayes": cmd_bayes,
}


def one_line(message: str) -> str:
    """``message`` with every line break (as ``str.splitlines`` sees them) written as an escape,
    so that a name or value quoted in an error cannot split it."""
    return "".join(repr(c)[1:-1] if len(f"a{c}b".splitlines()) > 1 else c for c in message)


class Terminated(Exception):
    """SIGTERM outside training (where it stops the loop cleanly instead): one line, exit 143."""


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    previous = _install(signal.SIGTERM, _terminate)
    try:
        return COMMANDS[args.command](args)
    except PyroMoeError as e:
        print(f"pyro-moe: error: {one_line(str(e))}", file=sys.stderr)
        return 2
    except OSError as e:  # an OS error no library call named: still one line, exit 2
        where = f" {e.filename}" if e.filename is not None else ""
        print(one_line(f"pyro-moe: error:{where} {e.strerror or e}"), file=sys.stderr)
        return 2
    except Terminated:
        print(
            "pyro-moe: SIGTERM received: stopped; files already written are complete "
            "(a training run continues with `pyro-moe train --resume --out DIR`)",
            file=sys.stderr,
        )
        return 128 + signal.SIGTERM
    except TrainingInterrupted as e:
        resume = f"; continue with `pyro-moe train --resume --out {e.run_dir}`" if e.run_dir else ""
        print(f"pyro-moe: {e}{resume}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("pyro-moe: interrupted", file=sys.stderr)
        return 130
    finally:
        _install(signal.SIGTERM, previous)


def _install(signum: int, handler: Any) -> Any:
    """Set a signal handler where that is possible (the main thread); returns the previous one."""
    if threading.current_thread() is not threading.main_thread() or handler is None:
        return None
    return signal.signal(signum, handler)


if __name__ == "__main__":
    sys.exit(main())
