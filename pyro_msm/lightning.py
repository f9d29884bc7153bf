"""Training with PyTorch Lightning (the ``lightning`` extra): multi-GPU and multi-node runs come
from Lightning's strategies (``Trainer(strategy="ddp", devices=K, num_nodes=M)``).

The pattern of Pyro's own Lightning example: the loss's module form
``MissingScoreMatching(...)(model, guide)`` is the network, its ``forward(batch)`` the training
loss. The model (and guide, if any) must be :class:`~pyro.nn.PyroModule` objects, e.g.
:class:`pyro_msm.modules.GaussianModel`, so that Lightning sees their parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

try:
    import lightning as L
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        "pyro_msm.lightning needs PyTorch Lightning: pip install 'pyro-msm[lightning]'"
    ) from err

from .infer import MissingScoreMatching

__all__ = ["ScoreMatchingModule"]


def _no_guide(*args: Any, **kwargs: Any) -> None:
    return None


class ScoreMatchingModule(L.LightningModule):
    """A LightningModule that fits ``model`` by marginal score matching.

    Each batch is the model's argument tuple (or a single tensor of rows). Logged: ``loss`` and,
    for importance-weighting estimators, ``ess`` (the mean effective sample size).

    :param model: a :class:`~pyro.nn.PyroModule` model with :func:`pyro_msm.observe` sites.
    :param guide: a :class:`~pyro.nn.PyroModule` guide for ``"variational"``/``"hybrid"``.
    :param loss: the loss (default :class:`~pyro_msm.infer.MissingScoreMatching` with IW).
    :param lr: Adam learning rate.
    :param optimizer: optional factory ``params -> torch.optim.Optimizer``.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        guide: torch.nn.Module | None = None,
        loss: MissingScoreMatching | None = None,
        *,
        lr: float = 1e-2,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(model, torch.nn.Module):
            raise TypeError(
                "model must be a PyroModule (e.g. pyro_msm.modules.GaussianModel) so Lightning "
                f"can see its parameters, got {type(model).__name__}"
            )
        self.loss = loss if loss is not None else MissingScoreMatching()
        self.objective = self.loss(model, guide if guide is not None else _no_guide)
        self.lr = float(lr)
        self.optimizer_factory = optimizer

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The differentiable loss of one batch."""
        return self.objective(*args, **kwargs)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """The loss of one batch (the model's argument tuple, or a tensor of rows); logs
        ``loss`` and, for importance weighting, ``ess``."""
        args = batch if isinstance(batch, (tuple, list)) else (batch,)
        loss = self(*args)
        self.log("loss", loss.detach(), prog_bar=True, sync_dist=True)
        if "ess" in self.loss.diagnostics:
            self.log("ess", float(self.loss.diagnostics["ess"]), sync_dist=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam with learning rate ``lr`` over the model's and guide's parameters, or the
        ``optimizer`` factory's optimiser."""
        params = list(self.objective.parameters())
        if self.optimizer_factory is not None:
            return self.optimizer_factory(params)
        return torch.optim.Adam(params, lr=self.lr)
