"""Time per training step of the exact, sliced and denoising objectives on a neural energy.

Prints, for each dimension, the median seconds per ``SVI.step`` of each objective (IW estimator,
the same data, model and particles) measured side by side in one run, and the ratio to the
exact objective. The exact objective needs ``d`` Hessian-vector products per point; sliced needs
one per projection and denoising none, so the ratios should grow roughly linearly with ``d``.

    python benchmarks/time_objectives.py            # d = 10, 50, 200
    python benchmarks/time_objectives.py --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import statistics
import time

import pyro
import torch
from pyro.infer import SVI
from pyro.optim import Adam

import pyro_msm
from pyro_msm.distributions import EnergyMLP, MLPEnergy
from pyro_msm.guides import no_guide
from pyro_msm.infer import MissingScoreMatching
from pyro_msm.missingness import apply_mask, mcar_mask

OBJECTIVES = ("exact", "sliced", "denoising")


def seconds_per_step(objective: str, x: torch.Tensor, steps: int, particles: int) -> float:
    """Median wall-clock seconds of ``steps`` SVI steps (after one warm-up step)."""
    pyro.clear_param_store()
    torch.manual_seed(0)
    net = EnergyMLP(x.shape[1], (128, 128))

    def model(data):
        pyro.module("energy", net)
        with pyro.plate("rows", data.shape[0]):
            pyro_msm.observe("x", MLPEnergy(net), obs=data)

    loss = MissingScoreMatching("iw", particles, objective=objective)
    svi = SVI(model, no_guide, Adam({"lr": 1e-3}), loss)
    svi.step(x)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        svi.step(x)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[10, 50, 200])
    parser.add_argument("--n", type=int, default=256, help="rows per step")
    parser.add_argument("--particles", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per objective")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (1 is steadiest on a shared machine)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:
        args.dims, args.n, args.steps = [5, 10], 32, 2
    print(f"IW with {args.particles} particles, {args.n} rows, 30% MCAR, EnergyMLP(d, (128, 128))")
    print(
        f"{'d':>5} " + " ".join(f"{o:>12}" for o in OBJECTIVES) + "   sliced/exact  denoising/exact"
    )
    for d in args.dims:
        torch.manual_seed(d)
        full = torch.randn(args.n, d)
        x = apply_mask(full, mcar_mask(full.shape, 0.3, seed=d))
        t = {o: seconds_per_step(o, x, args.steps, args.particles) for o in OBJECTIVES}
        print(
            f"{d:>5} "
            + " ".join(f"{t[o]:>11.4f}s" for o in OBJECTIVES)
            + f"   {t['sliced'] / t['exact']:>12.3f}  {t['denoising'] / t['exact']:>15.3f}"
        )


if __name__ == "__main__":
    main()
