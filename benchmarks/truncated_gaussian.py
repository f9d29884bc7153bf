"""Truncated Gaussian (d=10, MCAR 20%, n from 200 to 1000): every estimator, several seeds.

The experiment of Givens, Liu & Reeve (2025), run by
:func:`pyro_msm.experiments.truncated.truncated`: a Gaussian truncated to a random half-space
through its mean, fitted with the truncated score-matching objective. Prints, per sample size
and method, the relative precision error and the Fisher divergence to the truth (mean ± sd and
median over seeds, diverged runs counted), and saves a plot.

    python benchmarks/truncated_gaussian.py --quick                 # smoke run, ~1 minute
    python benchmarks/truncated_gaussian.py --seeds 3 --csv t.csv --plot t.png
    python benchmarks/truncated_gaussian.py --full                  # the paper's grid, 5 seeds
    python benchmarks/truncated_gaussian.py --from-csv t.csv --plot t.png   # re-summarise
"""

from __future__ import annotations

import argparse
import time
import warnings
from datetime import datetime, timezone

import torch

from pyro_msm.experiments.reporting import format_summary, read_csv, summarise, write_csv
from pyro_msm.experiments.truncated import TRUNCATED_METHODS, plot_truncated, truncated

METRICS = (("precision_error", "P rel. err"), ("fisher", "Fisher div."), ("ess", "ESS"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke run)")
    parser.add_argument("--full", action="store_true", help="the paper's grid, 5 seeds, 400 steps")
    parser.add_argument("--seed", type=int, default=0, help="first seed")
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds")
    parser.add_argument("--ns", type=int, nargs="+", default=None, help="sample sizes")
    parser.add_argument("--steps", type=int, default=None, help="model updates per fit")
    parser.add_argument("--methods", nargs="+", default=list(TRUNCATED_METHODS))
    parser.add_argument(
        "--domain",
        choices=("halfspace", "orthant"),
        default="halfspace",
        help="random half-space through the mean (the paper's) or the orthant x >= mean",
    )
    parser.add_argument("--csv", help="write the tidy rows here")
    parser.add_argument("--from-csv", help="summarise rows from an earlier run instead")
    parser.add_argument("--plot", help="save the plot here (PNG)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    if args.from_csv:
        rows = read_csv([args.from_csv])
    else:
        if args.quick:
            args.ns, args.seeds, args.steps = args.ns or [100, 300], args.seeds or 1, 20
        print(f"started {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC")
        with warnings.catch_warnings():  # complete-case / outside-domain counts, once per fit
            warnings.simplefilter("ignore", UserWarning)
            rows = truncated(
                full=args.full,
                seed=args.seed,
                seeds=args.seeds,
                progress=not args.no_progress,
                ns=args.ns,
                methods=args.methods,
                domain=args.domain,
                steps=args.steps,
            )
        if args.csv:
            write_csv(rows, args.csv)
    first = rows[0]
    seeds = sorted({r["seed"] for r in rows})
    print(
        f"\nTruncated Gaussian ({first.get('domain', 'halfspace')}), d={first['d']}, "
        f"MCAR {first['missing_rate']:.0%}, seeds {seeds}; Fisher divergence under the truncated "
        "truth (closed form for a half-space, Monte Carlo otherwise)"
    )
    summary = summarise(rows, ("n", "method"), [m for m, _ in METRICS] + ["seconds"])
    print(
        format_summary(
            summary,
            ("n", "method"),
            [*METRICS, ("seconds", "s/fit")],
            medians=[METRICS[0][0], "fisher"],
        )
    )
    notes = sorted({(r["method"], r["note"]) for r in rows if r["note"]})
    for method, note in notes:
        print(f"note: {method}: {note}")
    if args.plot:
        print(f"plot: {plot_truncated(rows, args.plot)}")
    if not args.from_csv:
        print(f"wall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
