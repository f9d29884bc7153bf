"""Command line interface: ``pyro-msm`` (or ``python -m pyro_msm``).

Subcommands:

- ``demo``: simulate a Gaussian with a known precision, mask it, fit every estimator to the same
  table and print how close each gets to the truth, beside the exact marginal answer and the
  complete-data oracle.
- ``reproduce EXPERIMENT ...``: run experiments of :data:`pyro_msm.experiments.EXPERIMENTS`
  (small by default, ``--full`` for the paper's sizes), write a CSV of every fit and a PNG plot
  per experiment, and print a summary table.
- ``fit TABLE``: fit a model to your own CSV or Parquet table and write its parameters, graph,
  imputations (original units, CSV and ArviZ netCDF) and a JSON summary; see
  ``docs/your_table.md``.
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
    "12-40 s of wall time on the project's 2-core machine, depending on its load (measured: "
    "11.5 s at load average 1.0 with today's schedule, the variational fit 3.2 s and the IW "
    "fit 1.7 s; 37 s at load average 5-7 before its last speed-ups)"
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


def _has_matplotlib() -> bool:
    """Whether matplotlib is installed (plots are written only then)."""
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


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
            f"{SMOKE_DEFAULTS['steps']} with --smoke); variational takes 5/6 of them (as "
            "accurate, measured) and adds guide-steps guide updates per model update"
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
    _add_fit_parser(sub)
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
        DEMO_GUIDE_HIDDEN_DIMS,
        DEMO_GUIDE_PARTICLES,
        DEMO_VARIATIONAL_STEPS_FRACTION,
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
        f"{complete_rows} of {problem.n} rows are complete; {args.steps} model updates per fit "
        f"({max(1, round(args.steps * DEMO_VARIATIONAL_STEPS_FRACTION))} for variational), "
        f"Adam lr {args.lr:g}, r={args.num_particles} particles, "
        f"{args.guide_steps} guide steps per variational model step (guide MLP "
        f"{'-'.join(map(str, DEMO_GUIDE_HIDDEN_DIMS))})",
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


# -- pyro-msm fit TABLE ------------------------------------------------------------------------

#: Models of ``pyro-msm fit``.
FIT_MODELS = ("gaussian", "graph", "mlp")
#: Files ``pyro-msm fit`` may write into ``--out`` (it refuses to replace them without --force).
FIT_OUTPUTS = (
    "summary.json",
    "parameters.json",
    "location.csv",
    "precision.csv",
    "edges.csv",
    "adjacency.csv",
    "energy.pt",
    "imputer.pkl",
    "imputed.csv",
    "imputations.nc",
)


class FitError(Exception):
    """A user-facing error of ``pyro-msm fit`` (printed without a traceback, exit status 2)."""


def _add_fit_parser(sub) -> None:
    from .infer import ESTIMATORS

    fit = sub.add_parser(
        "fit",
        help="fit a model to your own table (CSV or Parquet) and impute its missing entries",
        description=(
            "Read TABLE (.csv, .csv.gz, .tsv or .parquet; empty cells, NA and NaN are missing, "
            "plus any --missing markers), standardise each column on its observed entries, fit "
            "the model by marginal score matching, and write into --out: summary.json "
            "(settings and diagnostics), the fitted parameters, the graph (for --model graph), "
            "imputed.csv (conditional means in the original units) and imputations.nc (draws "
            "as an ArviZ netCDF, original units). Existing files in --out are never replaced "
            "without --force, and TABLE itself never."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    fit.add_argument("table", metavar="TABLE", help="the table: CSV, TSV or Parquet")
    fit.add_argument(
        "--model",
        choices=FIT_MODELS,
        default="gaussian",
        help=(
            "gaussian: dense Gaussian (penalty chosen on held-out entries); graph: sparse "
            "Gaussian graph (exact EM score-matching L1 path, eBIC; writes graph.png); "
            "mlp: neural energy (importance weighting)"
        ),
    )
    fit.add_argument(
        "--estimator",
        choices=("exact",) + tuple(ESTIMATORS),
        default=None,
        help=(
            "how the marginal score is estimated: exact (Gaussian closed form, the default for "
            "gaussian), iw (default for mlp), ...; graph fits use the exact EM solver"
        ),
    )
    fit.add_argument(
        "--missing",
        default="",
        metavar="MARKERS",
        help="extra comma-separated cell values meaning missing, e.g. '-99,?'",
    )
    fit.add_argument(
        "--columns", default=None, metavar="COLS", help="comma-separated columns to use"
    )
    fit.add_argument(
        "--out", default=None, metavar="DIR", help="output directory (default: TABLE-stem_fit)"
    )
    fit.add_argument("--force", action="store_true", help="replace existing output files")
    fit.add_argument(
        "--steps",
        type=_int_at_least(1, "--steps"),
        default=500,
        help="optimiser steps for iterative estimators (mlp, and gaussian with iw etc.)",
    )
    fit.add_argument("--lr", type=_positive_float, default=0.01, help="Adam learning rate")
    fit.add_argument(
        "--holdout",
        type=float,
        default=0.1,
        help="share of rows held out for early stopping of --model mlp on their marginal loss "
        "(pyro_msm.infer.HeldOutMonitor: a flexible energy can exploit the estimator and keep "
        "lowering its training loss while its fit worsens; docs/errors.md); 0 turns it off",
    )
    fit.add_argument(
        "--num-particles", type=_int_at_least(1, "--num-particles"), default=10,
        help="particles per row (IW, variational)",
    )  # fmt: skip
    fit.add_argument(
        "--draws", type=_int_at_least(1, "--draws"), default=200,
        help="imputation draws per chain (2 chains) in imputations.nc",
    )  # fmt: skip
    fit.add_argument("--seed", type=int, default=0, help="random seed")
    fit.add_argument(
        "--threads", type=_int_at_least(1, "--threads"), default=1, help="torch threads"
    )
    fit.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    fit.set_defaults(handler=_run_fit)


def _read_table(path: str, markers: list[str]):
    import os

    import pandas as pd

    if not os.path.exists(path):
        raise FitError(f"cannot read {path}: no such file")
    if os.path.isdir(path):
        raise FitError(f"cannot read {path}: it is a directory, not a table")
    lower = path.lower()
    try:
        if lower.endswith((".parquet", ".pq")):
            df = pd.read_parquet(path)
            if markers:
                df = df.replace({m: float("nan") for m in markers})
        elif lower.endswith((".csv", ".csv.gz", ".tsv", ".tsv.gz", ".txt")):
            sep = "\t" if ".tsv" in lower else ","
            df = pd.read_csv(path, sep=sep, na_values=markers or None)
        else:
            raise FitError(
                f"cannot read {path}: unknown file type; use .csv, .csv.gz, .tsv or .parquet"
            )
    except FitError:
        raise
    except Exception as err:  # noqa: BLE001 - pandas/pyarrow raise many kinds
        raise FitError(f"cannot read {path} as a table: {type(err).__name__}: {err}") from None
    if df.shape[0] < 2 or df.shape[1] < 1:
        raise FitError(f"{path}: the table has {df.shape[0]} rows and {df.shape[1]} columns")
    return df


def _select_columns(df, columns: str | None):
    import pandas as pd

    if columns:
        names = [c.strip() for c in columns.split(",") if c.strip()]
        unknown = [c for c in names if c not in df.columns]
        if unknown:
            raise FitError(f"--columns: no column(s) {unknown}; the table has {list(df.columns)}")
        df = df[names]
    text = [
        str(c)
        for c, dtype in df.dtypes.items()
        if not (pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype))
    ]
    if text:
        keep = [str(c) for c in df.columns if str(c) not in text]
        raise FitError(
            f"column(s) {text} hold text, not numbers; choose numeric columns with "
            f"--columns {','.join(keep) or 'NAME,...'} (or mark text placeholders with "
            "--missing)"
        )
    empty = [str(c) for c in df.columns if df[c].isna().all()]
    if empty:
        raise FitError(f"column(s) {empty} have no observed value; leave them out with --columns")
    return df


def _prepare_out(args, table_path: str) -> str:
    import os

    out = args.out or os.path.splitext(os.path.splitext(table_path)[0])[0] + "_fit"
    os.makedirs(out, exist_ok=True)
    source = os.path.realpath(table_path)
    clash = [
        name for name in FIT_OUTPUTS if os.path.realpath(os.path.join(out, name)) == source
    ]
    if clash:
        raise FitError(f"--out {out}: {clash[0]} would overwrite the input table; pick another")
    existing = [name for name in FIT_OUTPUTS if os.path.exists(os.path.join(out, name))]
    if existing and not args.force:
        raise FitError(
            f"--out {out} already holds {', '.join(existing)}; pass --force to replace them or "
            "choose another --out"
        )
    return out


def _svi_fit(
    model, guide, z, loss, steps: int, lr: float, progress: bool, monitor=None
) -> list[float]:
    """SVI steps with a progress bar; stops early when ``monitor(step)`` says so (and then
    restores the monitor's best parameters)."""
    import pyro
    from pyro.infer import SVI
    from tqdm.auto import tqdm

    svi = SVI(model, guide, pyro.optim.Adam({"lr": lr}), loss)
    losses = []
    bar = tqdm(range(steps), desc="fit", disable=not progress, file=sys.stderr)
    for step in bar:
        if monitor is not None and monitor(step):
            break
        value = svi.step(z) / max(int(z.shape[0]), 1)
        losses.append(value)
        if not math.isfinite(value):
            raise FitError(
                "the fit diverged (loss is not finite); try a smaller --lr or --model gaussian"
            )
        bar.set_postfix(loss=f"{value:.4g}")
    if monitor is not None:
        monitor.restore()
    return losses


def _json_number(value: float | None) -> float | str | None:
    """A float for strict JSON: ``inf`` as the string ``"inf"`` (mean imputation), NaN as null."""
    if value is None or math.isnan(value):
        return None
    return value if math.isfinite(value) else str(value)


def _run_fit(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    try:
        return _fit(args)
    except FitError as err:
        print(f"pyro-msm fit: error: {err}", file=sys.stderr)
        return 2


def _fit(args: argparse.Namespace) -> int:  # noqa: C901 - one linear recipe
    import json
    import os

    import pyro
    import torch

    from .arviz_bridge import to_inference_data
    from .imputation import Imputations, impute
    from .infer.gaussian import conditional_gaussian, sample_conditional_gaussian
    from .tables import Standardizer, as_table

    start = time.perf_counter()
    torch.set_num_threads(args.threads)
    markers = [m.strip() for m in args.missing.split(",") if m.strip()]
    df = _select_columns(_read_table(args.table, markers), args.columns)
    out = _prepare_out(args, args.table)
    estimator = args.estimator or {"gaussian": "exact", "graph": "variational", "mlp": "iw"}[
        args.model
    ]
    if estimator == "exact" and args.model == "mlp":
        raise FitError("--estimator exact is the Gaussian closed form; use iw for --model mlp")
    x, labels = as_table(df, name=args.table, dtype=torch.float64)
    mask = ~torch.isnan(x)
    n, d = x.shape
    names = list(labels.columns)
    print(f"pyro-msm fit: {args.table}: {n} rows x {d} columns, "
          f"{int((~mask).sum())} missing entries ({float((~mask).float().mean()):.1%}), "
          f"{int(mask.all(-1).sum())} complete rows")  # fmt: skip
    for j, name in enumerate(names):
        miss = int((~mask[:, j]).sum())
        print(f"  {name}: {miss} missing" if miss else f"  {name}: complete")
    print(f"model {args.model}, estimator {estimator}; standardising each column on its "
          f"observed entries; writing to {out}", flush=True)  # fmt: skip
    standardizer = Standardizer.fit(x, mask)
    z = torch.where(mask, standardizer.transform(x), torch.tensor(math.nan, dtype=x.dtype))
    z0 = torch.nan_to_num(z)
    pyro.set_rng_seed(args.seed)
    pyro.clear_param_store()
    diagnostics: dict = {}
    losses: list[float] = []
    written: list[str] = []
    loc = precision = None
    imputations: Imputations | None = None

    def path(name: str) -> str:
        written.append(name)
        return os.path.join(out, name)

    if args.model == "gaussian" and estimator == "exact":
        from .imputer import ScoreMatchingImputer

        imputer = ScoreMatchingImputer(random_state=args.seed).fit(df)
        loc, precision = imputer.location_, imputer.precision_
        diagnostics.update(
            shrinkage=_json_number(imputer.shrinkage_),
            lbfgs_iterations=imputer.n_iter_,
            validation_rmse={str(k): v for k, v in imputer.validation_rmse_.items()},
            validation_se={str(k): v for k, v in imputer.validation_se_.items()},
            selection=imputer.selection,
            cv_shrinkage=_json_number(imputer.cv_shrinkage_),
            validation_z=_json_number(imputer.validation_z_),
            validation_threshold=_json_number(imputer.validation_threshold_),
            alpha=imputer.alpha,
        )
        print(f"penalty chosen on held-out entries ({imputer.cv}-fold, {imputer.selection}, "
              f"test against mean imputation at alpha={imputer.alpha}): "
              f"{imputer.shrinkage_:g} (validation z {imputer.validation_z_:.2f} against "
              f"{imputer.validation_threshold_:.2f}; "
              f"RMSE in sd units: {imputer.validation_rmse_})")  # fmt: skip
        imputer.save(path("imputer.pkl"))
    elif args.model == "gaussian":
        from pyro.distributions import constraints

        from . import MissingScoreMatching, observe
        from .distributions import GaussianEnergy
        from .guides import AmortizedNormal

        def model(table):
            mu = pyro.param("loc", torch.zeros(d, dtype=table.dtype))
            tril = pyro.param(
                "tril", torch.eye(d, dtype=table.dtype), constraint=constraints.lower_cholesky
            )
            with pyro.plate("rows", table.shape[0]):
                observe("x", GaussianEnergy(mu, tril @ tril.T), obs=table)

        guided = estimator in ("variational", "hybrid")
        guide = AmortizedNormal(model) if guided else (lambda table: None)
        loss = MissingScoreMatching(estimator, num_particles=args.num_particles)
        losses = _svi_fit(model, guide, z, loss, args.steps, args.lr, not args.no_progress)
        loc = pyro.param("loc").detach()
        tril = pyro.param("tril").detach()
        precision = tril @ tril.T
        diagnostics.update(final_loss_per_row=losses[-1], ess=loss.diagnostics.get("ess"))
    elif args.model == "graph":
        from .graphical import GraphicalScoreMatching

        # the exact imputed path on incomplete tables (the quadratic one on complete tables);
        # --estimator matters only if the exact solvers are bypassed with --model mlp
        graph = GraphicalScoreMatching(seed=args.seed, progress=not args.no_progress).fit(
            labels.frame(z, columns=names)
        )
        loc, precision = graph.location_.to(x.dtype), graph.precision_.to(x.dtype)
        table = graph.edge_table()
        table.drop(columns=["i", "j"]).to_csv(path("edges.csv"), index=False)
        edges = list(zip(table["source"], table["target"], table["precision"], strict=True))
        labels.frame(graph.adjacency_.to(torch.int64), columns=names).set_axis(
            names, axis=0
        ).to_csv(path("adjacency.csv"))
        if _has_matplotlib():
            import matplotlib.pyplot as plt

            plt.close(graph.plot_graph(path=path("graph.png"), title=f"{args.table}: graph"))
            plt.close(graph.plot_path(path=path("path.png")))
        diagnostics.update(penalty=graph.penalty_, num_edges=len(edges), solver=graph.solver_)
        print(f"graph: {len(edges)} edges at penalty {graph.penalty_:.4g} ({graph.solver_}, eBIC)")
        for a, b, _ in edges[:20]:
            print(f"  {a} -- {b}")
        if len(edges) > 20:
            print(f"  ... {len(edges) - 20} more in edges.csv")
    else:  # mlp
        from . import MissingScoreMatching, observe
        from .distributions import EnergyMLP, MLPEnergy
        from .guides import AmortizedNormal

        torch.manual_seed(args.seed)
        net = EnergyMLP(d, (32, 32)).to(torch.float64)

        def model(table):
            pyro.module("energy", net)
            with pyro.plate("rows", table.shape[0]):
                observe("x", MLPEnergy(net), obs=table)

        guided = estimator in ("variational", "hybrid")
        guide = AmortizedNormal(model) if guided else (lambda table: None)
        loss = MissingScoreMatching(estimator, num_particles=args.num_particles)
        keep = mask.any(-1)
        rows = z[keep]
        monitor = None
        if not 0.0 <= args.holdout < 0.5:
            raise FitError(f"--holdout must be in [0, 0.5), got {args.holdout}")
        if args.holdout > 0 and rows.shape[0] >= 20:
            from .infer import HeldOutMonitor

            order = torch.randperm(rows.shape[0], generator=torch.Generator().manual_seed(0))
            cut = max(1, int(round(args.holdout * rows.shape[0])))
            held, rows = rows[order[:cut]], rows[order[cut:]]
            monitor = HeldOutMonitor(model, held, every=max(1, args.steps // 40))
        losses = _svi_fit(model, guide, rows, loss, args.steps, args.lr,
                          not args.no_progress, monitor)  # fmt: skip
        if monitor is not None:
            diagnostics.update(
                held_out_best_step=monitor.best_step, held_out_loss=monitor.best_loss,
                steps_run=len(losses),
            )  # fmt: skip
        torch.save(net.state_dict(), path("energy.pt"))
        diagnostics.update(final_loss_per_row=losses[-1], ess=loss.diagnostics.get("ess"))
        imputations = impute(
            model,
            guide if guided else None,
            args=(z,),
            method="guide" if guided else "iw",
            num_draws=args.draws,
            num_chains=2,
            num_particles=max(1000, 100 * args.num_particles),
            seed=args.seed,
        )
        if imputations.ess is not None:
            has_missing = ~mask.all(-1)
            ess = imputations.ess[:, has_missing]
            diagnostics["imputation_ess_median"] = float(ess.median()) if ess.numel() else None
            diagnostics["imputation_ess_min"] = float(ess.min()) if ess.numel() else None
            diagnostics["imputation_num_particles"] = imputations.num_particles

    if loc is not None:
        with torch.random.fork_rng():
            torch.manual_seed(args.seed)
            mean, chol = conditional_gaussian(z0, mask, loc, precision)
            draws = torch.stack(
                [sample_conditional_gaussian(mean, chol, mask, args.draws)[0] for _ in range(2)]
            )
        imputations = Imputations("x", torch.where(mask, z0, draws), z0, mask, "exact",
                                  labels=labels)  # fmt: skip
        imputations_mean = mean
        table = torch.stack(
            [standardizer.inverse(loc), standardizer.loc, standardizer.scale, loc], dim=1
        )
        labels.frame(
            table,
            columns=["model_mean", "observed_mean", "observed_sd", "model_mean_standard_units"],
        ).set_axis(names, axis=0).rename_axis("column").to_csv(path("location.csv"))
        labels.frame(precision, columns=names).set_axis(names, axis=0).to_csv(
            path("precision.csv")
        )
    else:
        imputations_mean = imputations.mean()
    imputations.labels = labels
    completed = torch.where(mask, x, standardizer.inverse(imputations_mean))
    import pandas as pd

    labels.frame(completed).to_csv(
        path("imputed.csv"), index=not isinstance(df.index, pd.RangeIndex)
    )
    idata = to_inference_data(
        imputations, standardizer=standardizer, training={"loss": losses} if losses else None
    )
    idata.to_netcdf(path("imputations.nc"))
    parameters = {
        "columns": names,
        "standardisation": {
            "loc": standardizer.loc.tolist(),
            "scale": standardizer.scale.tolist(),
            "note": "the model is fitted to z = (x - loc) / scale; x = loc + scale * z",
        },
    }
    if loc is not None:
        parameters["location_standard_units"] = loc.tolist()
        parameters["precision_standard_units"] = precision.tolist()
    with open(path("parameters.json"), "w") as handle:
        json.dump(parameters, handle, indent=1)
    summary = {
        "table": os.path.abspath(args.table),
        "settings": {k: v for k, v in vars(args).items() if k != "handler"},
        "estimator": estimator,
        "rows": n,
        "columns": names,
        "missing_per_column": {name: int((~mask[:, j]).sum()) for j, name in enumerate(names)},
        "diagnostics": diagnostics,
        "seconds": round(time.perf_counter() - start, 2),
        "files": sorted(set(written + ["summary.json"])),
    }
    with open(os.path.join(out, "summary.json"), "w") as handle:
        json.dump(summary, handle, indent=1, default=str)
    print(f"wrote {', '.join(summary['files'])} to {out} in {summary['seconds']:.1f} s")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``pyro-msm`` with ``argv`` (default: the process's arguments).

    :returns: the exit status (argument errors exit with status 2 through argparse).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.handler(args, parser))
