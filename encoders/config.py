"""Sequence-encoder hyper-parameters, stored beside the weights as config.json."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from .errors import ConfigError

__all__ = ["BLOCKS", "EncoderConfig"]

BLOCKS = ("gpt2", "sasrec", "gated")


@dataclass(frozen=True)
class EncoderConfig:
    """Shape of a `SequenceEncoder`; ``n_items`` counts padding and unknown too.

    >>> EncoderConfig.from_dict({"n_items": 10}).d_model
    64
    """

    n_items: int
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 2
    max_len: int = 200
    dropout: float = 0.2
    n_actions: int = 8
    n_time_buckets: int = 32
    # A next-action classifier over the last hidden state. False by default so
    # that a config.json written before the head existed still loads its weights.
    action_head: bool = False
    # Multiplies each input's item embedding before positions are added; SASRec
    # uses sqrt(d_model). 1.0 is the value of every config.json written before it.
    input_scale: float = 1.0
    # The Transformer block, one of BLOCKS: "gpt2" (pre-norm, 4d GELU feed-forward;
    # every config.json written before the choice existed), "sasrec" (SASRec's block:
    # the residual runs from the normalised query, d-wide ReLU feed-forward) or "gated"
    # (pre-norm, sigmoid-gated residuals, 4d SwiGLU feed-forward: eSASRec's).
    block: str = "gpt2"
    # Context features of each event (encoders.features.CONTEXT_FEATURES: local hour of
    # the week, device, region, place cell, distance from the previous place) and each
    # item's own place cell.  False in every config.json written before them.
    context: bool = False
    # Which of those features a model with context reads, in CONTEXT_FEATURES' order; the
    # others stay "unknown".  None is all of them (every config.json written before the choice).
    context_features: tuple[str, ...] | None = None
    # Dropout on the attention weights in training; None is ``dropout`` (every config.json
    # written before the option).  On the CPU torch's fused attention kernel takes none.
    attention_dropout: float | None = None

    @property
    def attention_dropout_p(self) -> float:
        """The attention weights' dropout probability in training."""
        return self.dropout if self.attention_dropout is None else self.attention_dropout

    def __post_init__(self) -> None:
        # Validate eagerly: a bad config should fail here, not deep inside torch.
        if self.n_items < 3:
            raise ConfigError("values", f"n_items={self.n_items} must be >= 3 (pad, unknown, one item)")
        for name in ("d_model", "n_layers", "n_heads", "max_len", "n_actions", "n_time_buckets"):
            if getattr(self, name) < 1:
                raise ConfigError("values", f"{name}={getattr(self, name)} must be >= 1")
        if self.d_model % self.n_heads:
            raise ConfigError("values", f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError("values", f"dropout={self.dropout} must be in [0, 1)")
        if self.attention_dropout is not None and not 0.0 <= self.attention_dropout < 1.0:
            raise ConfigError("values", f"attention_dropout={self.attention_dropout} must be in [0, 1)")
        if not self.input_scale > 0:
            raise ConfigError("values", f"input_scale={self.input_scale} must be > 0")
        if self.block not in BLOCKS:
            raise ConfigError("values", f"block={self.block!r} must be one of {BLOCKS}")
        if self.context_features is not None:
            object.__setattr__(self, "context_features", tuple(self.context_features))  # a JSON list
            if not (self.context and self.context_features):
                raise ConfigError("values", f"context_features={list(self.context_features)} needs context=True "
                                            "and at least one feature")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of every field."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "dict") -> EncoderConfig:
        """Build from a dict; unknown keys are an error (a misspelt key must not be ignored)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(source, f"unknown keys {unknown}; expected a subset of {sorted(known)}")
        if "n_items" not in d:
            raise ConfigError(source, "missing required key 'n_items'")
        return cls(**d)
