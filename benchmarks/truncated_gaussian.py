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

import time

from _common import experiment_parser, report, run_or_read

from pyro_msm.experiments.truncated import TRUNCATED_METHODS, plot_truncated, truncated

METRICS = (("precision_error", "P rel. err"), ("fisher", "Fisher div."), ("ess", "ESS"))


def main(argv: list[str] | None = None) -> None:
    parser = experiment_parser(
        __doc__.splitlines()[0], TRUNCATED_METHODS, "the paper's grid, 5 seeds, 400 steps"
    )
    parser.add_argument("--ns", type=int, nargs="+", default=None, help="sample sizes")
    parser.add_argument(
        "--domain",
        choices=("halfspace", "orthant"),
        default="halfspace",
        help="random half-space through the mean (the paper's) or the orthant x >= mean",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.ns, args.seeds, args.steps = args.ns or [100, 300], args.seeds or 1, 20
    start = time.perf_counter()
    rows = run_or_read(
        args,
        lambda: truncated(
            full=args.full,
            seed=args.seed,
            seeds=args.seeds,
            progress=not args.no_progress,
            ns=args.ns,
            methods=args.methods,
            domain=args.domain,
            steps=args.steps,
        ),
    )
    first = rows[0]
    print(
        f"\nTruncated Gaussian ({first.get('domain', 'halfspace')}), d={first['d']}, "
        f"MCAR {first['missing_rate']:.0%}, seeds {sorted({r['seed'] for r in rows})}; Fisher "
        "divergence under the truncated truth (closed form for a half-space, Monte Carlo "
        "otherwise)"
    )
    report(args, rows, ("n", "method"), METRICS, plot_truncated, start)


if __name__ == "__main__":
    main()
