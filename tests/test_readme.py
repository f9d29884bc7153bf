"""The README's example runs as printed, prints what the README says it prints, and recovers
the truth it is fitted to."""

import contextlib
import io
import re
from pathlib import Path

import pyro
import torch

README = Path(__file__).resolve().parents[1] / "README.md"
NUMBER = re.compile(r"-?\d+\.\d+")


def _run_example():
    text = README.read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "the README has no python example"
    printed = re.findall(r"It prints.*?```text\n(.*?)```", text, flags=re.S)
    assert printed, "the README does not show the example's output"
    namespace: dict = {}
    threads = torch.get_num_threads()
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(blocks[0], str(README), "exec"), namespace)
    finally:
        torch.set_num_threads(threads)
    return namespace, out.getvalue(), printed[0]


def test_readme_example_prints_what_the_readme_shows_and_recovers_the_truth():
    namespace, output, shown = _run_example()
    # the same lines with the numbers blanked out ...
    assert NUMBER.sub("#", output).split() == NUMBER.sub("#", shown).split(), output
    # ... and the same numbers, up to a last-digit difference (other platforms' arithmetic)
    got = [float(v) for v in NUMBER.findall(output)]
    want = [float(v) for v in NUMBER.findall(shown)]
    assert len(got) == len(want), output
    assert max(abs(a - b) for a, b in zip(got, want, strict=True)) <= 0.02, output
    # the fit is near the truth it prints: mean within 0.15, precision diagonal within 15%
    problem = namespace["problem"]
    loc = pyro.param("loc").detach().double()
    tril = pyro.param("tril").detach().double()
    assert float((loc - problem.loc).abs().max()) < 0.15
    rel = ((tril @ tril.T).diagonal() - problem.precision.diagonal()).abs()
    assert float((rel / problem.precision.diagonal()).max()) < 0.15
    # and the verdict on the ESS follows the rule the README states (good at r/2 or more)
    ess = namespace["loss"].diagnostics["ess"]
    assert 1.0 <= ess <= 10.0
    assert output.strip().endswith("good") == (ess >= 5)


def test_readme_starts_with_the_two_commands():
    head = README.read_text().splitlines()[:20]
    assert any("pyro-msm demo" in line and "torch==2.13.0" in line for line in head)
    assert any("pytest" in line and "torch==2.13.0" in line for line in head)
    ci = (README.parent / ".ci" / "run").read_text()
    assert 'pip install -q -e ".[test]"' in ci and "pytest -q" in ci
