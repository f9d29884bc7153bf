"""Tables larger than memory: rows streamed from CSV or Parquet in chunks.

- :func:`read_chunks` yields a file's rows chunk by chunk as float tensors (NaN = missing),
  each rank of a :mod:`torch.distributed` job (and each DataLoader worker) taking every
  ``k``-th chunk.
- :class:`TableStream` is the same as a :class:`torch.utils.data.IterableDataset` of minibatches
  for subsampled SVI steps (``pyro.plate(..., size=num_rows, subsample=...)`` scales them).
- :class:`StreamedTable` and :func:`streamed_em_path` fit a sparse Gaussian graph by EM score
  matching with one pass over the file per EM iteration; the E-step's sums are all-reduced.
- :class:`MomentAccumulator` sums the sufficient statistics of pairwise-available means and
  covariances over chunks and ranks; its result equals
  :func:`pyro_msm.infer.gaussian.pairwise_moments` on the whole table.

Parquet needs ``pyarrow`` (the ``stream`` extra); CSV needs ``pandas``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import IterableDataset, get_worker_info

from . import distributed
from .infer.gaussian import expected_statistics, nearest_positive_definite
from .tables import as_table

__all__ = [
    "read_chunks",
    "count_rows",
    "TableStream",
    "MomentAccumulator",
    "StreamedTable",
    "streamed_em_path",
]

_PARQUET = (".parquet", ".pq")


def _is_parquet(path: Path) -> bool:
    return path.suffix.lower() in _PARQUET


def _check_path(path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such table file: {path}")
    return path


def _frames(
    path: Path, chunk_size: int, columns: Sequence[str] | None, missing: Sequence[str]
) -> Iterator:
    """pandas DataFrames of at most ``chunk_size`` rows, in file order."""
    if _is_parquet(path):
        try:
            import pyarrow.parquet as pq
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError(
                "reading Parquet needs pyarrow: pip install 'pyro-msm[stream]'"
            ) from err
        reader = pq.ParquetFile(path)
        for batch in reader.iter_batches(batch_size=chunk_size, columns=columns):
            yield batch.to_pandas()
        return
    import pandas as pd

    yield from pd.read_csv(
        path,
        chunksize=chunk_size,
        usecols=list(columns) if columns is not None else None,
        na_values=list(missing) or None,
    )


def _slots() -> tuple[int, int]:
    """This reader's slot among ``ranks x DataLoader workers``: ``(slot, count)``."""
    here = distributed.world()
    info = get_worker_info()
    workers, worker = (1, 0) if info is None else (info.num_workers, info.id)
    return here.rank * workers + worker, here.size * workers


def read_chunks(
    path: str | os.PathLike[str],
    *,
    chunk_size: int = 65536,
    columns: Sequence[str] | None = None,
    missing: Sequence[str] = (),
    dtype: torch.dtype | None = None,
    sharded: bool = True,
) -> Iterator[Tensor]:
    """Rows of a CSV or Parquet file, ``chunk_size`` at a time, as ``(m, d)`` tensors.

    Missing entries (empty cells, ``NA``, the ``missing`` markers) are NaN. With ``sharded``
    (default) and several ranks or DataLoader workers, reader ``s`` of ``k`` yields chunks
    ``s, s + k, s + 2k, ...``, so every chunk is read by exactly one of them.

    :param path: ``.csv`` (optionally compressed, as pandas reads it) or ``.parquet``.
    :param chunk_size: rows per chunk.
    :param columns: columns to read (default: all); all must be numeric.
    :param missing: extra strings that mark a missing entry in a CSV (e.g. ``["?", "-999"]``).
    :param dtype: floating dtype of the tensors (default: torch's default dtype).
    :param sharded: split the chunks among ranks and workers.
    :raises FileNotFoundError: for a missing file. :raises TypeError: for text columns.
    """
    path = _check_path(path)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    slot, count = _slots() if sharded else (0, 1)
    for i, frame in enumerate(_frames(path, chunk_size, columns, missing)):
        if i % count == slot:
            values, _ = as_table(frame, name=str(path), dtype=dtype)
            yield values


def count_rows(path: str | os.PathLike[str], *, chunk_size: int = 65536) -> int:
    """Number of data rows of a CSV or Parquet file (Parquet: from its metadata)."""
    path = _check_path(path)
    if _is_parquet(path):
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(path).metadata.num_rows)
    return sum(len(f) for f in _frames(path, chunk_size, None, ()))


class TableStream(IterableDataset):
    """Minibatches of a table read from disk chunk by chunk, never all in memory.

    Each chunk (of ``chunk_size`` rows) is shuffled (seeded by ``seed`` and the epoch) and cut
    into minibatches of ``batch_size`` rows; a rank or DataLoader worker reads every ``k``-th
    chunk (:func:`read_chunks`). Use it with ``DataLoader(stream, batch_size=None)``. Call
    :meth:`set_epoch` before each epoch for a new order.

    :param path: CSV or Parquet file.
    :param batch_size: rows per minibatch.
    :param chunk_size: rows read at once (memory is about ``chunk_size * d`` floats).
    :param columns: columns to read. :param missing: extra missing markers (CSV).
    :param dtype: floating dtype. :param shuffle: shuffle rows within each chunk.
    :param drop_last: drop a chunk's last minibatch when it is short.
    :param seed: shuffling seed.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        batch_size: int,
        *,
        chunk_size: int = 65536,
        columns: Sequence[str] | None = None,
        missing: Sequence[str] = (),
        dtype: torch.dtype | None = None,
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.path = _check_path(path)
        self.batch_size = int(batch_size)
        self.chunk_size = int(chunk_size)
        self.columns = columns
        self.missing = tuple(missing)
        self.dtype = dtype
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use a different shuffling order for this epoch."""
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[Tensor]:
        chunks = read_chunks(
            self.path,
            chunk_size=self.chunk_size,
            columns=self.columns,
            missing=self.missing,
            dtype=self.dtype,
        )
        for i, chunk in enumerate(chunks):
            if self.shuffle:
                g = torch.Generator().manual_seed(hash((self.seed, self.epoch, i)) % 2**62)
                chunk = chunk[torch.randperm(chunk.shape[0], generator=g)]
            for start in range(0, chunk.shape[0], self.batch_size):
                batch = chunk[start : start + self.batch_size]
                if self.drop_last and batch.shape[0] < self.batch_size:
                    break
                yield batch


class MomentAccumulator:
    """Sufficient statistics of pairwise-available means and covariances, summed over chunks
    (:meth:`update`) and ranks (:meth:`all_reduce`).

    For column means :math:`\\bar x_j` over each column's observed entries and, for each pair,
    the rows where both are observed (count :math:`N_{jk}`), the covariance is
    :math:`\\sum_i m_{ij} m_{ik} (x_{ij} - \\bar x_j)(x_{ik} - \\bar x_k) / (N_{jk} - 1)`,
    expanded into sums that add over chunks. Statistics are kept in float64 about a shift (the
    first chunk's column means) against cancellation. :meth:`moments` equals
    :func:`~pyro_msm.infer.gaussian.pairwise_moments` on the concatenated rows.

    :param dim: number of columns.
    :param device: where the statistics live (default: the device of the first rows added).
    """

    def __init__(self, dim: int, device: torch.device | str | None = None) -> None:
        self.dim = int(dim)
        self.shift: Tensor | None = None
        self.rows = 0
        self._allocate(device)

    def _allocate(self, device: torch.device | str | None) -> None:
        kw = {"dtype": torch.float64, "device": device}
        self.count = torch.zeros(self.dim, **kw)  # observed entries per column
        self.total = torch.zeros(self.dim, **kw)  # sum of shifted observed entries
        self.pairs = torch.zeros(self.dim, self.dim, **kw)  # N_jk
        self.cross = torch.zeros(self.dim, self.dim, **kw)  # sum_i m_ij m_ik y_ij y_ik
        self.partial = torch.zeros(self.dim, self.dim, **kw)  # sum_i m_ij m_ik y_ij
        self._placed = device is not None

    def update(self, x: Tensor, mask: Tensor | None = None) -> MomentAccumulator:
        """Add rows ``x`` ``(m, d)`` (NaN = missing, or give the boolean ``mask``). Without a
        ``device`` the statistics live on the first rows' device."""
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected rows of shape (m, {self.dim}), got {tuple(x.shape)}")
        if not self._placed and self.shift is None:
            self._allocate(x.device)
        mask = ~torch.isnan(x) if mask is None else mask.to(torch.bool)
        x = x.to(device=self.count.device, dtype=torch.float64)
        mask = mask.to(self.count.device)
        if self.shift is None:
            n_obs = mask.sum(0)
            filled = torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))
            self.shift = torch.where(n_obs > 0, filled.sum(0) / n_obs.clamp(min=1), 0.0)
        m = mask.to(torch.float64)
        y = torch.where(mask, x - self.shift, torch.zeros((), dtype=x.dtype, device=x.device))
        self.count += m.sum(0)
        self.total += y.sum(0)
        self.pairs += m.T @ m
        self.cross += y.T @ y
        self.partial += y.T @ m
        self.rows += int(x.shape[0])
        return self

    def all_reduce(self) -> MomentAccumulator:
        """Sum the statistics over ranks (no-op in one process). The shift is rank 0's."""
        if not distributed.is_distributed():
            return self
        if self.shift is None:
            raise RuntimeError("all_reduce before any update on this rank")
        # put every rank's statistics about rank 0's shift, then sum
        shift0 = distributed.broadcast(self.shift.clone())
        delta = self.shift - shift0  # y0 = y + delta on observed entries
        self.cross += (
            self.partial * delta.unsqueeze(0)
            + (self.partial * delta.unsqueeze(0)).T
            + self.pairs * torch.outer(delta, delta)
        )
        self.partial += self.pairs * delta.unsqueeze(-1)
        self.total += self.count * delta
        self.shift = shift0
        rows = torch.tensor([float(self.rows)], dtype=torch.float64, device=self.count.device)
        for stat in (self.count, self.total, self.pairs, self.cross, self.partial, rows):
            distributed.all_reduce_sum(stat)
        self.rows = int(rows.item())
        return self

    def moments(
        self, dtype: torch.dtype | None = None, min_eigenvalue: float = 1e-3
    ) -> tuple[Tensor, Tensor]:
        """``(mean (d,), covariance (d, d))`` as :func:`pairwise_moments` gives them, projected
        to positive definite; a column or pair with too few observations falls back to mean 0,
        variance 1, covariance 0.

        :param dtype: result dtype (default torch's default dtype).
        """
        if self.shift is None:
            raise RuntimeError("no rows were added")
        dtype = dtype or torch.get_default_dtype()
        count = self.count.clamp(min=1)
        centre = self.total / count  # mean of shifted entries
        mean = torch.where(self.count > 0, self.shift + centre, torch.zeros_like(centre))
        # sum m_j m_k (y_j - c_j)(y_k - c_k) with c the shifted column means
        scatter = (
            self.cross
            - centre.unsqueeze(-1) * self.partial.T
            - centre.unsqueeze(0) * self.partial
            + self.pairs * torch.outer(centre, centre)
        )
        cov = scatter / (self.pairs - 1).clamp(min=1)
        eye = torch.eye(self.dim, dtype=cov.dtype, device=cov.device)
        cov = torch.where(self.pairs > 1, cov, eye)
        cov = nearest_positive_definite(cov, min_eigenvalue)
        return mean.to(dtype), cov.to(dtype)

    def observed_mean_variance(self) -> tuple[Tensor, Tensor]:
        """Each column's mean and variance over its observed entries (variance normalised by
        the count), float64."""
        if self.shift is None:
            raise RuntimeError("no rows were added")
        count = self.count.clamp(min=1)
        centre = self.total / count
        return self.shift + centre, torch.diagonal(self.cross) / count - centre * centre


class StreamedTable:
    """A CSV or Parquet table read chunk by chunk (:func:`read_chunks`, sharded over ranks),
    with the reductions the graph estimator needs; every result is all-reduced over ranks, so
    all ranks get the statistics of the whole table.

    :param path: the file. :param chunk_size: rows per chunk.
    :param columns: columns to use. :param missing: extra missing markers (CSV).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        chunk_size: int = 65536,
        columns: Sequence[str] | None = None,
        missing: Sequence[str] = (),
    ) -> None:
        self.path = _check_path(path)
        self.chunk_size = int(chunk_size)
        self.columns = columns
        self.missing = tuple(missing)

    def chunks(self) -> Iterator[Tensor]:
        """This rank's chunks, float64, NaN = missing."""
        return read_chunks(
            self.path,
            chunk_size=self.chunk_size,
            columns=self.columns,
            missing=self.missing,
            dtype=torch.float64,
        )

    def moments(self) -> MomentAccumulator:
        """One pass: the table's :class:`MomentAccumulator`, reduced over ranks."""
        acc: MomentAccumulator | None = None
        for chunk in self.chunks():
            acc = (acc or MomentAccumulator(chunk.shape[1])).update(chunk)
        if acc is None:
            raise ValueError(f"{self.path}: no rows on this rank")
        return acc.all_reduce()

    def expected_statistics(self, loc: Tensor, precision: Tensor) -> tuple[Tensor, Tensor]:
        """One pass: the E-step of EM for :math:`N(\\mu, P^{-1})` over the whole table
        (:func:`~pyro_msm.infer.gaussian.expected_statistics` summed over chunks and ranks):
        the completed rows' mean and expected centred Gram matrix :math:`S`."""
        d = loc.shape[-1]
        kw = {"dtype": torch.float64, "device": loc.device}
        rows = torch.zeros(1, **kw)
        first = torch.zeros(d, **kw)
        second = torch.zeros(d, d, **kw)
        for chunk in self.chunks():
            chunk = chunk.to(loc.device)
            mask = ~torch.isnan(chunk)
            x = torch.where(mask, chunk, torch.zeros((), **kw))
            _, mean, s = expected_statistics(x, mask, loc, precision)
            n = chunk.shape[0]
            rows += n
            first += n * mean
            second += n * (s + torch.outer(mean, mean))
        for stat in (rows, first, second):
            distributed.all_reduce_sum(stat)
        mean = first / rows
        s = second / rows - torch.outer(mean, mean)
        return mean, 0.5 * (s + s.T)


def streamed_em_path(
    table: StreamedTable,
    penalties: Sequence[float] | Tensor | None = None,
    *,
    num_penalties: int = 30,
    penalty_ratio: float = 0.01,
    tol: float = 1e-4,
    max_iter: int = 500,
    progress: bool | None = False,
):
    """The EM score-matching graph path (:func:`pyro_msm.graphical.em_path`) of a table that is
    read from disk once per EM iteration and never held in memory (memory: one chunk plus
    ``d x d`` statistics). Under ``torchrun`` each rank reads its share of the chunks and the
    E-step's sums are all-reduced, so every rank follows the same path.

    The start and the default grid are those of :func:`~pyro_msm.graphical.em_path`: the
    diagonal fixed point (observed means and variances) and its empty-graph penalty.

    :param table: a :class:`StreamedTable`.
    :returns: a :class:`~pyro_msm.graphical.PenaltyPath` (equal to ``em_path`` on the same rows
        up to floating-point summation order).
    """
    from .graphical.exact import em_path_from
    from .graphical.quadratic import max_penalty, penalty_grid

    acc = table.moments()
    loc, var = acc.observed_mean_variance()
    if not bool((var > 0).all()):
        cols = torch.nonzero(var <= 0).flatten().tolist()
        raise ValueError(f"columns {cols} are constant on their observed entries; drop them")
    precision = torch.diag(1.0 / var)
    if penalties is None:
        _, s = table.expected_statistics(loc, precision)
        grid = penalty_grid(max_penalty(s), num_penalties, penalty_ratio)
    else:
        grid = torch.as_tensor(penalties, dtype=torch.float64).flatten()
    complete = bool((acc.count == acc.rows).all())
    return em_path_from(
        table.expected_statistics, grid, loc, precision, complete=complete, tol=tol,
        max_iter=max_iter, progress=progress,
    )  # fmt: skip
