"""Candidates for large catalogues: an inverted-file index proposes, the scoring rule decides.

Scoring every item costs a matrix product and a top-K over the catalogue per
user: about 1.5 ms at 100,000 items on one core here and 20-28 ms at a
million (`bench/ann_bench.py`). Above ``--ann-above`` items the encoder asks a
faiss index (inner product) for each user's best ``--ann-candidates`` items
plus as many as the user has seen, and then scores only those with the full
rule of `encoders.interests` (blend, category lift, seen items left out),
exactly as the scan would. The category term enters the index too: each
item carries its category shares as extra dimensions and each query the
user's lift per category (exact for single-category items, so candidates are
not lost to it); both are scaled so that the index's clusters follow the
item vectors.

Why an inverted file (IVF: k-means lists, exact inner products inside the
``--ann-probe`` lists nearest the query) and not a graph: on these
embeddings it found more of the exact top-10 for the time, and it builds in
a minute, not minutes. Through the worker's rule (`bench/ann_bench.py`, one
core, a million items, 4,096 lists): 128 lists probed gave recall@10 0.999
at 1.86 ms per user on ML-1M's trained table grown to a million items (ML-1M
users as queries), and 0.958 at 1.99 ms on harder synthetic vectors, where
faiss's HNSW (M=32, efSearch 256) gave 0.652 and took three times as long
to build. The exact scan takes 20-28 ms per user there.

A built index is saved in ``cache_dir`` under the model version, so a
restart or another worker on the same machine loads it instead.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path

import numpy as np

__all__ = ["CandidateIndex"]

log = logging.getLogger("interest_updater.retrieval")

_CATEGORY_SCALE = 0.05  # the category dimensions' weight in the index (the query's is divided by it)
_TRAIN_PER_LIST = 64  # k-means sample: points per list


class CandidateIndex:
    """An inner-product index over the item table (rows ``first_row`` onwards), with category dimensions.

    ``kind`` is "ivf" (the default, see the module docstring) or "hnsw" (for comparison).

    >>> index = CandidateIndex(table, item_categories, first_row=2, probe=128)  # doctest: +SKIP
    >>> rows = index.candidates(queries, category_terms, k=250)                 # [B, k], -1 where none
    """

    def __init__(self, table: np.ndarray, categories: np.ndarray | None, first_row: int, *, probe: int = 128,
                 kind: str = "ivf", cache_dir: str | Path | None = None, version: str = "",
                 build_threads: int = 2) -> None:
        import faiss

        if kind not in ("ivf", "hnsw"):
            raise ValueError(f"index kind {kind!r}: expected ivf or hnsw")
        self.first_row, self.probe, self.kind = first_row, probe, kind
        self.n_categories = 0 if categories is None else categories.shape[1]
        self._table, self._categories = table, categories  # references: re-added items' vectors come from them
        self.excluded = np.empty(0, dtype=np.int64)  # rows taken out of the index (`exclude`)
        vectors = self._vectors(np.arange(first_row, len(table)))
        name = f"{kind}-{version}-{len(vectors)}-{vectors.shape[1]}.faiss"
        path = Path(cache_dir).expanduser() / name if cache_dir and version else None
        if path is not None and path.is_file():
            self.index = faiss.read_index(str(path))
            log.info("loaded the candidate index of %d items from %s", len(vectors), path)
            return
        started = time.monotonic()
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(build_threads)
        try:
            self.index = self._build(faiss, vectors)
        finally:
            faiss.omp_set_num_threads(threads)
        log.info("built the %s candidate index of %d items in %.0fs", kind, len(vectors), time.monotonic() - started)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(f".{os.getpid()}.partial")  # one per process
            faiss.write_index(self.index, str(partial))
            partial.replace(path)  # another worker never reads a half-written index

    def _vectors(self, rows: np.ndarray) -> np.ndarray:
        """The indexed vectors of item ``rows``: the item's embedding, then its scaled category shares."""
        vectors = self._table[rows].astype(np.float32)
        if self.n_categories:
            vectors = np.hstack([vectors, _CATEGORY_SCALE * self._categories[rows].astype(np.float32)])
        return np.ascontiguousarray(vectors)

    @property
    def can_exclude(self) -> bool:
        """Whether `exclude` takes items out of the index (IVF), or callers must mask them (HNSW)."""
        return self.kind == "ivf"

    def exclude(self, rows: np.ndarray) -> None:
        """Never propose item ``rows`` (sorted, unique); rows excluded before and not now are proposed again.

        Unavailable items leave the index rather than taking candidate slots
        from the items that can be recommended.
        """
        if not self.can_exclude:
            return
        rows = np.asarray(rows, dtype=np.int64)
        leaving, returning = np.setdiff1d(rows, self.excluded), np.setdiff1d(self.excluded, rows)
        if len(leaving):
            self.index.remove_ids(leaving - self.first_row)
        if len(returning):
            self.index.add_with_ids(self._vectors(returning), returning - self.first_row)
        self.excluded = rows

    def _build(self, faiss, vectors: np.ndarray):
        dim = vectors.shape[1]
        if self.kind == "hnsw":
            index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = 80
            index.add(vectors)
            return index
        lists = max(1, min(len(vectors) // 39, 2 ** round(math.log2(4 * math.sqrt(len(vectors))))))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(0)
        sample = vectors[rng.choice(len(vectors), min(len(vectors), _TRAIN_PER_LIST * lists), replace=False)]
        index.train(sample)
        index.add(vectors)
        return index

    @property
    def lists(self) -> int:
        return getattr(self.index, "nlist", 0)

    def candidates(self, queries: np.ndarray, category_terms: np.ndarray | None, k: int) -> np.ndarray:
        """[B, k] item rows best by inner product with ``queries`` (+ the category terms), -1 where none.

        ``category_terms`` [B, n_categories] is each user's score added per
        category (the weighted lift); zeros or None leave it out.
        """
        import faiss

        asked = np.asarray(queries, dtype=np.float32)
        if self.n_categories:
            terms = (np.zeros((len(asked), self.n_categories), np.float32) if category_terms is None
                     else np.asarray(category_terms, np.float32) / _CATEGORY_SCALE)
            asked = np.hstack([asked, terms])
        if self.kind == "hnsw":
            self.index.hnsw.efSearch = max(k, self.probe)
        else:
            self.index.nprobe = min(self.probe, self.lists)
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)  # the worker's encoder thread: one core, as torch
        try:
            _, found = self.index.search(np.ascontiguousarray(asked), k)
        finally:
            faiss.omp_set_num_threads(threads)
        return np.where(found >= 0, found + self.first_row, -1)
