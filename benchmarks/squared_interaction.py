"""Squared-interaction model (n=1000, MCAR 50%, d from 10 to 50): every estimator, several seeds.

The experiment of Givens, Liu & Reeve (2025), run by
:func:`pyro_msm.experiments.interaction.interaction`: q(x) ~ exp(sum_{i<=j} theta_ij x_i^2 x_j^2)
with a sparse random theta, data by Gibbs sampling. Prints, per dimension and method, the
relative error of theta and the Fisher divergence to the truth (Monte Carlo over held-out draws
of the truth; mean ± sd and median over seeds, diverged runs counted), and saves a plot.

    python benchmarks/squared_interaction.py --quick                # smoke run, ~1 minute
    python benchmarks/squared_interaction.py --seeds 3 --csv s.csv --plot s.png
    python benchmarks/squared_interaction.py --full                 # d = 10..50, 5 seeds
    python benchmarks/squared_interaction.py --from-csv s.csv --plot s.png  # re-summarise
"""

from __future__ import annotations

import time

from _common import experiment_parser, report, run_or_read

from pyro_msm.experiments.interaction import INTERACTION_METHODS, interaction, plot_interaction

METRICS = (("theta_error", "theta rel. err"), ("fisher", "Fisher div."), ("ess", "ESS"))


def main(argv: list[str] | None = None) -> None:
    parser = experiment_parser(
        __doc__.splitlines()[0], INTERACTION_METHODS, "d = 10..50, 5 seeds, 400 steps"
    )
    parser.add_argument("--dims", type=int, nargs="+", default=None, help="dimensions")
    parser.add_argument("--n", type=int, default=1000, help="rows")
    parser.add_argument("--n-eval", type=int, default=5000, help="held-out draws (Fisher)")
    args = parser.parse_args(argv)
    if args.quick:
        args.dims, args.seeds, args.steps = args.dims or [5, 10], args.seeds or 1, 20
        args.n, args.n_eval = 300, 1000
    start = time.perf_counter()
    rows = run_or_read(
        args,
        lambda: interaction(
            full=args.full,
            seed=args.seed,
            seeds=args.seeds,
            progress=not args.no_progress,
            dims=args.dims,
            n=args.n,
            n_eval=args.n_eval,
            methods=args.methods,
            steps=args.steps,
        ),
    )
    first = rows[0]
    print(
        f"\nSquared interaction, n={first['n']}, MCAR {first['missing_rate']:.0%}, seeds "
        f"{sorted({r['seed'] for r in rows})}; Fisher divergence by Monte Carlo over held-out "
        "draws of the truth"
    )
    report(args, rows, ("d", "method"), METRICS, plot_interaction, start)


if __name__ == "__main__":
    main()
