"""The worker's inference path: event tuples in, interest vectors and top-K out.

It runs the very `SequenceEncoder` used in training.  A micro-batch's users
are truncated to their last ``max_len`` events and grouped by a small set of
padded lengths (16, 32, 64, 128, max_len): one forward pass per group, so
the number of distinct tensor shapes stays small (good for kernel caches and
the GPU allocator) while short sequences are not padded to 200.  Because the
model pads on the right under causal attention, a user's vector does not
depend on the group it lands in (see `encoders.model`).

Calls may come from an executor thread while the event loop goes on; a lock
serialises them, so one `InterestEncoder` can be shared by any threads.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .checkpoint import load_checkpoint
from .features import SeqArrays, from_tuples, pad_batch
from .model import SequenceEncoder
from .vocab import ItemVocab

__all__ = ["LENGTH_BUCKETS", "InterestEncoder"]

LENGTH_BUCKETS = (16, 32, 64, 128)


class InterestEncoder:
    """Encode users' recent events into interest vectors and score the catalogue.

    >>> enc = InterestEncoder.from_checkpoint("/tmp/ckpt-ml1m")  # doctest: +SKIP
    >>> vecs = enc.encode([[("1", "click", 1_700_000_000_000), ("48", "buy", 1_700_000_060_000)]])  # doctest: +SKIP
    >>> enc.top_k(vecs, 10, exclude=[{"1", "48"}])  # doctest: +SKIP
    [[('2', 7.1), ...]]
    """

    def __init__(self, model: SequenceEncoder, vocab: ItemVocab, model_version: str = "") -> None:
        if len(vocab) != model.config.n_items:
            raise ValueError(f"vocab has {len(vocab)} entries but model.config.n_items={model.config.n_items}")
        self.model = model.eval()
        self.vocab = vocab
        self.model_version = model_version
        self.dim = model.config.d_model
        self.max_len = model.config.max_len
        self.device = next(model.parameters()).device
        self.buckets = tuple(b for b in LENGTH_BUCKETS if b < self.max_len) + (self.max_len,)
        self._table = model.item_table().detach().float()
        self._lock = threading.Lock()

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "auto") -> InterestEncoder:
        """Load a checkpoint directory (see `encoders.checkpoint`)."""
        model, vocab, meta = load_checkpoint(path, device)
        return cls(model, vocab, meta.model_version)

    def _bucket(self, length: int) -> int:
        return next(b for b in self.buckets if b >= length)

    def _autocast(self) -> contextlib.AbstractContextManager[object]:
        # bf16 on the GPU only: on CPU it is slower and changes results.
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(array)
        if self.device.type == "cuda":
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor

    def _forward(self, seqs: list[SeqArrays], length: int) -> np.ndarray:
        batch = pad_batch(seqs, length)
        tensors = [self._to_device(a) for a in (batch.items, batch.actions, batch.gaps, batch.lengths)]
        with self._autocast():
            vectors = self.model.user_vectors(*tensors)
        return vectors.float().cpu().numpy()

    def encode(self, sequences: Sequence[Sequence[tuple[str, str, int]]]) -> np.ndarray:
        """Interest vectors, float32 [B, dim], of users' ``(item_id, action, ts_ms)`` events.

        Each sequence is oldest first; only the last ``max_len`` events are
        used; unknown items map to the unknown-item embedding.  A user with no
        events gets a zero vector.
        """
        out = np.zeros((len(sequences), self.dim), dtype=np.float32)
        arrays = [from_tuples(seq, self.vocab).window(-self.max_len, None) for seq in sequences]
        groups: dict[int, list[int]] = {}
        for row, seq in enumerate(arrays):
            if len(seq):
                groups.setdefault(self._bucket(len(seq)), []).append(row)
        with self._lock, torch.inference_mode():
            for length, rows in sorted(groups.items()):
                out[rows] = self._forward([arrays[r] for r in rows], length)
        return out

    def _exclusion_mask(self, scores: torch.Tensor, exclude: Sequence[set[str]]) -> None:
        rows: list[int] = []
        cols: list[int] = []
        for row, items in enumerate(exclude):
            idx = [self.vocab.index(i) for i in items if i in self.vocab]
            rows.extend([row] * len(idx))
            cols.extend(idx)
        if cols:
            scores[torch.tensor(rows, device=scores.device), torch.tensor(cols, device=scores.device)] = float("-inf")

    def top_k(
        self, vectors: np.ndarray, k: int, exclude: Sequence[set[str]] | None = None
    ) -> list[list[tuple[str, float]]]:
        """Best ``k`` ``(item_id, score)`` per vector by dot product with the item table.

        ``exclude[i]`` holds item ids never to return for row i (e.g. what the
        user already bought); padding and unknown rows are never returned, so
        a row may hold fewer than ``k`` items when exclusions leave too few.
        """
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"vectors must be [B, {self.dim}], got shape {vectors.shape}")
        if exclude is not None and len(exclude) != len(vectors):
            raise ValueError(f"exclude has {len(exclude)} sets for {len(vectors)} vectors")
        k = min(k, len(self.vocab) - 2)
        if k <= 0 or len(vectors) == 0:
            return [[] for _ in range(len(vectors))]
        with self._lock, torch.inference_mode():
            scores = self._to_device(np.ascontiguousarray(vectors)) @ self._table.T
            scores[:, :2] = float("-inf")
            if exclude is not None:
                self._exclusion_mask(scores, exclude)
            values, indices = (t.cpu().tolist() for t in scores.topk(k, dim=1))
        return [
            [(self.vocab.item_id(i), v) for v, i in zip(vals, idx) if v != float("-inf")]
            for vals, idx in zip(values, indices)
        ]
