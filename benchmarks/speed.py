"""Speed of the score-matching losses against torchebm, and the memory of a full-batch step.

Every number is a ratio of median wall-clock times of one training step (loss, then backward),
the contenders of a row measured interleaved in one run (one thread, ``--reps`` repetitions after
a warm-up), so that machine noise hits them alike:

1. complete data, torchebm 0.8.9's own MLP energy (2 x 64, Softplus), n rows, d = 10, 50, 100:
   ``MissingScoreMatching("iw", 1)``, the ``ExactObjective`` alone, the default
   ``MissingScoreMatching()``, sliced and denoising through the loss, each over torchebm's
   exact, approximate (``hessian_method="approx"``) and denoising losses;
2. 30% MCAR, the same energy: an IW step at r = 1, 10, 50 over the complete-data step
   (``MissingScoreMatching("iw", 1)`` on the table before masking), d = 10, 50, and a
   variational cycle (one model step at r = 50 and 10 guide steps) over the same;
3. sliced IW with missing data at d = 200 over d = 10;
4. peak resident memory of one full-batch IW step (Gaussian model, d = 50, r = 10, 30% MCAR)
   at n = 10^4 and 10^5, each in a fresh process;
5. (``--sections demo``, not in the defaults) the demo's variational fit over its IW fit, the
   two fits of ``pyro-msm demo``'s problem and settings interleaved, with each fit's score MSE
   over the exact marginal answer ("x exact").

    python benchmarks/speed.py                   # the full table (several minutes)
    python benchmarks/speed.py --smoke           # tiny sizes (a test runs this)
    python benchmarks/speed.py --device cuda     # time on a GPU (memory: see --memory-n)
    python benchmarks/speed.py --sections demo   # variational / IW fit of the demo (minutes)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import pyro
import torch
from torch import nn

import pyro_msm
from pyro_msm.distributions import FunctionEnergy
from pyro_msm.guides import AmortizedNormal, no_guide
from pyro_msm.infer import MissingScoreMatching
from pyro_msm.infer.objectives import ExactObjective, Particles
from pyro_msm.missingness import apply_mask, mcar_mask

Step = Callable[[], None]


def mlp(d: int) -> nn.Module:
    """torchebm's MLP energy of the issue: 2 x 64, Softplus."""
    return nn.Sequential(
        nn.Linear(d, 64), nn.Softplus(), nn.Linear(64, 64), nn.Softplus(), nn.Linear(64, 1)
    )


def torchebm_steps(net: nn.Module, x: torch.Tensor) -> dict[str, Step]:
    """torchebm's exact, approximate and denoising score-matching steps on ``net``."""
    from torchebm.core import BaseModel
    from torchebm.losses import DenoisingScoreMatching, ScoreMatching

    class Energy(BaseModel):
        def __init__(self) -> None:
            super().__init__(dtype=x.dtype, device=x.device)
            self.net = net

        def forward(self, z: torch.Tensor) -> torch.Tensor:
            return self.net(z).squeeze(-1)

    model = Energy()
    kw = {"dtype": x.dtype, "device": x.device}
    losses = {
        "ebm_exact": ScoreMatching(model, hessian_method="exact", **kw),
        "ebm_approx": ScoreMatching(model, hessian_method="approx", **kw),
        "ebm_denoising": DenoisingScoreMatching(model, noise_scale=0.1, **kw),
    }

    def step(loss) -> Step:
        def run() -> None:
            net.zero_grad(set_to_none=True)
            loss(x).backward()

        return run

    return {name: step(loss) for name, loss in losses.items()}


def model_of(net: nn.Module) -> Callable[[torch.Tensor], None]:
    """A Pyro model whose rows are ``exp(-net(x))``."""
    d = net[0].in_features

    def model(data: torch.Tensor) -> None:
        pyro.module(f"energy_d{d}", net)
        with pyro.plate("rows", data.shape[0]):
            pyro_msm.observe("x", FunctionEnergy(net, d), obs=data)

    return model


def loss_step(model, guide, data: torch.Tensor, loss: MissingScoreMatching, cycle: int = 1) -> Step:
    """``cycle`` calls of ``loss.loss_and_grads`` (one SVI cycle without the optimiser)."""

    def run() -> None:
        for _ in range(cycle):
            pyro.get_param_store()  # parameters stay; gradients are overwritten
            for p in pyro.get_param_store().values():
                p.grad = None
            loss.loss_and_grads(model, guide, data)

    return run


def objective_step(net: nn.Module, x: torch.Tensor, compile: bool = False) -> Step:
    """The ``ExactObjective`` alone on complete rows, one particle (``torch.compile``d with
    ``compile``)."""
    fn = FunctionEnergy(net, x.shape[-1])
    ones = torch.ones(1, x.shape[0], dtype=x.dtype, device=x.device)
    particles = Particles(x.unsqueeze(0), ones, torch.ones_like(x, dtype=torch.bool), ones[0])
    objective = ExactObjective().compiled(compile)

    def run() -> None:
        net.zero_grad(set_to_none=True)
        objective(fn, particles).mean().backward()

    return run


def interleaved(steps: dict[str, Step], reps: int) -> dict[str, float]:
    """Median seconds of each step, the steps run in turn ``reps`` times after one warm-up."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for k in range(reps + 1):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            if k:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def masked(x: torch.Tensor, rate: float, seed: int) -> torch.Tensor:
    return apply_mask(x, mcar_mask(x.shape, rate, seed=seed).to(x.device))


def show(rows: list[tuple[str, float, str]]) -> list[tuple[str, float, str]]:
    """Print rows as they are measured (a long run shows its progress) and return them."""
    for what, value, goal in rows:
        print(f"  {what}: {value:.3f} (goal {goal})", flush=True)
    return rows


def complete_data_rows(args, device) -> list[tuple[str, float, str]]:
    """Section 1: ratios to torchebm on complete data."""
    out = []
    for d in args.dims:
        pyro.clear_param_store()
        torch.manual_seed(d)
        net = mlp(d).to(device)
        x = torch.randn(args.n, d, device=device)
        model = model_of(net)
        steps = torchebm_steps(net, x)
        steps.update(
            iw1=loss_step(model, no_guide, x, MissingScoreMatching("iw", 1)),
            objective=objective_step(net, x),
            sliced=loss_step(model, no_guide, x, MissingScoreMatching("iw", 1, objective="sliced")),
            denoising=loss_step(
                model, no_guide, x, MissingScoreMatching("iw", 1, objective="denoising")
            ),
            default=loss_step(model, no_guide, x, MissingScoreMatching()),
        )
        if args.compile:
            start = time.perf_counter()
            steps["compiled"] = objective_step(net, x, compile=True)
            steps["compiled"]()  # compiles
            print(f"  [d={d}: compiled in {time.perf_counter() - start:.1f} s]", flush=True)
        t = interleaved(steps, args.reps)
        if args.compile:
            label = f"ExactObjective compiled / eager, d={d}"
            out += show([(label, t["compiled"] / t["objective"], "< 1 helps")])
        out += show(
            [
                (f"exact SM, iw r=1 / torchebm exact, d={d}", t["iw1"] / t["ebm_exact"], "<= 1.0"),
                (
                    f"ExactObjective / torchebm exact, d={d}",
                    t["objective"] / t["ebm_exact"],
                    "<= 1.0",
                ),
                (f"sliced / torchebm approx, d={d}", t["sliced"] / t["ebm_approx"], "<= 1.0"),
                (
                    f"denoising / torchebm denoising, d={d}",
                    t["denoising"] / t["ebm_denoising"],
                    "<= 1.2",
                ),
                (
                    f"default MissingScoreMatching() / torchebm exact, d={d}",
                    t["default"] / t["ebm_exact"],
                    "<= 1.0",
                ),
            ]
        )
        print(f"  [d={d}: torchebm exact {t['ebm_exact'] * 1e3:.1f} ms]", flush=True)
    return out


def missing_data_rows(args, device) -> list[tuple[str, float, str]]:
    """Sections 2 and 3: IW and variational steps over the complete-data step; sliced d."""
    out = []
    for d in args.missing_dims:
        pyro.clear_param_store()  # the guide's parameters are named by class, not by size
        torch.manual_seed(d)
        net = mlp(d).to(device)
        full = torch.randn(args.n, d, device=device)
        x = masked(full, 0.3, d)
        model = model_of(net)
        steps = {"complete": loss_step(model, no_guide, full, MissingScoreMatching("iw", 1))}
        for r in args.particles:
            steps[f"iw{r}"] = loss_step(model, no_guide, x, MissingScoreMatching("iw", r))
        r_var = max(args.particles)
        guide = AmortizedNormal(model)
        steps["variational"] = loss_step(
            model,
            guide,
            x,
            MissingScoreMatching("variational", r_var, guide_steps=args.guide_steps),
            cycle=args.guide_steps + 1,
        )
        t = interleaved(steps, args.reps)
        for r in args.particles:
            label = f"IW step r={r} / complete step, d={d}"
            out += show([(label, t[f"iw{r}"] / t["complete"], f"<= {1.5 * r:g}")])
        out += show(
            [
                (
                    f"variational cycle (r={r_var}, {args.guide_steps} guide steps) / "
                    f"complete step, d={d}",
                    t["variational"] / t["complete"],
                    f"<= {1.5 * r_var:g}",
                )
            ]
        )
    lo, hi = args.sliced_dims
    steps = {}
    for d in (lo, hi):
        pyro.clear_param_store()
        torch.manual_seed(d)
        net = mlp(d).to(device)
        x = masked(torch.randn(args.n, d, device=device), 0.3, d)
        loss = MissingScoreMatching("iw", args.sliced_particles, objective="sliced")
        steps[d] = loss_step(model_of(net), no_guide, x, loss)
    t = interleaved(steps, args.reps)
    out += show([(f"sliced with missing data d={hi} / d={lo}", t[hi] / t[lo], "<= 3")])
    return out


def demo_rows(args) -> list[tuple[str, float, str]]:
    """Section 5: wall and CPU time of the demo's variational fit over its IW fit."""
    import warnings

    from pyro_msm.cli import DEMO_DEFAULTS, SMOKE_DEFAULTS
    from pyro_msm.experiments.gaussian import (
        DEMO_ESTIMATORS,
        DEMO_GUIDE_PARTICLES,
        DEMO_GUIDE_STEPS,
        fit_gaussian,
        score_mse,
        simulate_gaussian,
    )

    sizes = SMOKE_DEFAULTS if args.smoke else DEMO_DEFAULTS
    problem = simulate_gaussian(sizes["dim"], sizes["n"], sizes["missing_rate"], "mcar", seed=0)
    common = {"steps": sizes["steps"], "lr": 0.02, "num_particles": 10, "seed": 0}
    specs = {s.label: s for s in DEMO_ESTIMATORS if s.label in ("iw", "variational")}

    def fit(label: str) -> tuple[float, float, float]:
        spec = specs[label]
        wall, cpu = time.perf_counter(), time.process_time()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = fit_gaussian(
                problem.observed,
                problem.mask,
                spec.estimator,
                guide_steps=DEMO_GUIDE_STEPS,
                guide_particles=DEMO_GUIDE_PARTICLES,
                guide=spec.guide,
                guide_hidden_dims=spec.guide_hidden_dims,
                **{**common, "steps": max(1, round(common["steps"] * spec.steps_fraction))},
            )
        mse = score_mse(result.loc, result.precision, problem.loc, problem.precision)
        return time.perf_counter() - wall, time.process_time() - cpu, mse

    exact = fit_gaussian(problem.observed, problem.mask, "closed_form", **common)
    reference = score_mse(exact.loc, exact.precision, problem.loc, problem.precision)
    runs: dict[str, list[tuple[float, float, float]]] = {label: [] for label in specs}
    for _ in range(args.reps):
        for label in specs:
            runs[label].append(fit(label))
    median = {
        label: [statistics.median(run[k] for run in runs[label]) for k in range(2)]
        for label in specs
    }
    out = []
    for k, clock in enumerate(("wall", "CPU")):
        ratio = median["variational"][k] / median["iw"][k]
        out += show([(f"demo: variational fit / IW fit, {clock} time", ratio, "<= 2")])
    for label in specs:
        ratio = runs[label][-1][2] / reference
        out += show([(f"demo: {label} x exact (score MSE / exact marginal's)", ratio, "-")])
    return out


def memory_child(n: int, d: int, r: int, device: str) -> None:
    """One full-batch IW step of a Gaussian model; prints the peak memory in MB as JSON."""
    import resource

    from pyro_msm.experiments.gaussian import make_gaussian_model

    torch.set_num_threads(1)
    torch.manual_seed(0)
    x = masked(torch.randn(n, d, device=device), 0.3, 0)
    model = make_gaussian_model(d)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    MissingScoreMatching("iw", r).loss_and_grads(model, no_guide, x)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    try:  # Linux: this process's own high-water mark (ru_maxrss carries a forking parent's peak)
        with open("/proc/self/status") as status:
            peak = next(int(ln.split()[1]) for ln in status if ln.startswith("VmHWM")) / 1024
    except (OSError, StopIteration):
        pass
    out = {"n": n, "peak_rss_mb": peak, "before_step_mb": base, "seconds": seconds}
    if device.startswith("cuda"):
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(out))


def memory_rows(args, device: str) -> list[tuple[str, float, str]]:
    """Section 4: peak memory of a full-batch step, each size in a fresh process."""
    out = []
    for n in args.memory_n:
        cmd = [sys.executable, __file__, "--memory-child", str(n), "--device", device]
        cmd += ["--memory-d", str(args.memory_d), "--memory-r", str(args.memory_r)]
        # the child imports the same pyro_msm as this process
        root = os.path.dirname(os.path.dirname(os.path.abspath(pyro_msm.__file__)))
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]),
        }
        result = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
        info = json.loads(result.stdout.strip().splitlines()[-1])
        key = "cuda_peak_mb" if "cuda_peak_mb" in info else "peak_rss_mb"
        label = (
            f"peak memory (MB) of a full-batch IW step, n={n}, d={args.memory_d}, "
            f"r={args.memory_r} ({info['seconds']:.1f} s)"
        )
        out += show([(label, info[key], "< 4096")])
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (a test runs this)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--n", type=int, default=1000, help="rows of the timed steps")
    parser.add_argument("--dims", type=int, nargs="+", default=[10, 50, 100])
    parser.add_argument("--missing-dims", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--particles", type=int, nargs="+", default=[1, 10, 50])
    parser.add_argument("--guide-steps", type=int, default=10)
    parser.add_argument("--sliced-dims", type=int, nargs=2, default=[10, 200])
    parser.add_argument("--sliced-particles", type=int, default=10)
    parser.add_argument("--memory-n", type=int, nargs="*", default=[10_000, 100_000])
    parser.add_argument("--memory-d", type=int, default=50)
    parser.add_argument("--memory-r", type=int, default=10)
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions (median)")
    parser.add_argument("--sections", nargs="+", default=["complete", "missing", "memory"])
    parser.add_argument(
        "--compile", action="store_true", help="also time the torch.compile'd ExactObjective"
    )
    parser.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.memory_child is not None:
        memory_child(args.memory_child, args.memory_d, args.memory_r, args.device)
        return
    if args.smoke:
        args.n, args.dims, args.missing_dims, args.particles = 32, [4], [4], [1, 3]
        args.guide_steps, args.sliced_dims, args.sliced_particles = 2, [3, 6], 2
        args.memory_n, args.memory_d, args.memory_r, args.reps = [200], 5, 2, 1
    device = torch.device(args.device)
    print(
        f"torch {torch.__version__}, device {device}, 1 thread, n={args.n}, median of "
        f"{args.reps} interleaved repetitions"
    )
    rows: list[tuple[str, float, str]] = []
    if "complete" in args.sections:
        rows += complete_data_rows(args, device)
    if "missing" in args.sections:
        rows += missing_data_rows(args, device)
    if "memory" in args.sections:
        rows += memory_rows(args, args.device)
    if "demo" in args.sections:
        rows += demo_rows(args)
    width = max(len(r[0]) for r in rows) if rows else 10
    print(f"{'what':<{width}}  {'ratio':>9}  goal")
    for what, value, goal in rows:
        print(f"{what:<{width}}  {value:>9.3f}  {goal}")


if __name__ == "__main__":
    main()
