"""A neural energy: a multilayer perceptron with a quadratic confinement term."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from .energy import FunctionEnergy

__all__ = ["EnergyMLP", "MLPEnergy"]


class EnergyMLP(nn.Module):
    r"""The network :math:`E(x) = f_\theta(x) + \tfrac{c}{2}\lVert x \rVert^2`.

    ``f`` is an MLP with smooth activations (score matching needs second derivatives, which
    vanish for ReLU). The confinement ``c > 0`` keeps :math:`\exp(-E)` integrable whatever
    the weights, so the model is a proper density and :meth:`MLPEnergy.sample` is meaningful.

    :param dim: data dimension ``d``.
    :param hidden_dims: widths of the hidden layers.
    :param confinement: the constant ``c``.
    :param activation: activation module class (default :class:`torch.nn.SiLU`).
    """

    def __init__(
        self,
        dim: int,
        hidden_dims: Sequence[int] = (64, 64),
        *,
        confinement: float = 0.1,
        activation: type[nn.Module] = nn.SiLU,
    ) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"EnergyMLP: dim must be positive, got {dim}")
        if confinement <= 0:
            raise ValueError(f"EnergyMLP: confinement must be positive, got {confinement}")
        layers: list[nn.Module] = []
        width = dim
        for h in hidden_dims:
            layers += [nn.Linear(width, h), activation()]
            width = h
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)
        self.dim = dim
        self.confinement = float(confinement)

    def forward(self, x: Tensor) -> Tensor:
        """Energy of each row, shape ``x.shape[:-1]``."""
        return self.net(x).squeeze(-1) + 0.5 * self.confinement * (x * x).sum(-1)


class MLPEnergy(FunctionEnergy):
    """The data distribution ``q(x) ∝ exp(-EnergyMLP(x))``; scores come from autodiff.

    Register the network with ``pyro.module`` inside the model so SVI trains it::

        net = EnergyMLP(5)
        def model(x):
            pyro.module("energy", net)
            with pyro.plate("rows", x.shape[0]):
                pyro_msm.observe("x", MLPEnergy(net), obs=x)

    :param network: an :class:`EnergyMLP` (or any module mapping ``(..., d)`` to ``(...)``
        with a ``dim`` attribute).
    """

    def __init__(self, network: nn.Module, **kwargs) -> None:
        dim = getattr(network, "dim", None)
        if dim is None:
            raise TypeError("MLPEnergy: the network needs a `dim` attribute")
        super().__init__(network, dim, **kwargs)
        self.network = network
