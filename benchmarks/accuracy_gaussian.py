"""Accuracy of every estimator on Gaussian data with a known precision.

For each setting and seed, one masked data set is simulated
(:func:`pyro_msm.experiments.simulate_gaussian`) and every method is fitted to that same table
(:func:`pyro_msm.experiments.compare_estimators`): IW with the moment-matched proposal, IW with the
paper's wide proposal N(0, 4^2 I), variational (AmortizedNormal guide), zeroed, mean imputation
and complete case, beside the exact marginal answer (the ``closed_form`` estimator) and the
complete-data oracle. Per setting it prints the score MSE (mean and standard deviation over
seeds), the ratio to the exact marginal answer (mean and spread), the Fisher divergence and IW's
effective sample size, then PASS/FAIL lines for the targets::

    IW and variational within 1.25x of the exact marginal score MSE at d=5, 20% MCAR
    variational within 1.5x at d=20, 40% MCAR
    IW and variational ahead of complete case, mean imputation and zeroed (every setting)

Usage::

    python benchmarks/accuracy_gaussian.py --seeds 3 --out benchmarks/accuracy_gaussian.csv
    python benchmarks/accuracy_gaussian.py --quick          # smoke run, a minute or so
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timezone
from typing import Any

from pyro_msm.experiments.accuracy import (
    ACCURACY_COLUMNS,
    QUICK_SETTINGS,
    SETTINGS,
    Setting,
    check_targets,
    run_setting,
    summarise_accuracy,
)
from pyro_msm.experiments.gaussian import format_table
from pyro_msm.experiments.reporting import read_csv, write_csv


def _run_one(task: tuple[Setting, int, dict[str, Any]]) -> list[dict[str, Any]]:
    """Simulate one data set and fit every method (runs in a worker process)."""
    setting, seed, options = task
    import torch

    torch.set_num_threads(options.pop("threads"))
    return run_setting(setting, seed, **options)


def report(rows: Sequence[dict[str, Any]], settings: Sequence[Setting]) -> None:
    """Print one table per setting, then the PASS/FAIL lines."""
    names = {s.name for s in settings}
    rows = [r for r in rows if r["setting"] in names]
    summary = summarise_accuracy(rows)
    for setting in settings:
        group = [s for s in summary if s["setting"] == setting.name]
        if not group:
            continue
        seeds = sorted({int(r["seed"]) for r in rows if r["setting"] == setting.name})
        print(
            f"\n## {setting.name}: d={setting.d}, n={setting.n}, {setting.mechanism.upper()} "
            f"{setting.missing_rate:.0%} missing, seeds {seeds}"
        )
        print(format_table(group, ACCURACY_COLUMNS))
    print()
    for ok, text in check_targets(summary):
        print(f"{'PASS' if ok else 'FAIL'}  {text}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3, help="data sets per setting")
    parser.add_argument("--first-seed", type=int, default=0, help="seed of the first data set")
    parser.add_argument("--steps", type=int, default=None, help="model updates per fit (400)")
    parser.add_argument("--lr", type=float, default=0.02, help="Adam learning rate")
    parser.add_argument("--num-particles", type=int, default=10, help="particles per row")
    parser.add_argument("--guide-steps", type=int, default=10, help="guide steps per model step")
    parser.add_argument(
        "--settings", nargs="*", default=None, help="names of the settings to run (default all)"
    )
    parser.add_argument(
        "--methods",
        nargs="*",
        default=None,
        help="labels of the methods to fit (default all; the references are always fitted)",
    )
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (1 thread each)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument("--quick", action="store_true", help="smoke mode: tiny sizes, 1 seed")
    parser.add_argument("--out", default=None, help="CSV file for the per-seed rows")
    parser.add_argument(
        "--from-csv",
        nargs="+",
        default=None,
        metavar="CSV",
        help="do not fit: summarise rows saved by --out (several files are merged; a fit "
        "present in several keeps the row of the last file)",
    )
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.jobs < 1 or args.threads < 1:
        parser.error("--seeds, --jobs and --threads must be positive")

    settings = QUICK_SETTINGS if args.quick else SETTINGS
    if args.settings:
        unknown = set(args.settings) - {s.name for s in settings}
        if unknown:
            parser.error(f"unknown settings {sorted(unknown)}; known: {[s.name for s in settings]}")
        settings = tuple(s for s in settings if s.name in args.settings)
    if args.from_csv:
        rows = read_csv(args.from_csv, key=("setting", "seed", "method"))
        print(f"# summary of {', '.join(args.from_csv)} ({len(rows)} rows)")
        report(rows, settings)
        return 0
    seeds = (
        [args.first_seed]
        if args.quick
        else list(range(args.first_seed, args.first_seed + args.seeds))
    )
    steps = args.steps if args.steps is not None else (20 if args.quick else 400)
    command = " ".join(["python", *sys.argv]) if argv is None else " ".join(argv)
    print(f"# {command}")
    print(
        f"# {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.processor() or 'cpu'}, "
        f"{os.cpu_count()} CPUs, python {platform.python_version()}; steps={steps}, "
        f"lr={args.lr}, r={args.num_particles}, guide_steps={args.guide_steps}, seeds={seeds}",
        flush=True,
    )
    options = {
        "steps": steps,
        "lr": args.lr,
        "num_particles": args.num_particles,
        "guide_steps": args.guide_steps,
        "methods": args.methods,
    }
    tasks = [(s, seed, {**options, "threads": args.threads}) for s in settings for seed in seeds]
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []

    def done(task: tuple[Setting, int, dict[str, Any]]) -> None:
        elapsed = time.perf_counter() - start
        print(f"  done {task[0].name} seed {task[1]} ({elapsed:.0f} s)", flush=True)

    if args.jobs == 1:
        for task in tasks:
            rows += _run_one(task)
            done(task)
    else:
        with ProcessPoolExecutor(args.jobs) as pool:
            for task, result in zip(tasks, pool.map(_run_one, tasks), strict=True):
                rows += result
                done(task)
    elapsed = time.perf_counter() - start
    if args.out:
        write_csv(rows, args.out)
    report(rows, settings)
    print(f"\ntotal {elapsed / 60:.1f} min" + (f"; rows written to {args.out}" if args.out else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
