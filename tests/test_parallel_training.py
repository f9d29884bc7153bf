"""PyroModule models, the Lightning module, and training on streamed minibatches."""

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from pyro_msm import MissingScoreMatching
from pyro_msm.modules import GaussianModel, MLPModel


def _gaussian_rows(n=400, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.tensor([[1.0, 0.0, 0.0], [0.5, 1.0, 0.0], [0.0, -0.4, 0.8]], dtype=torch.float64)
    return torch.randn(n, 3, generator=g, dtype=torch.float64) @ a.T + torch.tensor(
        [1.0, -1.0, 0.5], dtype=torch.float64
    )


def test_module_parameters_are_the_models():
    model = GaussianModel(3, dtype=torch.float64)
    loss = MissingScoreMatching()(model, lambda *a, **k: None)
    names = sorted(n for n, _ in loss.named_parameters())
    assert names == ["model.loc_unconstrained", "model.precision_tril_unconstrained"]
    assert len(list(MissingScoreMatching()(MLPModel(3, (4,)), lambda *a, **k: None).parameters()))


def test_num_rows_scales_a_minibatch_like_a_subsampled_plate():
    x = _gaussian_rows(40)
    model = GaussianModel(3, dtype=torch.float64)
    loss = MissingScoreMatching("closed_form")(model, lambda *a, **k: None)
    whole = loss(x[:10])
    assert torch.allclose(loss(x[:10], num_rows=40), 4 * whole)
    with pytest.raises(ValueError, match="num_rows"):
        loss(x[:10], num_rows=5)


def test_lightning_fit_reaches_the_complete_data_estimate():
    lightning = pytest.importorskip("lightning")
    from pyro_msm.lightning import ScoreMatchingModule

    torch.manual_seed(0)
    x = _gaussian_rows()
    model = GaussianModel(3, dtype=torch.float64)
    module = ScoreMatchingModule(model, loss=MissingScoreMatching("closed_form"), lr=0.05)
    trainer = lightning.Trainer(
        max_epochs=300,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    loader = DataLoader(TensorDataset(x), batch_size=len(x))
    trainer.fit(module, loader)
    # complete-data Gaussian score matching is solved by the sample mean and inverse covariance
    mean = x.mean(0)
    precision = torch.linalg.inv(torch.cov(x.T, correction=0))
    with torch.no_grad():
        assert torch.allclose(model.loc, mean, atol=2e-2)
        assert torch.allclose(model.precision, precision, atol=5e-2)
