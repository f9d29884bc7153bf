"""Where the hybrid estimator (a trained guide as the IW proposal) beats both of its parents.

Runs IW (moment-matched proposal), variational (AmortizedNormal guide) and hybrid (the same
guide, trained the same way, used as IW proposal) on the same data sets over several seeds and
counts, per setting, the seeds on which hybrid has a lower score error than *both* IW and
variational (a diverged run loses). Models:

- ``gaussian`` (default): d=20, n=1000, 40% MCAR, the setting where variational diverged on
  2 of 5 seeds in ``docs/benchmarks.md``; also prints the exact marginal answer and the
  complete-data oracle (``pyro_msm.experiments.compare_estimators``).
- ``truncated``: the truncated Gaussian (``pyro_msm.experiments.truncated.truncated``).
- ``interaction``: the squared-interaction model
  (``pyro_msm.experiments.interaction.interaction``).

``--from-csv`` re-reads rows written by this script or by ``truncated_gaussian.py`` /
``squared_interaction.py`` (which include all three estimators) instead of fitting.

    python benchmarks/hybrid.py --quick                      # smoke run
    python benchmarks/hybrid.py --seeds 3 --csv hybrid.csv   # Gaussian d=20, 40% MCAR
    python benchmarks/hybrid.py --model interaction --dims 30 --seeds 3
    python benchmarks/hybrid.py --from-csv truncated.csv     # re-use another benchmark's rows
"""

from __future__ import annotations

import argparse
import time
import warnings
from datetime import datetime, timezone
from typing import Any

import torch

from pyro_msm.experiments.reporting import (
    format_summary,
    head_to_head,
    read_csv,
    summarise,
    write_csv,
)

PARENTS = ("iw", "variational")
METHODS = ("iw", "variational", "hybrid")


def gaussian_rows(
    d: int, n: int, rate: float, seeds: list[int], steps: int, progress: bool
) -> list[dict[str, Any]]:
    """Fit IW, variational and hybrid (and the exact references) on Gaussian data."""
    from pyro_msm.experiments import EstimatorSpec, compare_estimators, simulate_gaussian

    specs = [EstimatorSpec(m, m) for m in METHODS]
    rows: list[dict[str, Any]] = []
    for seed in seeds:
        problem = simulate_gaussian(d, n, rate, seed=seed)
        print(problem.describe(), flush=True)
        comparison = compare_estimators(problem, specs, steps=steps, seed=seed, progress=progress)
        rows += comparison.rows
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("gaussian", "truncated", "interaction"))
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke run)")
    parser.add_argument("--seed", type=int, default=0, help="first seed")
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds")
    parser.add_argument("--steps", type=int, default=200, help="model updates per fit")
    parser.add_argument("--d", type=int, default=20, help="dimension (gaussian, truncated)")
    parser.add_argument("--n", type=int, default=1000, help="rows")
    parser.add_argument("--missing-rate", type=float, default=None)
    parser.add_argument("--dims", type=int, nargs="+", default=[30], help="interaction dims")
    parser.add_argument("--csv", help="write the tidy rows here")
    parser.add_argument("--from-csv", nargs="+", help="read rows instead of fitting")
    parser.add_argument("--metric", default="fisher", help="lower is better")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    model = args.model or "gaussian"
    if args.from_csv:
        rows = read_csv(args.from_csv)
    else:
        if args.quick:
            args.seeds, args.steps, args.n, args.d, args.dims = 2, 15, 200, 5, [5]
        seeds = list(range(args.seed, args.seed + args.seeds))
        progress = not args.no_progress
        print(f"started {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; model {model}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            if model == "gaussian":
                rate = 0.4 if args.missing_rate is None else args.missing_rate
                rows = gaussian_rows(args.d, args.n, rate, seeds, args.steps, progress)
            elif model == "truncated":
                from pyro_msm.experiments.truncated import truncated

                rate = 0.2 if args.missing_rate is None else args.missing_rate
                rows = truncated(
                    seed=args.seed,
                    seeds=args.seeds,
                    progress=progress,
                    ns=(args.n,),
                    d=args.d,
                    missing_rate=rate,
                    methods=METHODS,
                    steps=args.steps,
                )
            else:
                from pyro_msm.experiments.interaction import interaction

                rate = 0.5 if args.missing_rate is None else args.missing_rate
                rows = interaction(
                    seed=args.seed,
                    seeds=args.seeds,
                    progress=progress,
                    dims=args.dims,
                    n=args.n,
                    missing_rate=rate,
                    methods=METHODS,
                    steps=args.steps,
                )
        if args.csv:
            write_csv(rows, args.csv)
    setting = ("d", "n", "missing_rate")
    metric = args.metric
    summary = summarise(rows, (*setting, "method"), [metric, "ess"])
    print(f"\n{metric} over seeds {sorted({r['seed'] for r in rows})} (lower is better)")
    print(format_summary(summary, (*setting, "method"), [metric, "ess"], medians=[metric]))
    print("\nhybrid against both parents, paired by seed:")
    for h in head_to_head(rows, "hybrid", PARENTS, metric, setting):
        where = ", ".join(f"{k}={h[k]}" for k in setting)
        print(
            f"  {where}: hybrid beats both on {h['wins']}/{h['seeds']} seeds "
            f"(beats iw {h['beats_iw']}, variational {h['beats_variational']}); "
            f"median ratio hybrid/iw {h['ratio_iw_median']:.3g}, "
            f"hybrid/variational {h['ratio_variational_median']:.3g}"
        )
    if not args.from_csv:
        print(f"wall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
