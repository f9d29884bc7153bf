"""ScoreMatchingImputer against scikit-learn's imputers on held-out entries.

For each table, a share of the *observed* entries is hidden (MCAR, each row keeps one), every
imputer is fitted to the table with those extra gaps and fills them; reported per table:

- RMSE of the filled values in units of each column's standard deviation (pooled over hidden
  entries; mean imputation scores about 1);
- coverage of nominal 90% intervals: ScoreMatchingImputer's exact conditional intervals,
  IterativeImputer's spread over ``--draws`` runs with ``sample_posterior=True`` (its multiple
  imputation), and mean +- 1.645 sd for mean imputation; KNNImputer gives none.

Tables: real ones with their own missing values (airquality 153 x 6, bfi 2800 x 28), real
complete ones (diabetes 442 x 10, wine 178 x 13 from scikit-learn), two wide ones with n about
3d (breast cancer 90 x 30, tissue gene expression 189 x 60 genes), and simulated non-Gaussian
data (a Gaussian truncated to the positive orthant, and a product interaction x3 = x1 x2 + e).

Contenders run interleaved on the same masks; medians over ``--reps`` repetitions, and the
paired ratios (score matching over the best other method, and over mean imputation, on the same
mask) with their mean, standard error and quartiles, so that a difference can be told from the
noise of the masks.

    python benchmarks/imputer.py            # full run (a few minutes on 2 cores)
    python benchmarks/imputer.py --smoke    # seconds; run by tests/test_benchmarks_imputer.py
    python benchmarks/imputer.py --tables diabetes,interaction --reps 20 --draws 1
    python benchmarks/imputer.py --tables interaction,airquality,truncated_gaussian,wine,diabetes \
        --reps 2 --draws 1 --count-evaluations   # the cost of a fit in loss evaluations

``--count-evaluations`` counts the calls of
:func:`~pyro_msm.infer.gaussian.grouped_marginal_loss` (one per L-BFGS objective evaluation) in
each score-matching fit: a cost measure that the load of the machine does not change.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import torch

# run from a checkout without installing: this worktree's pyro_msm comes first
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

METHODS = ("score_matching", "iterative", "knn", "mean")


def _tables(smoke: bool, rng: np.random.Generator) -> dict[str, np.ndarray]:
    from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine

    from pyro_msm.datasets import load_tissue_gene_expression, table_path

    tables = {"airquality": pd.read_csv(table_path("airquality.csv")).to_numpy(float)}
    bfi = pd.read_csv(table_path("bfi.csv.gz")).to_numpy(float)
    tables["bfi"] = bfi[:200, :12] if smoke else bfi
    if not smoke:
        tables["diabetes"] = load_diabetes().data
        tables["wine"] = load_wine().data
    cancer = load_breast_cancer().data
    if smoke:
        tables["cancer_wide_36x12"] = cancer[rng.choice(len(cancer), 36, replace=False), :12]
    else:
        tables["cancer_wide_90x30"] = cancer[rng.choice(len(cancer), 90, replace=False)]
    if not smoke:
        genes, _ = load_tissue_gene_expression().top_variance(60)
        tables["tissue_wide_189x60"] = genes.numpy()
    n = 150 if smoke else 600
    cov = 0.5 * np.eye(6) + 0.5
    z = rng.multivariate_normal(np.zeros(6), cov, size=4 * n)
    tables["truncated_gaussian"] = z[(z > 0).all(1)][:n] if (z > 0).all(1).sum() >= n else np.abs(
        z[:n]
    )
    x = rng.normal(size=(n, 6))
    x[:, 2] = x[:, 0] * x[:, 1] + 0.3 * rng.normal(size=n)
    x[:, 5] = x[:, 3] * x[:, 4] + 0.3 * rng.normal(size=n)
    tables["interaction"] = x
    heavy = ("bfi", "tissue_wide_189x60")  # the slow ones last, so partial runs say most
    return {k: tables[k] for k in sorted(tables, key=lambda k: k in heavy)}


def _hide(x: np.ndarray, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask of hidden entries among the observed ones; each row keeps one observed."""
    observed = ~np.isnan(x)
    hide = observed & (rng.random(x.shape) < rate)
    for i in np.nonzero(observed.any(1) & ~(observed & ~hide).any(1))[0]:
        hide[i, rng.choice(np.nonzero(observed[i])[0])] = False
    return hide


@contextmanager
def _counting_evaluations():
    """Count the calls of the grouped loss that :mod:`pyro_msm.imputer` makes (yields a list
    whose one element is the running count)."""
    from pyro_msm import imputer

    original = imputer.grouped_marginal_loss
    count = [0]

    def counted(*args, **kwargs):
        count[0] += 1
        return original(*args, **kwargs)

    imputer.grouped_marginal_loss = counted
    try:
        yield count
    finally:
        imputer.grouped_marginal_loss = original


def _run_method(name: str, table: np.ndarray, draws: int, seed: int):
    """(filled table, lower, upper or None, seconds, score matching's penalty or NaN,
    score matching's loss evaluations in ``fit`` or NaN)."""
    from sklearn.experimental import enable_iterative_imputer  # noqa: F401
    from sklearn.impute import IterativeImputer, KNNImputer, SimpleImputer

    from pyro_msm import ScoreMatchingImputer

    start = time.perf_counter()
    lower = upper = None
    penalty = evaluations = math.nan
    if name == "score_matching":
        with _counting_evaluations() as count:
            imp = ScoreMatchingImputer(random_state=seed).fit(table)
        evaluations = count[0]
        filled = imp.transform(table)
        lower, upper = imp.interval(table, prob=0.9)
        penalty = imp.shrinkage_
    elif name == "iterative":
        filled = IterativeImputer(random_state=seed, max_iter=10).fit_transform(table)
        if draws > 1:
            runs = np.stack(
                [
                    IterativeImputer(random_state=seed + k, max_iter=10, sample_posterior=True)
                    .fit_transform(table)
                    for k in range(draws)
                ]
            )
            lower, upper = np.quantile(runs, [0.05, 0.95], axis=0)
    elif name == "knn":
        filled = KNNImputer().fit_transform(table)
    else:
        filled = SimpleImputer().fit_transform(table)
        sd = np.nanstd(table, axis=0, ddof=1)
        lower, upper = filled - 1.645 * sd, filled + 1.645 * sd
    return filled, lower, upper, time.perf_counter() - start, penalty, evaluations


def run(
    smoke: bool, reps: int, rate: float, draws: int, seed: int, only: list[str] | None = None
) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    tables = _tables(smoke, rng)
    if only:
        unknown = sorted(set(only) - set(tables))
        if unknown:
            raise SystemExit(f"--tables: unknown {unknown}; choose from {sorted(tables)}")
        tables = {k: v for k, v in tables.items() if k in only}
    for table_name, x in tables.items():
        sd = np.nanstd(x, axis=0, ddof=1)
        sd = np.where(sd > 0, sd, 1.0)
        for rep in range(reps):
            hide = _hide(x, rate, rng)
            table = np.where(hide, np.nan, x)
            order = list(METHODS) if rep % 2 == 0 else list(reversed(METHODS))  # interleave
            for method in order:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    filled, lower, upper, seconds, penalty, evaluations = _run_method(
                        method, table, draws, seed + rep
                    )
                err = ((filled - x) / sd)[hide]
                row = {
                    "table": table_name,
                    "n": x.shape[0],
                    "d": x.shape[1],
                    "rep": rep,
                    "method": method,
                    "rmse_sd": float(np.sqrt(np.mean(err**2))),
                    "coverage90": math.nan,
                    "seconds": seconds,
                    "penalty": penalty,
                    "evaluations": evaluations,
                }
                if lower is not None:
                    inside = (x >= lower - 1e-12) & (x <= upper + 1e-12)
                    row["coverage90"] = float(inside[hide].mean())
                rows.append(row)
        done = pd.DataFrame([r for r in rows if r["table"] == table_name])
        medians = done.groupby("method")["rmse_sd"].median().round(3).to_dict()
        print(f"{table_name} {x.shape}: median RMSE (sd units) {medians}", flush=True)
    return pd.DataFrame(rows)


def paired_ratios(rows: pd.DataFrame) -> pd.DataFrame:
    """Per table and repetition (same mask): score matching's RMSE over the best other
    method's and over mean imputation's."""
    wide = rows.pivot_table(index=["table", "rep"], columns="method", values="rmse_sd")
    best_other = wide[["iterative", "knn", "mean"]].min(axis=1)
    return pd.DataFrame(
        {
            "over_best_other": wide["score_matching"] / best_other,
            "over_mean": wide["score_matching"] / wide["mean"],
        }
    )


def summarise(rows: pd.DataFrame) -> pd.DataFrame:
    """Medians over repetitions per table, and the spread of the paired ratios: their
    quartiles, and the standard error of their mean (sd / sqrt(reps))."""
    med = rows.groupby(["table", "method"], sort=False)[["rmse_sd", "coverage90", "seconds"]]
    table = med.median().unstack("method")
    rmse = table["rmse_sd"][list(METHODS)]
    out = pd.DataFrame(index=rmse.index)
    for m in METHODS:
        out[f"rmse_{m}"] = rmse[m]
    others = rmse[["iterative", "knn", "mean"]]
    out["sm_over_best_other"] = rmse["score_matching"] / others.min(axis=1)
    out["sm_over_mean"] = rmse["score_matching"] / rmse["mean"]
    ratios = paired_ratios(rows).groupby("table")
    for col, short in (("over_best_other", "best"), ("over_mean", "mean")):
        out[f"paired_{short}_median"] = ratios[col].median()
        out[f"paired_{short}_mean"] = ratios[col].mean()
        out[f"paired_{short}_se"] = ratios[col].std() / np.sqrt(ratios[col].count())
        out[f"paired_{short}_q25"] = ratios[col].quantile(0.25)
        out[f"paired_{short}_q75"] = ratios[col].quantile(0.75)
    out["cov90_sm"] = table["coverage90"]["score_matching"]
    out["cov90_iterative"] = table["coverage90"]["iterative"]
    out["cov90_mean"] = table["coverage90"]["mean"]
    sm = rows[rows["method"] == "score_matching"]
    # the share of masks on which score matching kept the diagonal model (mean imputation)
    out["sm_kept_mean"] = sm.groupby("table", sort=False)["penalty"].agg(
        lambda p: float(np.isinf(p).mean())
    )
    out["evals_sm"] = sm.groupby("table", sort=False)["evaluations"].median()
    out["sec_sm"] = table["seconds"]["score_matching"]
    out["sec_iterative"] = table["seconds"]["iterative"]
    return out


def _simulated_table(family: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """An ``(n, 6)`` table: ``gaussian``, ``student_t3`` (independent columns), ``products``
    (the interaction design: dependent, but no column is a linear function of the others: no
    linear structure), ``rho=R`` (equicorrelated Gaussian) or ``t3_rho=R`` (multivariate t
    with 3 degrees of freedom)."""
    d = 6
    if family == "gaussian":
        return rng.normal(size=(n, d))
    if family == "student_t3":
        return rng.standard_t(3, size=(n, d))
    if family == "products":
        x = rng.normal(size=(n, d))
        x[:, 2] = x[:, 0] * x[:, 1] + 0.3 * rng.normal(size=n)
        x[:, 5] = x[:, 3] * x[:, 4] + 0.3 * rng.normal(size=n)
        return x
    name, value = family.split("=")
    rho = float(value)
    z = rng.multivariate_normal(np.zeros(d), (1 - rho) * np.eye(d) + rho, size=n)
    if name == "rho":
        return z
    return z / np.sqrt(rng.chisquare(3, size=(n, 1)) / 3)


def selection_simulation(
    reps: int, rate: float, seed: int, families: list[str], sizes: list[int]
) -> pd.DataFrame:
    """How often ``ScoreMatchingImputer`` leaves mean imputation, with the test's standard
    error widened for the folds' shared training rows (the default) and without (the plain
    row-clustered one), on null tables (no linear structure: departing is a false departure)
    and structured ones (departing is the power), and what each rule's imputations cost or
    gain: the RMSE on the hidden entries over mean imputation's."""
    from pyro_msm import ScoreMatchingImputer, imputer

    rng = np.random.default_rng(seed)
    rows = []
    for family in families:
        for n in sizes:
            for rep in range(reps):
                x = _simulated_table(family, n, rng)
                hide = _hide(x, rate, rng)
                table = np.where(hide, np.nan, x)
                sd = x.std(0, ddof=1)
                mean_fill = np.where(hide, np.nanmean(table, 0), x)
                rmse_mean = float(np.sqrt(np.mean((((mean_fill - x) / sd)[hide]) ** 2)))
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    widened = ScoreMatchingImputer(random_state=rep).fit(table)
                # the same folds (same seed) with the plain standard error: z times the widening
                factor = imputer._resampling_variance_factor([n // 5] * 5, [n - n // 5] * 5)
                z, threshold = widened.validation_z_, widened.validation_threshold_
                left = not math.isinf(widened.shrinkage_)
                left_plain = z * math.sqrt(factor) > threshold
                rmse = float(np.sqrt(np.mean((((widened.transform(table) - x) / sd)[hide]) ** 2)))
                rmse_plain = rmse
                if left_plain and not left:  # refit with the plain standard error
                    original = imputer._resampling_variance_factor
                    imputer._resampling_variance_factor = lambda held, trained: 1.0
                    try:
                        with warnings.catch_warnings():
                            warnings.simplefilter("ignore")
                            plain = ScoreMatchingImputer(random_state=rep).fit(table)
                    finally:
                        imputer._resampling_variance_factor = original
                    filled = plain.transform(table)
                    rmse_plain = float(np.sqrt(np.mean((((filled - x) / sd)[hide]) ** 2)))
                rows.append(
                    {
                        "family": family, "n": n, "rep": rep, "z": z, "threshold": threshold,
                        "left": left, "left_plain": bool(left_plain),
                        "ratio": rmse / rmse_mean, "ratio_plain": rmse_plain / rmse_mean,
                    }
                )  # fmt: skip
            done = pd.DataFrame([r for r in rows if r["family"] == family and r["n"] == n])
            print(
                f"{family} n={n}: left mean imputation {done['left'].mean():.3f} "
                f"(plain SE {done['left_plain'].mean():.3f}) of {len(done)}; RMSE / mean's "
                f"median {done['ratio'].median():.4f} (plain {done['ratio_plain'].median():.4f}), "
                f"mean {done['ratio'].mean():.4f} (plain {done['ratio_plain'].mean():.4f}), "
                f"max {done['ratio'].max():.4f} (plain {done['ratio_plain'].max():.4f})",
                flush=True,
            )
    return pd.DataFrame(rows)


def main(argv=None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one repetition")
    parser.add_argument("--reps", type=int, default=5, help="repetitions (masks) per table")
    parser.add_argument("--rate", type=float, default=0.2, help="share of entries hidden")
    parser.add_argument("--draws", type=int, default=10, help="IterativeImputer posterior runs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--csv", help="write the tidy rows here")
    parser.add_argument("--tables", help="comma-separated subset of the tables (default: all)")
    parser.add_argument(
        "--count-evaluations",
        action="store_true",
        help="print the loss evaluations of each score-matching fit and their total",
    )
    parser.add_argument(
        "--selection-simulation",
        type=int,
        metavar="REPS",
        help="instead of the benchmark: REPS simulated tables per family and size, the rate "
        "at which the penalty choice leaves mean imputation (selection_simulation)",
    )
    parser.add_argument(
        "--families",
        default="gaussian,student_t3,products,rho=0.1,rho=0.2,t3_rho=0.2",
        help="--selection-simulation's table families",
    )
    parser.add_argument("--sizes", default="150,600", help="--selection-simulation's rows")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.selection_simulation:
        rows = selection_simulation(
            args.selection_simulation, args.rate, args.seed, args.families.split(","),
            [int(v) for v in args.sizes.split(",")],
        )  # fmt: skip
        if args.csv:
            rows.to_csv(args.csv, index=False)
        return rows
    reps = 1 if args.smoke else args.reps
    draws = 2 if args.smoke else args.draws
    start = time.perf_counter()
    only = [t.strip() for t in args.tables.split(",")] if args.tables else None
    rows = run(args.smoke, reps, args.rate, draws, args.seed, only)
    if args.csv:
        rows.to_csv(args.csv, index=False)
    summary = summarise(rows)
    if args.count_evaluations:
        sm = rows[rows["method"] == "score_matching"]
        counts = sm.pivot_table(index="table", columns="rep", values="evaluations", sort=False)
        print("loss evaluations per score-matching fit (grouped_marginal_loss calls):")
        print(counts.astype(int).to_string())
        print(f"total: {int(sm['evaluations'].sum())}")
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(summary.round(3).to_string())
    print(f"\n{reps} repetition(s), {args.rate:.0%} of observed entries hidden; "
          f"{time.perf_counter() - start:.0f} s")  # fmt: skip
    return summary


if __name__ == "__main__":
    main()
