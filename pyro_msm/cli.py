"""Command line interface: ``pyro-msm`` (or ``python -m pyro_msm``).

Subcommands:

- ``demo``: simulate a Gaussian with a known precision, mask it, fit every estimator to the same
  table and print how close each gets to the truth, beside the exact marginal answer and the
  complete-data oracle.
- ``reproduce EXPERIMENT ...``: run experiments of :data:`pyro_msm.experiments.EXPERIMENTS`
  (small by default, ``--full`` for the paper's sizes), write a CSV of every fit and a PNG plot
  per experiment, and print a summary table.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from collections.abc import Sequence

__all__ = ["main", "build_parser"]

#: Defaults of ``pyro-msm demo`` (``--smoke`` replaces the sizes by tiny ones).
DEMO_DEFAULTS = {"dim": 10, "n": 1000, "missing_rate": 0.3, "steps": 300}
SMOKE_DEFAULTS = {"dim": 3, "n": 100, "missing_rate": 0.3, "steps": 5}
#: Measured wall-clock time of ``pyro-msm demo`` with its defaults (see docs/benchmarks.md).
DEMO_MEASURED = (
    "about 20-30 s on an idle 2-core CPU (measured: 122 s at load average 9, where the former "
    "schedule of 10 guide steps took 393 s)"
)


def _int_at_least(minimum: int, what: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{what} must be at least {minimum}, got {value}")
        return value

    return parse


def _missing_rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"missing rate must be a number, got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"missing rate must be in [0, 1), got {value:g}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {value:g}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``pyro-msm`` argument parser."""
    from .experiments.gaussian import MECHANISMS

    parser = argparse.ArgumentParser(
        prog="pyro-msm",
        description="Score matching for unnormalised models of data with missing coordinates.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    demo = sub.add_parser(
        "demo",
        help="fit every estimator to a simulated masked Gaussian and compare with the truth",
        description=(
            "Simulate a Gaussian with a known precision (random rotation, condition number 10, "
            "mean ~ N(0, I)), hide entries, fit importance weighting (IW), variational, zeroed, "
            "mean imputation and complete case by score matching on the same table, and print "
            "each fit's score MSE against the truth (E|s_hat(x) - s(x)|^2 over fresh draws), its "
            "ratio to the exact marginal Gaussian answer, and the complete-data oracle. "
            f"With the defaults it takes {DEMO_MEASURED} (the variational fit dominates)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    demo.add_argument("--seed", type=int, default=0, help="seed of the data and of every fit")
    demo.add_argument(
        "--dim",
        type=_int_at_least(2, "--dim"),
        default=None,
        help=f"dimension d (default {DEMO_DEFAULTS['dim']}; {SMOKE_DEFAULTS['dim']} with --smoke)",
    )
    demo.add_argument(
        "--n",
        type=_int_at_least(2, "--n"),
        default=None,
        help=f"number of rows (default {DEMO_DEFAULTS['n']}; {SMOKE_DEFAULTS['n']} with --smoke)",
    )
    demo.add_argument(
        "--missing-rate",
        type=_missing_rate,
        default=None,
        help=f"fraction of missing entries, in [0, 1) (default {DEMO_DEFAULTS['missing_rate']})",
    )
    demo.add_argument(
        "--mechanism", choices=MECHANISMS, default="mcar", help="missingness mechanism"
    )
    demo.add_argument(
        "--steps",
        type=_int_at_least(1, "--steps"),
        default=None,
        help=(
            f"model updates per fit (default {DEMO_DEFAULTS['steps']}; "
            f"{SMOKE_DEFAULTS['steps']} with --smoke); variational adds guide-steps guide "
            "updates per model update"
        ),
    )
    demo.add_argument(
        "--num-particles",
        type=_int_at_least(1, "--num-particles"),
        default=10,
        help="particles per row r (IW and variational model steps)",
    )
    demo.add_argument(
        "--guide-steps",
        type=_int_at_least(0, "--guide-steps"),
        default=1,
        help=(
            "variational guide updates per model update (each with 10 completions per row; "
            "chosen by accuracy per second, see docs/benchmarks.md)"
        ),
    )
    demo.add_argument("--lr", type=_positive_float, default=0.02, help="Adam learning rate")
    demo.add_argument(
        "--threads",
        type=_int_at_least(1, "--threads"),
        default=1,
        help=(
            "torch CPU threads; 1 is fastest for these small problems and avoids "
            "oversubscription on a busy machine"
        ),
    )
    demo.add_argument("--plot", metavar="PATH", default=None, help="save the loss curves (PNG)")
    demo.add_argument("--smoke", action="store_true", help="tiny sizes, for a quick check (CI)")
    demo.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    demo.set_defaults(handler=_run_demo)

    reproduce = sub.add_parser(
        "reproduce",
        help="run the paper's experiments (and ours); CSV and PNG per experiment",
        description=(
            "Run experiments by name ('all' for every one; --list to see them). Defaults are "
            "small enough for minutes on a laptop; --full uses the paper's sizes. Each writes "
            "OUT_DIR/NAME.csv (one row per fit) and OUT_DIR/NAME.png, and prints a summary."
        ),
    )
    reproduce.add_argument("experiments", nargs="*", metavar="EXPERIMENT", help="names, or all")
    reproduce.add_argument("--list", action="store_true", help="list the experiments and exit")
    reproduce.add_argument("--full", action="store_true", help="the paper's sizes (hours)")
    reproduce.add_argument("--seed", type=_int_at_least(0, "--seed"), default=0, help="first seed")
    reproduce.add_argument("--out-dir", default="results", help="directory for CSV and PNG files")
    reproduce.add_argument("--no-plot", action="store_true", help="skip the PNG plots")
    reproduce.add_argument(
        "--threads", type=_int_at_least(1, "--threads"), default=1, help="torch threads"
    )
    reproduce.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    reproduce.set_defaults(handler=_run_reproduce)
    return parser


def _resolve(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    defaults = SMOKE_DEFAULTS if args.smoke else DEMO_DEFAULTS
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.n <= args.dim:
        parser.error(
            f"--n {args.n} must exceed --dim {args.dim}: with n <= d even complete-data score "
            "matching has no solution"
        )
    if args.mechanism == "mar" and args.missing_rate > 0:
        k = max(1, args.dim // 4)
        if args.missing_rate * args.dim / (args.dim - k) > 1:
            parser.error(
                f"--missing-rate {args.missing_rate:g} is too high for MAR at --dim {args.dim}: "
                f"the {k} always-observed column(s) force a rate above 1 on the others"
            )


def _run_demo(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    _resolve(args, parser)
    import torch

    from .experiments.gaussian import (
        DEMO_ESTIMATORS,
        DEMO_GUIDE_PARTICLES,
        EXACT_LABEL,
        compare_estimators,
        format_table,
        simulate_gaussian,
    )

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    problem = simulate_gaussian(args.dim, args.n, args.missing_rate, args.mechanism, seed=args.seed)
    complete_rows = int(problem.mask.all(-1).sum())
    print(f"pyro-msm demo: {problem.describe()}")
    print(
        f"{complete_rows} of {problem.n} rows are complete; {args.steps} model updates per fit, "
        f"Adam lr {args.lr:g}, r={args.num_particles} particles, "
        f"{args.guide_steps} guide steps per variational model step",
        flush=True,
    )
    with warnings.catch_warnings():
        # the complete-case baseline announces that it drops rows: expected here
        warnings.filterwarnings("ignore", message=".*complete-case analysis drops.*")
        # and at high missing rates a few rows are entirely missing: they carry no information
        warnings.filterwarnings("ignore", message=".*have no observed coordinate.*")
        try:
            comparison = compare_estimators(
                problem,
                DEMO_ESTIMATORS,
                steps=args.steps,
                lr=args.lr,
                num_particles=args.num_particles,
                guide_steps=args.guide_steps,
                guide_particles=DEMO_GUIDE_PARTICLES,
                seed=args.seed,
                progress=not args.no_progress,
            )
        except (torch.linalg.LinAlgError, ValueError) as err:
            # a fit diverged (its precision stopped being positive definite or became NaN)
            print(
                f"pyro-msm demo: a fit failed ({type(err).__name__}: {err}); with few rows per "
                "dimension or a high missing rate the objectives can be unbounded; try a larger "
                "--n or a smaller --lr",
                file=sys.stderr,
            )
            return 1
    sys.stderr.flush()
    print()
    print(
        format_table(
            comparison.rows,
            [
                ("method", "method"),
                ("score_mse", "score MSE"),
                ("ratio_to_exact", "x exact"),
                ("precision_error", "prec. rel. err"),
                ("ess", "IW ESS"),
                ("seconds", "seconds"),
            ],
        )
    )
    iw = next((r for r in comparison.rows if r["method"] == "iw"), None)
    print()
    for r in comparison.rows:
        if r["note"]:
            print(f"{r['method']}: {r['note']}")
    print(
        "score MSE = E|s_hat(x) - s(x)|^2 over fresh draws of the truth (= 2 x Fisher "
        "divergence, exact); 'x exact' = ratio to the exact marginal answer "
        f"('{EXACT_LABEL}': the exact marginal Gaussian loss on the same masked table); "
        "'complete_oracle' = score matching on the table before masking."
    )
    if iw is not None and not math.isnan(iw["ess"]):
        print(f"IW mean effective sample size: {iw['ess']:.2f} of {args.num_particles}")
    if args.plot:
        from .plots import plot_loss_curves

        try:
            path = plot_loss_curves(
                comparison.fits,
                args.plot,
                title=(
                    f"pyro-msm demo: d={problem.d}, n={problem.n}, "
                    f"{problem.mechanism.upper()} {problem.missing_rate:.0%} missing"
                ),
                skip=min(10, args.steps // 10),
            )
        except ImportError as err:
            print(f"pyro-msm demo: cannot plot: {err}", file=sys.stderr)
            return 1
        print(f"loss curves saved to {path}")
    print(f"total time {time.perf_counter() - start:.1f} s")
    return 0


def _run_reproduce(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import os

    from .experiments import EXPERIMENTS
    from .experiments.gaussian import format_table
    from .experiments.reporting import write_csv

    if args.list:
        width = max(len(name) for name in EXPERIMENTS)
        for name, experiment in EXPERIMENTS.items():
            print(f"{name.ljust(width)}  {experiment.description}")
        return 0
    if not args.experiments:
        parser.error("name at least one experiment (or 'all'); --list shows them")
    names = list(EXPERIMENTS) if args.experiments == ["all"] else args.experiments
    unknown = [name for name in names if name not in EXPERIMENTS]
    if unknown:
        parser.error(f"unknown experiments {unknown}; choose from {list(EXPERIMENTS)} or 'all'")
    import torch

    torch.set_num_threads(args.threads)
    for name in names:
        experiment = EXPERIMENTS[name]
        start = time.perf_counter()
        print(f"== {name}: {experiment.description} ({'full' if args.full else 'small'} sizes)")
        rows = experiment.run(full=args.full, seed=args.seed, progress=not args.no_progress)
        csv_path = os.path.join(args.out_dir, f"{name}.csv")
        write_csv(rows, csv_path)
        sys.stderr.flush()
        print(format_table(experiment.summarise(rows), experiment.columns))
        print(f"{len(rows)} rows written to {csv_path}")
        if not args.no_plot:
            png_path = os.path.join(args.out_dir, f"{name}.png")
            try:
                experiment.plot(rows, png_path)
            except ImportError as err:
                print(f"pyro-msm reproduce: cannot plot: {err}", file=sys.stderr)
                return 1
            print(f"plot saved to {png_path}")
        print(f"{name}: {time.perf_counter() - start:.1f} s\n", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``pyro-msm`` with ``argv`` (default: the process's arguments).

    :returns: the exit status (argument errors exit with status 2 through argparse).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.handler(args, parser))
