"""The README's example runs as printed and does what it says."""

import re
from pathlib import Path

import pyro
import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs_and_fits():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README has no python example"
    namespace: dict = {}
    exec(compile(blocks[0], str(README), "exec"), namespace)
    ess = namespace["loss"].diagnostics["ess"]
    assert 1.0 <= ess <= 10.0
    # the fit moved towards the data: the fitted covariance's diagonal is near the data's
    tril = pyro.param("tril").detach()
    fitted_cov = torch.linalg.inv(tril @ tril.T)
    x = namespace["x"]
    m = ~torch.isnan(x)
    var = torch.stack([x[m[:, j], j].var() for j in range(4)])
    torch.testing.assert_close(torch.diagonal(fitted_cov), var, rtol=0.25, atol=0)


def test_readme_starts_with_the_two_commands():
    head = README.read_text().splitlines()[:20]
    assert any("pyro-msm demo" in line and "torch==2.13.0" in line for line in head)
    assert any("pytest" in line and "torch==2.13.0" in line for line in head)
    ci = (README.parent / ".ci" / "run").read_text()
    assert 'pip install -q -e ".[test]"' in ci and "pytest -q" in ci
