"""Energy models as :class:`~pyro.nn.PyroModule` objects.

A model written with ``pyro.param`` keeps its parameters in Pyro's global param store, which
:class:`torch.nn.parallel.DistributedDataParallel` and PyTorch Lightning cannot see. These
models hold them as module parameters instead, so ``MissingScoreMatching()(model, guide)`` is an
ordinary :class:`torch.nn.Module` whose ``parameters()`` are the model's and the guide's.

Each model's ``forward(data, mask=None, *, num_rows=None)`` observes the rows with
:func:`pyro_msm.observe` (site ``"x"``) inside a plate ``"rows"``. ``num_rows`` is the size of
the whole table when ``data`` is a minibatch (streamed or sharded): the plate then scales the
batch's loss by ``num_rows / len(data)``, as a subsampled plate does.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import torch
from pyro.distributions import constraints
from pyro.nn import PyroModule, PyroParam
from pyro.nn.module import to_pyro_module_
from torch import Tensor

from .distributions import GaussianEnergy, MLPEnergy
from .distributions.neural import EnergyMLP
from .primitives import observe

__all__ = ["GaussianModel", "MLPModel"]


def _observe_rows(fn, data: Tensor, mask: Tensor | None, num_rows: int | None) -> Tensor:
    n = int(data.shape[0])
    size = n if num_rows is None else int(num_rows)
    if size < n:
        raise ValueError(f"num_rows={size} is smaller than the batch ({n} rows)")
    subsample = None if size == n else torch.arange(n, device=data.device)
    with pyro.plate("rows", size, subsample=subsample):
        return observe("x", fn, obs=data, obs_mask=mask)


class GaussianModel(PyroModule):
    r"""Rows :math:`x \sim N(\mu, (L L^\top)^{-1})` as an unnormalised
    :class:`~pyro_msm.distributions.GaussianEnergy`; parameters ``loc`` and ``precision_tril``
    (lower Cholesky factor of the precision, so it stays positive definite).

    :param dim: number of columns ``d``.
    :param loc: initial mean (default zero). :param precision: initial precision (default I).
    :param dtype: parameter dtype (default torch's default).
    """

    def __init__(
        self,
        dim: int,
        *,
        loc: Tensor | None = None,
        precision: Tensor | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if int(dim) < 1:
            raise ValueError(f"dim must be positive, got {dim}")
        dtype = dtype or torch.get_default_dtype()
        loc0 = torch.zeros(dim, dtype=dtype) if loc is None else loc.detach().to(dtype).clone()
        tril0 = (
            torch.eye(dim, dtype=dtype)
            if precision is None
            else torch.linalg.cholesky(precision.detach().to(dtype))
        )
        self.dim = int(dim)
        self.loc = PyroParam(loc0)
        self.precision_tril = PyroParam(tril0, constraint=constraints.lower_cholesky)

    @property
    def precision(self) -> Tensor:
        """The current precision :math:`L L^\\top`."""
        tril = self.precision_tril
        return tril @ tril.mT

    def forward(
        self, data: Tensor, mask: Tensor | None = None, *, num_rows: int | None = None
    ) -> Tensor:
        """Observe ``data`` (NaN = missing unless ``mask`` is given); returns completed rows."""
        fn = GaussianEnergy(self.loc, precision_tril=self.precision_tril)
        return _observe_rows(fn, data, mask, num_rows)


class MLPModel(PyroModule):
    """Rows with the neural energy :class:`~pyro_msm.distributions.MLPEnergy` (an MLP plus a
    quadratic confinement); the network's weights are the parameters.

    :param dim: number of columns. :param hidden_dims: hidden widths.
    :param confinement: the confinement constant of
        :class:`~pyro_msm.distributions.neural.EnergyMLP`.
    """

    def __init__(
        self, dim: int, hidden_dims: Sequence[int] = (64, 64), *, confinement: float = 0.1
    ) -> None:
        super().__init__()
        net = EnergyMLP(dim, hidden_dims, confinement=confinement)
        to_pyro_module_(net)  # its weights become Pyro parameters that SVI finds by tracing
        self.net = net

    def forward(
        self, data: Tensor, mask: Tensor | None = None, *, num_rows: int | None = None
    ) -> Tensor:
        """Observe ``data`` (NaN = missing unless ``mask`` is given); returns completed rows."""
        return _observe_rows(MLPEnergy(self.net), data, mask, num_rows)
