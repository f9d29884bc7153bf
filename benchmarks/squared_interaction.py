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

import argparse
import time
import warnings
from datetime import datetime, timezone

import torch

from pyro_msm.experiments.interaction import INTERACTION_METHODS, interaction, plot_interaction
from pyro_msm.experiments.reporting import format_summary, read_csv, summarise, write_csv

METRICS = (("theta_error", "theta rel. err"), ("fisher", "Fisher div."), ("ess", "ESS"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke run)")
    parser.add_argument("--full", action="store_true", help="d = 10..50, 5 seeds, 400 steps")
    parser.add_argument("--seed", type=int, default=0, help="first seed")
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds")
    parser.add_argument("--dims", type=int, nargs="+", default=None, help="dimensions")
    parser.add_argument("--n", type=int, default=1000, help="rows")
    parser.add_argument("--n-eval", type=int, default=5000, help="held-out draws (Fisher)")
    parser.add_argument("--steps", type=int, default=None, help="model updates per fit")
    parser.add_argument("--methods", nargs="+", default=list(INTERACTION_METHODS))
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
            args.dims, args.seeds, args.steps = args.dims or [5, 10], args.seeds or 1, 20
            args.n, args.n_eval = 300, 1000
        print(f"started {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC")
        with warnings.catch_warnings():  # complete-case / outside-domain counts, once per fit
            warnings.simplefilter("ignore", UserWarning)
            rows = interaction(
                full=args.full,
                seed=args.seed,
                seeds=args.seeds,
                progress=not args.no_progress,
                dims=args.dims,
                n=args.n,
                n_eval=args.n_eval,
                methods=args.methods,
                steps=args.steps,
            )
        if args.csv:
            write_csv(rows, args.csv)
    first = rows[0]
    seeds = sorted({r["seed"] for r in rows})
    print(
        f"\nSquared interaction, n={first['n']}, MCAR {first['missing_rate']:.0%}, "
        f"seeds {seeds}; Fisher divergence by Monte Carlo over held-out draws of the truth"
    )
    summary = summarise(rows, ("d", "method"), [m for m, _ in METRICS] + ["seconds"])
    print(
        format_summary(
            summary,
            ("d", "method"),
            [*METRICS, ("seconds", "s/fit")],
            medians=[METRICS[0][0], "fisher"],
        )
    )
    notes = sorted({(r["method"], r["note"]) for r in rows if r["note"]})
    for method, note in notes:
        print(f"note: {method}: {note}")
    if args.plot:
        print(f"plot: {plot_interaction(rows, args.plot)}")
    if not args.from_csv:
        print(f"wall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
