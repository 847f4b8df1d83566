"""Text interest: MiniLM sentence embeddings projected into the item space and
fused with the behavioural interest by a learned gate.

A user's text events (searches, reviews, comments) are embedded by
all-MiniLM-L6-v2 (`encoders.nn.text`, 384-d unit vectors).  `TextFusion.project`
maps an embedding into the item-embedding space of a trained
`SequenceEncoder`, so ``project(text) @ item_table.T`` are item logits.  The
user's *text interest* is the (optionally recency-weighted) mean of the
projections of their recent texts.  `TextFusion.fuse` mixes it with the
behavioural vector (the encoder's last hidden state)::

    g     = sigmoid(Linear([b, t, b*t, |b|, |t|, cos(b, t)]))   per dimension
    fused = g * b + (1 - g) * t

with exact limits: no text -> ``b``, no behaviour -> ``t``.  So a user whose
first event is a search still gets recommendations (from ``t``), and a user
with no texts gets exactly the behaviour-only recommendations.

Training lives in `encoders.training.fusion`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["TextFusion"]


class TextFusion(nn.Module):
    """Projection of 384-d text embeddings into the item space plus a learned gate.

    >>> f = TextFusion(text_dim=384, d_model=64)
    >>> b, t = torch.randn(2, 64), torch.randn(2, 64)
    >>> out = f.fuse(b, t, torch.tensor([True, False]), torch.tensor([False, True]))
    >>> bool(torch.equal(out[0], b[0]) and torch.equal(out[1], t[1]))
    True
    """

    def __init__(self, text_dim: int = 384, d_model: int = 64, hidden: int = 0,
                 half_life_s: float | None = None) -> None:
        super().__init__()
        self.text_dim, self.d_model, self.hidden = text_dim, d_model, hidden
        self.half_life_s = half_life_s  # recency weighting of text_interest; None = plain mean
        if hidden:
            self.proj: nn.Module = nn.Sequential(nn.Linear(text_dim, hidden), nn.GELU(), nn.Linear(hidden, d_model))
        else:
            self.proj = nn.Linear(text_dim, d_model)
        self.gate = nn.Linear(3 * d_model + 3, d_model)
        # Start leaning on behaviour (sigmoid(1) ~ 0.73): the text is the newcomer.
        nn.init.zeros_(self.gate.weight)
        nn.init.constant_(self.gate.bias, 1.0)

    def dims(self) -> dict[str, Any]:
        """Constructor arguments (saved beside the weights by `encoders.checkpoint`)."""
        return {"text_dim": self.text_dim, "d_model": self.d_model, "hidden": self.hidden,
                "half_life_s": self.half_life_s}

    def project(self, text_emb: torch.Tensor) -> torch.Tensor:
        """[N, text_dim] sentence embeddings -> [N, d_model] vectors in the item space."""
        return self.proj(text_emb)

    def gate_values(self, behaviour: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Per-dimension weight of behaviour, in (0, 1), [B, d]."""
        nb, nt = behaviour.norm(dim=1, keepdim=True), text.norm(dim=1, keepdim=True)
        cos = (behaviour * text).sum(1, keepdim=True) / (nb * nt).clamp(min=1e-6)
        scale = math.sqrt(self.d_model)  # keeps the norm features O(1)
        feats = torch.cat([behaviour, text, behaviour * text, nb / scale, nt / scale, cos], dim=1)
        return torch.sigmoid(self.gate(feats))

    def fuse(self, behaviour: torch.Tensor, text: torch.Tensor, has_behaviour: torch.Tensor,
             has_text: torch.Tensor) -> torch.Tensor:
        """Fused interest [B, d]: exactly ``behaviour`` without text, exactly ``text`` without behaviour."""
        g = self.gate_values(behaviour, text)
        fused = g * behaviour + (1.0 - g) * text
        has_b, has_t = has_behaviour.to(torch.bool)[:, None], has_text.to(torch.bool)[:, None]
        fused = torch.where(has_t, fused, behaviour)
        return torch.where(has_b, fused, text)

    def weights(self, ts: Sequence[int] | np.ndarray, now: int | None) -> np.ndarray:
        """Weights (summing to 1) of texts at ``ts`` (ms): recency-weighted when ``half_life_s`` is set."""
        ts = np.asarray(ts, dtype=np.float64)
        if self.half_life_s is None or len(ts) == 0:
            return np.full(len(ts), 1.0 / max(len(ts), 1))
        now = float(ts.max()) if now is None else float(now)
        age_s = np.maximum(now - ts, 0.0) / 1000.0
        w = np.power(0.5, age_s / self.half_life_s)
        return w / w.sum()

    @torch.inference_mode()
    def text_interest(self, embeddings: Sequence[np.ndarray], ts: Sequence[int], now: int | None = None) -> np.ndarray:
        """A user's text interest, float32 [d]: weighted mean of their texts' projections.

        ``embeddings`` are 384-d MiniLM vectors, ``ts`` their times (ms), ``now``
        the time to weigh recency at (default: the newest text).
        """
        if len(embeddings) == 0:
            return np.zeros(self.d_model, dtype=np.float32)
        device = next(self.parameters()).device
        x = torch.as_tensor(np.stack(embeddings).astype(np.float32), device=device)
        w = torch.as_tensor(self.weights(ts, now), dtype=torch.float32, device=device)
        return (w @ self.project(x)).cpu().numpy().astype(np.float32)

    @torch.inference_mode()
    def fuse_numpy(self, behaviour: np.ndarray, text: np.ndarray, has_behaviour: np.ndarray,
                   has_text: np.ndarray) -> np.ndarray:
        """`fuse` on numpy arrays ([B, d], [B, d], [B] bool, [B] bool) -> float32 [B, d]."""
        device = next(self.parameters()).device
        out = self.fuse(*(torch.as_tensor(np.asarray(a), device=device) for a in
                          (np.asarray(behaviour, np.float32), np.asarray(text, np.float32),
                           np.asarray(has_behaviour, bool), np.asarray(has_text, bool))))
        return out.cpu().numpy().astype(np.float32)
