r"""Known missingness mechanisms (MAR / MNAR) for the importance-weighting estimator.

When the probability :math:`\varphi(m \mid x)` of a row's observed pattern given the complete row
is known, the density of what is seen in pattern :math:`m` is
:math:`p(x_o, m) = \int q_\theta(x)\,\varphi(m \mid x)\,dx_u`, whose score in :math:`x_o` is the
average of :math:`a_o + \nabla_o \log\varphi` under the *tilted* conditional
:math:`\propto q_\theta(x)\,\varphi(m\mid x)`. Both pieces follow from one substitution: the
model's log density becomes :math:`\log q_\theta(x) + \log\varphi(m \mid x)`
(:class:`MechanismTilted`), so the importance weights gain the factor :math:`\varphi` and the
scores its gradient. Identifiability needs :math:`\varphi > 0`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from pyro.distributions import TorchDistribution
from torch import Tensor
from torch.distributions import Distribution

from .derivatives import log_prob

__all__ = ["MechanismTilted", "self_masking_logistic"]


class MechanismTilted(TorchDistribution):
    """The data distribution times the probability of each row's observed pattern.

    :param base: the data distribution.
    :param log_mechanism: ``(z, mask) -> log phi(mask | z)`` for completed rows ``z`` of shape
        ``(..., n, d)`` and the pattern ``mask`` ``(n, d)``; returns ``(..., n)``.
    :param mask: boolean ``(n, d)``, True where observed.
    """

    arg_constraints: dict = {}

    def __init__(
        self,
        base: Distribution,
        log_mechanism: Callable[[Tensor, Tensor], Tensor],
        mask: Tensor,
    ) -> None:
        self.base = base
        self.log_mechanism = log_mechanism
        self.mask = mask
        super().__init__(base.batch_shape, base.event_shape, validate_args=False)

    @property
    def support(self):  # type: ignore[override]
        return self.base.support

    def log_prob(self, value: Tensor) -> Tensor:
        extra = self.log_mechanism(value, self.mask)
        if extra.shape != value.shape[:-1]:
            raise ValueError(
                f"the missingness log probability has shape {tuple(extra.shape)}; expected "
                f"{tuple(value.shape[:-1])} (one value per completed row)"
            )
        return log_prob(self.base, value) + extra


def self_masking_logistic(
    slope: Tensor | float, intercept: Tensor
) -> Callable[[Tensor, Tensor], Tensor]:
    r"""The self-masking MNAR mechanism: coordinate ``j`` is missing with probability
    :math:`\sigma(\text{slope}_j\,x_j + \text{intercept}_j)`, independently across coordinates.

    :returns: ``(z, mask) -> log phi(mask | z)`` for ``MissingScoreMatching(missingness=...)``.
    """

    def log_mechanism(z: Tensor, mask: Tensor) -> Tensor:
        logits = torch.as_tensor(slope, dtype=z.dtype, device=z.device) * z + intercept.to(z)
        # log P(missing) = logsigmoid(logit), log P(observed) = logsigmoid(-logit)
        per_coordinate = torch.where(mask, -logits, logits)
        return torch.nn.functional.logsigmoid(per_coordinate).sum(-1)

    return log_mechanism
