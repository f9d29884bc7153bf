"""MCMC for unnormalised densities: the Metropolis-adjusted Langevin algorithm (MALA)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["mala_sample"]

TARGET_ACCEPTANCE = 0.574  # optimal MALA acceptance rate (Roberts & Rosenthal, 1998)


def _log_prob_and_grad(log_prob: Callable[[Tensor], Tensor], x: Tensor) -> tuple[Tensor, Tensor]:
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        lp = log_prob(x)
        (g,) = torch.autograd.grad(lp.sum(), x)
    return lp.detach(), g.detach()


def mala_sample(
    log_prob: Callable[[Tensor], Tensor],
    init: Tensor,
    *,
    num_steps: int = 500,
    step_size: float = 0.1,
    adapt_steps: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Run independent MALA chains, one per leading index of ``init``, and return the last states.

    Each chain proposes :math:`x' = x + \epsilon \nabla \log q(x) + \sqrt{2\epsilon}\,\xi` and
    accepts with the Metropolis-Hastings ratio, so the chain targets ``log_prob`` exactly; only
    the (unknown) mixing time limits accuracy. During the first ``adapt_steps`` steps (default
    half of ``num_steps``) each chain's step size is tuned towards an acceptance rate of 0.574;
    it is frozen afterwards, so the second half is a valid Markov chain.

    :param log_prob: unnormalised log density, mapping ``(..., d)`` to ``(...)``.
    :param init: initial states, shape ``(..., d)``; one chain per leading index.
    :param num_steps: total number of steps.
    :param step_size: initial step size.
    :param adapt_steps: number of adaptation steps (default ``num_steps // 2``).
    :param generator: optional random generator.
    :returns: the final states, shape of ``init``.
    """
    if num_steps < 0:
        raise ValueError(f"num_steps must be non-negative, got {num_steps}")
    adapt_steps = num_steps // 2 if adapt_steps is None else adapt_steps
    x = init.detach().clone()
    eps = torch.full(x.shape[:-1], float(step_size), dtype=x.dtype, device=x.device)
    lp, g = _log_prob_and_grad(log_prob, x)
    for step in range(num_steps):
        e = eps.unsqueeze(-1)
        noise = torch.randn(x.shape, dtype=x.dtype, device=x.device, generator=generator)
        prop = x + e * g + torch.sqrt(2 * e) * noise
        lp_prop, g_prop = _log_prob_and_grad(log_prob, prop)
        fwd = -((prop - x - e * g) ** 2).sum(-1) / (4 * eps)
        bwd = -((x - prop - e * g_prop) ** 2).sum(-1) / (4 * eps)
        log_ratio = lp_prop + bwd - lp - fwd
        log_ratio = torch.nan_to_num(log_ratio, nan=-math.inf)
        u = torch.rand(log_ratio.shape, dtype=x.dtype, device=x.device, generator=generator)
        accept = torch.log(u) < log_ratio
        x = torch.where(accept.unsqueeze(-1), prop, x)
        lp = torch.where(accept, lp_prop, lp)
        g = torch.where(accept.unsqueeze(-1), g_prop, g)
        if step < adapt_steps:
            rate = torch.exp(log_ratio.clamp(max=0.0))
            eps = eps * torch.exp(0.5 * (rate - TARGET_ACCEPTANCE) / math.sqrt(step + 1.0))
    return x
