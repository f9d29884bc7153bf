"""Sphinx configuration of the pyro_msm documentation.

Build: ``python -m sphinx -W -b html docs docs/_build/html`` (after ``pip install -e ".[docs]"``).

The tutorials in ``tutorials/`` are rendered by sphinx-gallery into ``docs/tutorials/``
(generated, not committed) and *executed* during the build, so their pages show printed
output and figures. ``PYRO_MSM_DOCS_EXECUTE`` chooses the sizes:

- ``smoke`` (default): the tutorials' tiny sizes (``PYRO_MSM_SMOKE=1``); the whole build
  takes a few minutes on 2 CPU cores;
- ``full``: the sizes printed in each tutorial (several minutes each);
- ``0``: render the code without running it (fastest; no outputs or figures).
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pyro_msm  # noqa: E402

project = "pyro_msm"
author = "pyro_msm developers"
copyright = "pyro_msm developers"
version = release = pyro_msm.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "myst_parser",
    "sphinx_gallery.gen_gallery",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = [
    "_build",
    "tutorials/*.ipynb",
    "tutorials/*.py",
    "tutorials/*.zip",
    "tutorials/*.md5",
    "tutorials/*.pickle",
    "tutorials/*.codeobj.json",
]
root_doc = "index"

# -- Markdown (myst) ---------------------------------------------------------------------------
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3

# -- API reference ------------------------------------------------------------------------------
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_default_options = {"members": True, "show-inheritance": True}
autosummary_generate = False
python_use_unqualified_type_names = True


def _canonical(target: str) -> str | None:
    """``pyro_msm.infer.MissingScoreMatching`` -> the module path where it is documented,
    ``pyro_msm.infer.score_matching.MissingScoreMatching``; None when not a pyro_msm object."""
    if not target.startswith("pyro_msm."):
        return None
    module_name, _, attribute = target.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    obj = getattr(module, attribute, None)
    home = getattr(obj, "__module__", None)
    name = getattr(obj, "__qualname__", attribute)
    if home is None or home == module_name:
        return None
    return f"{home}.{name}"


def _resolve_public_paths(app, env, node, contnode):
    """Docstrings refer to objects by their public path (``pyro_msm.observe``,
    ``pyro_msm.guides.AmortizedNormal``); the reference documents them where they are defined.
    Resolve the former to the latter."""
    if node.get("refdomain") != "py":
        return None
    canonical = _canonical(node.get("reftarget", ""))
    if canonical is None:
        return None
    domain = env.get_domain("py")
    node["reftarget"] = canonical
    return domain.resolve_xref(
        env, node["refdoc"], app.builder, node["reftype"], canonical, node, contnode
    )


def setup(app):
    app.connect("missing-reference", _resolve_public_paths)


# -- Tutorials (sphinx-gallery) -----------------------------------------------------------------
_mode = os.environ.get("PYRO_MSM_DOCS_EXECUTE", "smoke").strip().lower()
if _mode not in ("smoke", "full", "0"):
    raise ValueError(f"PYRO_MSM_DOCS_EXECUTE must be smoke, full or 0, got {_mode!r}")
_execute = _mode != "0"
if _mode == "smoke":
    # the tutorials read this when sphinx-gallery runs them, in this process
    os.environ["PYRO_MSM_SMOKE"] = "1"
elif _mode == "full":
    os.environ.pop("PYRO_MSM_SMOKE", None)
sphinx_gallery_conf = {
    "examples_dirs": str(ROOT / "tutorials"),
    "gallery_dirs": "tutorials",
    "filename_pattern": r"/t\d\d_",
    "plot_gallery": _execute,
    "within_subsection_order": "FileNameSortKey",
    "download_all_examples": False,
    "remove_config_comments": True,
    "write_computation_times": _execute,
    "show_signature": False,
}

# -- HTML --------------------------------------------------------------------------------------
html_theme = "furo"
html_title = f"pyro_msm {release}"
html_static_path: list[str] = []
