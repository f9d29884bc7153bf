"""Non-negative graphs (issue 9, part 2): the truncated Gaussian graphical model on R_+^d.

Held-out truncated networks (Erdos-Renyi graphs and precisions seeded from 100 on; the cap and
the EM settings were chosen on seed-5 networks that are not in this table), n rows drawn exactly
from N(0, K^-1) truncated to x >= 0, MCAR masks. Side by side in one run, one torch/BLAS thread,
every contender on the same table: path-AUC of edge recovery and seconds per path for

- ``nonnegative_sm`` / ``nonnegative_em``: :func:`pyro_msm.graphical.nonnegative.nonnegative_path`
  (exact on complete data, Monte Carlo EM with the Rao-Blackwellised E-step with missing
  entries), the model centred or not by the score test of ``eta = 0`` (``centred="auto"``, the
  default; the printed line says which); with ``--centred`` also both models explicitly
  (``*_centred``: ``eta = 0``; ``*_noncentred``), with ``--plain-em`` also EM with plain
  Monte Carlo statistics
  (``nonnegative_em_plain``, ``--plain-draws`` chains per row), with ``--path-em`` also EM at
  every penalty (``nonnegative_em_path``; the default is fixed imputation, EM at the
  ``--imputation-ratio`` penalty (the noise rate) then the exact path on its E-step
  statistics), with ``--rate-scales c ...`` also fixed imputation at ``c`` times the
  noise-rate penalty (``imputation_ratio="rate"``, ``nonnegative_em_rate<c>``), with
  ``--ratios r ...`` at ``r`` times the empty-graph penalty (``nonnegative_em_r<r>``);
- ``mean_glasso``: mean imputation + graphical lasso; ``em_glasso``: EM graphical lasso
  (:mod:`pyro_msm.graphical.baselines`), both Gaussian (misspecified on the orthant);
- ``oracle_sm`` / ``oracle_glasso``: the complete data (before masking) through the exact
  non-negative path and the graphical lasso, for reference;
- with ``--with-iw``, the library's stochastic truncated path
  (:func:`~pyro_msm.graphical.score_matching_path`, ``estimator="iw"``,
  ``support=nonnegative``) on the first seed only (about a minute per fit).

Every method gets ``--penalties`` penalties from its own empty-graph penalty down to 1% of it.

    python benchmarks/graph_nonnegative.py --smoke                 # seconds
    python benchmarks/graph_nonnegative.py --dims 30 50 --rates 0 0.3 0.6 --seeds 3
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections import defaultdict

import torch
from pyro.distributions import constraints

from pyro_msm.distributions import TruncatedGaussianEnergy
from pyro_msm.graphical import make_graph, path_auc, precision_from_graph
from pyro_msm.graphical.baselines import em_glasso_path, glasso_path, impute_glasso_path
from pyro_msm.graphical.nonnegative import nonnegative_path
from pyro_msm.graphical.path import score_matching_path
from pyro_msm.missingness import mcar_mask

ORTHANT = constraints.independent(constraints.nonnegative, 1)


def simulate(
    graph: str, d: int, n: int, seed: int, shift: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """A held-out truncated network: adjacency and n exact draws on the orthant of
    N(mu, K^-1), mu = ``shift`` marginal standard deviations (0: the centred model)."""
    adjacency = make_graph(graph, d, seed=seed)
    precision = precision_from_graph(adjacency, seed=seed)
    loc = shift * torch.linalg.inv(precision).diagonal().sqrt()
    truth = TruncatedGaussianEnergy(loc.to(torch.float64), precision, ORTHANT)
    return adjacency, truth.simulate(n, seed=seed + 1)


def run_cell(args: argparse.Namespace, d: int, seed: int) -> list[dict]:
    adjacency, x = simulate(args.graph, d, args.n, seed, args.shift)
    rows = []

    def record(rate: float, method: str, path, seconds: float) -> None:
        auc = path_auc(adjacency, path.precisions)
        rows.append(dict(d=d, rate=rate, seed=seed, method=method, auc=auc, seconds=seconds))
        z = path.info.get("centring_z", float("nan")) if path.info else float("nan")
        choice = "" if z != z else f"  (centred: {path.info['centred']}, Z {z:+.2f})"
        print(f"  d={d} rate={rate:.1f} seed={seed} {method:>25} path-AUC {auc:.3f} "
              f"{seconds:7.2f} s{choice}", flush=True)  # fmt: skip

    k = args.penalties
    start = time.perf_counter()
    oracle = nonnegative_path(x, num_penalties=k)
    record(0.0, "oracle_sm", oracle, time.perf_counter() - start)
    if args.centred:
        for flag, tag in ((True, "centred"), (False, "noncentred")):
            start = time.perf_counter()
            oracle = nonnegative_path(x, num_penalties=k, centred=flag)
            record(0.0, f"oracle_sm_{tag}", oracle, time.perf_counter() - start)
    start = time.perf_counter()
    cov = torch.cov(x.T, correction=0)
    record(0.0, "oracle_glasso", glasso_path(cov, num_penalties=k), time.perf_counter() - start)
    for rate in args.rates:
        if rate == 0:
            continue
        mask = mcar_mask(x.shape, rate, seed=seed + 2)
        xm = torch.where(mask, x, torch.nan)
        em = dict(
            num_penalties=k,
            num_draws=args.draws,
            num_sweeps=args.sweeps,
            seed=seed,
            imputation_ratio=args.imputation_ratio,
        )
        contenders = [
            ("nonnegative_em", lambda xm=xm, em=em: nonnegative_path(xm, **em)),
            ("mean_glasso", lambda xm=xm: impute_glasso_path(xm, num_penalties=k)),
            ("em_glasso", lambda xm=xm: em_glasso_path(xm, num_penalties=k)),
        ]  # fmt: skip
        if args.centred:
            for flag, tag in ((True, "centred"), (False, "noncentred")):
                contenders.append(
                    (
                        f"nonnegative_em_{tag}",
                        lambda xm=xm, em=em, f=flag: nonnegative_path(xm, centred=f, **em),
                    )
                )
        for r in args.ratios:
            fixed = dict(em, imputation_ratio=r)
            contenders.append(
                (f"nonnegative_em_r{r:g}", lambda xm=xm, e=fixed: nonnegative_path(xm, **e))
            )
            if args.centred:
                contenders.append(
                    (
                        f"nonnegative_em_r{r:g}_centred",
                        lambda xm=xm, e=fixed: nonnegative_path(xm, centred=True, **e),
                    )
                )
        for c in args.rate_scales:
            rule = dict(em, imputation_ratio="rate", imputation_scale=c)
            tag = f"nonnegative_em_rate{c:g}"
            contenders.append((tag, lambda xm=xm, e=rule: nonnegative_path(xm, **e)))
            if args.centred:
                contenders.append(
                    (
                        f"{tag}_centred",
                        lambda xm=xm, e=rule: nonnegative_path(xm, centred=True, **e),
                    )
                )
        if args.path_em:
            every = dict(em, imputation_ratio=None)
            contenders.append(
                ("nonnegative_em_path", lambda xm=xm, e=every: nonnegative_path(xm, **e))
            )
            if args.centred:
                contenders.append(
                    (
                        "nonnegative_em_path_centred",
                        lambda xm=xm, e=every: nonnegative_path(xm, centred=True, **e),
                    )
                )
        if args.plain_em:
            contenders.append(
                ("nonnegative_em_plain", lambda xm=xm, em=em: nonnegative_path(
                    xm, rao_blackwell=False, **dict(em, num_draws=args.plain_draws)))
            )  # fmt: skip
        if args.with_iw and seed == args.seed:
            contenders.append(
                ("library_iw", lambda xm=xm: score_matching_path(
                    xm, estimator="iw", support=ORTHANT, num_penalties=k, seed=seed))
            )  # fmt: skip
        for method, fit in contenders:
            start = time.perf_counter()
            path = fit()
            record(rate, method, path, time.perf_counter() - start)
    return rows


def summarise(rows: list[dict], markdown: bool = False) -> str:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["d"], r["rate"], r["method"])].append(r)
    lines = []
    if markdown:
        lines += ["| d | MCAR | method | path-AUC mean (min-max) | seconds (median) | seeds |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
    else:
        lines.append(f"{'d':>4} {'MCAR':>5} {'method':>26} {'path-AUC':>20} {'s/fit':>8} seeds")
    for (d, rate, method), rs in sorted(groups.items()):
        aucs = [r["auc"] for r in rs]
        secs = statistics.median(r["seconds"] for r in rs)
        spread = f"{statistics.mean(aucs):.3f} ({min(aucs):.3f}-{max(aucs):.3f})"
        if markdown:
            lines.append(f"| {d} | {rate:.0%} | {method} | {spread} | {secs:.1f} | {len(rs)} |")
        else:
            lines.append(f"{d:>4} {rate:>5.0%} {method:>26} {spread:>20} {secs:>8.2f} {len(rs)}")
    return "\n".join(lines)


def _ratio(text: str) -> str | float:
    return text if text == "rate" else float(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, seconds")
    parser.add_argument("--dims", type=int, nargs="+", default=[30, 50])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--rates", type=float, nargs="+", default=[0.0, 0.3, 0.6])
    parser.add_argument("--seed", type=int, default=100, help="first seed (held-out: >= 100)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--graph", default="erdos_renyi")
    parser.add_argument(
        "--shift", type=float, default=0.0,
        help="Gaussian mean inside the orthant, in marginal standard deviations (0: centred)",
    )  # fmt: skip
    parser.add_argument("--penalties", type=int, default=15, help="penalties per path")
    parser.add_argument("--draws", type=int, default=5, help="Gibbs chains per row (EM)")
    parser.add_argument("--sweeps", type=int, default=3, help="Gibbs sweeps per E-step (EM)")
    parser.add_argument(
        "--centred", action="store_true", help="also both models explicitly, EM and oracle"
    )
    parser.add_argument(
        "--plain-em", action="store_true", help="also EM without Rao-Blackwellisation"
    )
    parser.add_argument(
        "--imputation-ratio",
        type=_ratio,
        default="rate",
        help="nonnegative_em's imputation penalty: 'rate' (the noise rate, the library's "
        "default) or a fraction of the empty-graph penalty",
    )
    parser.add_argument(
        "--ratios",
        type=float,
        nargs="*",
        default=[],
        help="also fixed imputation at these fractions of the empty-graph penalty "
        "(nonnegative_em_r<r>; the former default was 0.3)",
    )
    parser.add_argument(
        "--rate-scales",
        type=float,
        nargs="*",
        default=[],
        help="also fixed imputation at the noise-rate penalty times each of these c "
        "(imputation_ratio='rate', nonnegative_em_rate<c>)",
    )
    parser.add_argument(
        "--path-em", action="store_true", help="also EM at every penalty (nonnegative_em_path)"
    )
    parser.add_argument("--plain-draws", type=int, default=20, help="chains per row, --plain-em")
    parser.add_argument("--with-iw", action="store_true", help="the library's IW path, 1 seed")
    parser.add_argument("--markdown", action="store_true", help="print a markdown table too")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if args.smoke:
        args.dims, args.n, args.rates, args.seeds = [8], 200, [0.0, 0.3], 1
        args.penalties, args.draws, args.plain_draws = 5, 4, 4
        args.centred = args.plain_em = True
        args.ratios = args.ratios or [0.3]
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    rows: list[dict] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-learn convergence chatter
        for d in args.dims:
            for seed in range(args.seed, args.seed + args.seeds):
                rows += run_cell(args, d, seed)
    print(f"\n{args.graph} truncated networks on R_+^d (mean {args.shift:g} sd), n={args.n}, "
          f"{args.penalties} "
          f"penalties per path, {args.draws} Gibbs chains per row and {args.sweeps} sweeps "
          "per E-step (EM)")  # fmt: skip
    print(summarise(rows))
    if args.markdown:
        print()
        print(summarise(rows, markdown=True))
    print(f"wall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
