"""Data-parallel scaling: step time, throughput and peak memory for 1 and 2 ranks.

Runs ``examples/distributed_svi.py`` under ``torchrun`` (gloo on CPU, NCCL on GPUs) for each
table size and rank count, one thread per rank, with the same global minibatch, and prints one
row per run plus the 2-rank / 1-rank speed-up::

    python benchmarks/scaling.py                      # n = 1e4, 1e5, 1e6 at d = 50
    python benchmarks/scaling.py --smoke              # tiny, a few seconds (run by the tests)

What a 2-core machine can show: whether the per-step work splits (the speed-up of 2 ranks over 1
at a fixed global batch, bounded by 2 and by the all-reduce of d + d(d+1)/2 gradients), and that
the step time does not grow with n (minibatches) while memory grows only by the table each rank
holds. It cannot show inter-node bandwidth: on a multi-node run the all-reduce of a few
kilobytes per step is latency-bound (tens of microseconds on InfiniBand, about a millisecond on
Ethernet), small against a step of tens of milliseconds, so throughput scales with the ranks
until the per-rank batch gets too small to amortise it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "distributed_svi.py"


def run(ranks: int, rows: int, dim: int, batch: int, steps: int, mode: str, device_env: dict):
    """One torchrun launch; returns the example's JSON summary."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "summary.json"
        logs = Path(tmp) / "logs"
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={ranks}", "--log-dir", str(logs), "--redirects", "3",
            str(EXAMPLE), "--rows", str(rows), "--dim", str(dim),
            "--batch", str(batch), "--steps", str(steps), "--mode", mode, "--out", str(out),
        ]  # fmt: skip
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), **device_env)
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
        if done.returncode != 0:
            # the launcher's own traceback hides why a rank died: show each rank's output last
            ranks_out = "\n".join(
                f"--- {path.relative_to(logs)} ---\n{path.read_text(errors='replace')[-1500:]}"
                for path in sorted(logs.rglob("std*.log"))
            )
            raise RuntimeError(
                f"torchrun failed:\n{done.stdout[-1000:]}\n{done.stderr[-1000:]}\n{ranks_out}"
            )
        return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--dim", type=int, default=50)
    p.add_argument("--batch", type=int, default=1000, help="global minibatch")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    p.add_argument("--mode", choices=["shard", "exact"], default="shard")
    p.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="launches per rank count, interleaved (1, 2, 1, 2, ...); medians are reported",
    )
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args(argv)
    if args.smoke:
        args.rows, args.dim, args.batch, args.steps, args.repeats = [2000], 5, 200, 4, 1
    print(f"{'n':>9} {'ranks':>5} {'step ms':>8} {'rows/s':>9} {'peak MB (all ranks)':>20}")
    for rows in args.rows:
        runs: dict[int, list[dict]] = {ranks: [] for ranks in args.ranks}
        for _ in range(max(1, args.repeats)):
            for ranks in args.ranks:
                runs[ranks].append(
                    run(ranks, rows, args.dim, args.batch, args.steps, args.mode, {})
                )
        times = {}
        for ranks, summaries in runs.items():
            steps = sorted(s["median_step_s"] for s in summaries)
            times[ranks] = steps[len(steps) // 2]
            peak = max(s["peak_rss_mb_total"] for s in summaries)
            spread = (
                f"  (runs: {', '.join(f'{1e3 * t:.1f}' for t in steps)})" if len(steps) > 1 else ""
            )
            print(
                f"{rows:>9} {ranks:>5} {1e3 * times[ranks]:>8.1f} "
                f"{args.batch / times[ranks]:>9.0f} {peak:>20.0f}{spread}",
                flush=True,
            )
        if 1 in times and 2 in times:
            print(f"{'':>9} speed-up 2 ranks / 1 rank: {times[1] / times[2]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
