"""What the benchmark scripts of the paper's models share: the command line, running or
re-reading the tidy rows, and the printed summary."""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any

import torch

from pyro_msm.experiments.reporting import format_summary, read_csv, summarise, write_csv

Rows = list[dict[str, Any]]


def experiment_parser(
    description: str, methods: Sequence[str], full: str
) -> argparse.ArgumentParser:
    """The options every script has; a script adds its own (sizes, domain, ...)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke run)")
    parser.add_argument("--full", action="store_true", help=full)
    parser.add_argument("--seed", type=int, default=0, help="first seed")
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds")
    parser.add_argument("--steps", type=int, default=None, help="model updates per fit")
    parser.add_argument("--methods", nargs="+", default=list(methods))
    parser.add_argument("--csv", help="write the tidy rows here")
    parser.add_argument("--from-csv", help="summarise rows from an earlier run instead")
    parser.add_argument("--plot", help="save the plot here (PNG)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    return parser


def run_or_read(args: argparse.Namespace, run: Callable[[], Rows]) -> Rows:
    """The rows of ``--from-csv``, or of ``run()`` (written to ``--csv`` when given)."""
    torch.set_num_threads(args.threads)
    if args.from_csv:
        return read_csv([args.from_csv])
    print(f"started {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC")
    with warnings.catch_warnings():  # complete-case / outside-domain counts, once per fit
        warnings.simplefilter("ignore", UserWarning)
        rows = run()
    if args.csv:
        write_csv(rows, args.csv)
    return rows


def report(
    args: argparse.Namespace,
    rows: Rows,
    by: Sequence[str],
    metrics: Sequence[tuple[str, str]],
    plot: Callable[[Rows, str], Any],
    start: float,
) -> None:
    """Print the summary over seeds, the fits' notes, the plot's path and the wall time."""
    summary = summarise(rows, by, [m for m, _ in metrics] + ["seconds"])
    print(
        format_summary(
            summary, by, [*metrics, ("seconds", "s/fit")], medians=[metrics[0][0], "fisher"]
        )
    )
    for method, note in sorted({(r["method"], r["note"]) for r in rows if r["note"]}):
        print(f"note: {method}: {note}")
    if args.plot:
        print(f"plot: {plot(rows, args.plot)}")
    if not args.from_csv:
        print(f"wall time {time.perf_counter() - start:.0f} s")
