"""Teacher embeddings, their k-means clusters and the frozen teacher classifier.

A teacher maps each spot's expression to an embedding. Two sources:

* ``builtin``: PCA of log-normalised expression, ``log1p(counts / total · 1e4)`` over all
  genes, fitted on the training spots of each fold.
* ``file``: embeddings computed elsewhere (e.g. scFoundation or scGPT), from an ``.h5ad``
  ``obsm`` key (rows = barcodes) or a parquet keyed by a ``barcode`` column (other numeric
  columns are the embedding). ``path`` may contain ``{sample}``; a single file for all samples
  needs a ``sample`` column (parquet) or ``obs["sample"]`` (h5ad).

As released, PEKA clusters the teacher embeddings with k-means (K = 100) and trains an MLP
``teacher_dim → 512 → 512 → K`` on embedding → cluster with cross-entropy, then freezes it.
Here both are fitted on the training spots of a fold only.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from histofuse.errors import HistofuseError

if TYPE_CHECKING:
    from histofuse.settings import Teacher


def log_normalise(counts: np.ndarray) -> np.ndarray:
    """``log1p(counts / total · 1e4)`` per spot over all genes (zero-count spots stay zero)."""
    total = counts.sum(axis=1, keepdims=True)
    scale = np.where(total > 0, 1e4 / np.maximum(total, 1e-12), 0.0)
    return np.log1p(counts * scale)


def builtin_teacher(counts: np.ndarray, train: np.ndarray, dim: int, seed: int) -> np.ndarray:
    """The built-in teacher: PCA of log-normalised expression, fitted on ``train`` rows.

    Args:
        counts: Raw counts, spots × all genes.
        train: Training rows.
        dim: Embedding size (clipped to what the training rows allow).
        seed: PCA seed.

    Returns:
        Embeddings (spots × dim) as float32.
    """
    from sklearn.decomposition import PCA

    x = log_normalise(counts)
    n = int(min(dim, len(train) - 1, x.shape[1]))
    pca = PCA(n_components=n, random_state=seed).fit(x[train])
    return pca.transform(x).astype(np.float32)


def read_teacher_file(teacher: Teacher, samples: np.ndarray, barcodes: np.ndarray) -> np.ndarray:
    """Reads teacher embeddings from a file, in the order of (samples, barcodes).

    Args:
        teacher: The teacher settings (``path``, and ``key`` for an ``.h5ad``).
        samples: Sample of each spot.
        barcodes: Barcode of each spot.

    Raises:
        HistofuseError: If the file is missing or unreadable, the key is absent, or a spot has
            no embedding.
    """
    path_t = teacher.path
    if not path_t:
        raise HistofuseError("config `peka.teacher.path` is required with `source: file`")
    out: list[pd.DataFrame] = []
    per_sample = "{sample}" in str(path_t)
    paths = (
        {s: Path(str(path_t).format(sample=s)) for s in pd.unique(samples)}
        if per_sample
        else {None: Path(path_t)}
    )
    for sample, path in paths.items():
        table = _read_embedding_table(path, teacher.key)
        if sample is not None:
            table.insert(0, "sample", sample)
        elif "sample" not in table:
            raise HistofuseError(
                f"teacher file {path} serves all samples but has no `sample` column; add one or "
                "put `{sample}` into `peka.teacher.path`"
            )
        out.append(table)
    table = pd.concat(out, ignore_index=True)
    table["sample"] = table["sample"].astype(str)
    table["barcode"] = table["barcode"].astype(str)
    table = table.set_index(["sample", "barcode"])
    want = pd.MultiIndex.from_arrays([samples.astype(str), barcodes.astype(str)])
    pos = table.index.get_indexer(want)
    if (pos < 0).any():
        i = int(np.flatnonzero(pos < 0)[0])
        raise HistofuseError(
            f"teacher embeddings ({path_t}) lack {(pos < 0).sum()} spots, e.g. sample "
            f"{want[i][0]!r} barcode {want[i][1]!r}; compute embeddings for every spot"
        )
    return table.to_numpy(dtype=np.float32)[pos]


def _read_embedding_table(path: Path, key: str | None) -> pd.DataFrame:
    """One embedding file as a table: ``barcode``, optional ``sample``, then the dimensions."""
    if not path.is_file():
        raise HistofuseError(f"teacher file {path} does not exist; fix `peka.teacher.path`")
    if path.suffix == ".h5ad":
        import anndata

        try:
            adata = anndata.read_h5ad(path)
        except Exception as exc:
            raise HistofuseError(f"teacher file {path} is not a readable .h5ad: {exc}") from exc
        if not key or key not in adata.obsm:
            raise HistofuseError(
                f"teacher file {path} has no obsm key {key!r} (it has {sorted(adata.obsm)}); "
                "set `peka.teacher.key`"
            )
        emb = np.asarray(adata.obsm[key], dtype=np.float32)
        table = pd.DataFrame(emb, columns=[f"t{i}" for i in range(emb.shape[1])])
        table.insert(0, "barcode", adata.obs_names.astype(str))
        if "sample" in adata.obs:
            table.insert(0, "sample", adata.obs["sample"].astype(str).to_numpy())
        return table
    if path.suffix == ".parquet":
        table = pd.read_parquet(path)
        if "barcode" not in table:
            raise HistofuseError(f"teacher file {path} has no `barcode` column")
        dims = [c for c in table.columns if c not in ("barcode", "sample")]
        bad = [c for c in dims if not pd.api.types.is_numeric_dtype(table[c])]
        if bad or not dims:
            raise HistofuseError(
                f"teacher file {path}: columns other than barcode/sample must be the numeric "
                f"embedding (non-numeric: {bad[:3]})"
            )
        return table[[c for c in ("sample", "barcode") if c in table] + dims]
    raise HistofuseError(f"teacher file {path}: use an .h5ad (with `key`) or a .parquet")


class TeacherClassifier:
    """K-means clusters of teacher embeddings and the MLP classifier trained on them.

    Fitted on training spots only; afterwards the MLP (``teacher_dim → hidden → hidden → K``)
    is frozen and scores both teacher and student embeddings.

    Args:
        n_clusters: K (PEKA: 100), clipped to the number of training spots.
        hidden: MLP width (PEKA: 512).
        epochs: Training epochs of the MLP (PEKA: 20).
        lr: Adam learning rate (PEKA: 1e-4).
        batch_size: Mini-batch size.
        seed: Seed of k-means and the MLP.
    """

    def __init__(
        self,
        n_clusters: int = 100,
        hidden: int = 512,
        epochs: int = 20,
        lr: float = 1e-4,
        batch_size: int = 32,
        seed: int = 42,
    ) -> None:
        self.n_clusters = n_clusters
        self.hidden = hidden
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.seed = seed

    def fit(self, emb: np.ndarray) -> TeacherClassifier:
        """Clusters the (training) teacher embeddings and trains the classifier on them."""
        import torch
        from sklearn.cluster import KMeans
        from torch import nn

        k = int(min(self.n_clusters, len(emb)))
        self.kmeans_ = KMeans(n_clusters=k, n_init=1, random_state=self.seed).fit(emb)
        self.labels_ = self.kmeans_.labels_.astype(np.int64)
        g = torch.Generator().manual_seed(self.seed)
        torch.manual_seed(self.seed)
        d = emb.shape[1]
        self.model_ = nn.Sequential(
            nn.Linear(d, self.hidden),
            nn.ReLU(),
            nn.Linear(self.hidden, self.hidden),
            nn.ReLU(),
            nn.Linear(self.hidden, k),
        )
        opt = torch.optim.Adam(self.model_.parameters(), lr=self.lr)
        x = torch.as_tensor(emb, dtype=torch.float32)
        y = torch.as_tensor(self.labels_)
        for _ in range(self.epochs):
            for idx in torch.randperm(len(x), generator=g).split(self.batch_size):
                loss = nn.functional.cross_entropy(self.model_(x[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        self.model_.eval()
        for p in self.model_.parameters():
            p.requires_grad_(False)
        with torch.no_grad():
            self.accuracy_ = float((self.model_(x).argmax(1) == y).float().mean())
        return self
