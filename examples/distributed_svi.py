"""Data-parallel marginal score matching on torch.distributed.

Each rank takes its shard of every global minibatch; DistributedDataParallel averages the
gradients, so K ranks make the same update as one process with the same global batch::

    torchrun --nproc_per_node=2 examples/distributed_svi.py --rows 100000 --dim 50
    torchrun --nproc_per_node=2 examples/distributed_svi.py --table big.csv --batch 2000
    python examples/distributed_svi.py --smoke            # one process, a few seconds

The table is either simulated (seeded, the same on every rank) or streamed from a CSV/Parquet
file chunk by chunk (:class:`pyro_msm.streaming.TableStream`; each rank reads its own chunks),
so it never has to fit in memory. Rank 0 prints progress and writes ``--out`` (JSON: settings,
step times, rows per second, peak memory, final parameters).
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from itertools import cycle, islice

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from pyro_msm import MissingScoreMatching, distributed
from pyro_msm.modules import GaussianModel
from pyro_msm.streaming import TableStream, count_rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=100_000, help="simulated rows (no --table)")
    p.add_argument("--dim", type=int, default=50, help="simulated columns (no --table)")
    p.add_argument("--missing", type=float, default=0.3, help="simulated MCAR rate")
    p.add_argument("--table", help="CSV or Parquet file to stream instead of simulating")
    p.add_argument("--batch", type=int, default=1000, help="global minibatch (all ranks)")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--particles", type=int, default=10)
    p.add_argument("--estimator", default="iw", choices=["iw", "zeroed", "mean_impute", "em"])
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    p.add_argument("--out", help="write a JSON summary here (rank 0)")
    p.add_argument(
        "--mode",
        choices=["shard", "exact"],
        default="shard",
        help="shard: each rank gets its own rows and draws their particles; the proposal and "
        "column statistics are fitted on all ranks' rows (MissingScoreMatching("
        "data_parallel='sharded'): the same fit in distribution); exact: every rank gets the "
        "global batch and factors, draws and differentiates only its shard, with the random "
        "numbers one process gives those rows (data_parallel='replicated': the same fit as one "
        "process, up to floating-point order)",
    )
    p.add_argument("--smoke", action="store_true", help="tiny sizes")
    args = p.parse_args(argv)
    if args.smoke:
        args.rows, args.dim, args.batch, args.steps = 2000, 5, 200, 5
    return args


def simulated(args: argparse.Namespace) -> torch.Tensor:
    """A Gaussian table with a chain-graph precision and MCAR holes, the same on every rank."""
    g = torch.Generator().manual_seed(args.seed)
    d = args.dim
    precision = torch.eye(d) + torch.diag(torch.full((d - 1,), -0.4), 1)
    precision = precision + precision.T - torch.eye(d)
    chol = torch.linalg.cholesky(torch.linalg.inv(precision))
    x = torch.randn(args.rows, d, generator=g) @ chol.T
    x[torch.rand(args.rows, d, generator=g) < args.missing] = float("nan")
    return x


def batches(args: argparse.Namespace, here: distributed.World):
    """This rank's rows of each global minibatch, and the table's size."""
    if args.table:
        local = max(1, args.batch // here.size)
        stream = TableStream(args.table, local, seed=args.seed)
        loader = DataLoader(stream, batch_size=None)
        return cycle(loader), count_rows(args.table), None
    x = simulated(args)
    g = torch.Generator().manual_seed(args.seed + 1)

    def draw():
        while True:  # every rank draws the same global indices, then takes its shard
            idx = torch.randperm(x.shape[0], generator=g)[: args.batch]
            yield x[idx] if args.mode == "exact" else x[distributed.shard(idx)]

    return draw(), x.shape[0], x


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    here = distributed.init_from_environment()
    # particles: independent across ranks when sharding, identical when exact
    torch.manual_seed(args.seed + (0 if args.mode == "exact" else 1000 * here.rank))
    data, num_rows, _ = batches(args, here)
    first = next(data)
    model = GaussianModel(first.shape[1])
    mode = "replicated" if args.mode == "exact" else "sharded"
    loss = MissingScoreMatching(args.estimator, args.particles, data_parallel=mode)(
        model, lambda *a, **k: None
    )
    loss(first, num_rows=num_rows)  # build the parameters before wrapping
    net = DistributedDataParallel(loss) if distributed.is_distributed() else loss
    optim = torch.optim.Adam(net.parameters(), lr=args.lr)
    times = []
    for step, batch in enumerate(islice(data, args.steps)):
        start = time.perf_counter()
        optim.zero_grad()
        value = net(batch, num_rows=num_rows)
        value.backward()
        optim.step()
        times.append(time.perf_counter() - start)
        if here.is_main and (step % max(1, args.steps // 10) == 0 or step == args.steps - 1):
            print(f"step {step:5d}  loss {float(value):.4g}  {times[-1] * 1e3:.1f} ms", flush=True)
    median = sorted(times)[len(times) // 2]
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    peak = torch.tensor([peak_mb], dtype=torch.float64)
    distributed.all_reduce_sum(peak)  # total over ranks
    summary = {
        "ranks": here.size,
        "rows": num_rows,
        "dim": int(first.shape[1]),
        "global_batch": args.batch,
        "estimator": args.estimator,
        "mode": args.mode,
        "particles": args.particles,
        "median_step_s": median,
        "rows_per_s": args.batch / median,
        "peak_rss_mb_total": float(peak.item()),
        "loc": model.loc.detach().tolist(),
    }
    if here.is_main:
        print(json.dumps({k: v for k, v in summary.items() if k != "loc"}))
        if args.out:
            with open(args.out, "w") as f:
                json.dump(summary, f)
    distributed.shutdown()
    return 0


if __name__ == "__main__":
    # end the rank before interpreter teardown, where gloo can abort (distributed.exit_rank)
    distributed.exit_rank(main())
