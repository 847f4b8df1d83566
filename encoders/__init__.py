"""Interest encoders: event logs, the sequence model, training, evaluation, inference.

Importing the package is cheap (no torch): the dataset loaders, config,
vocabulary and errors are imported eagerly; the torch-backed names
(`SequenceEncoder`, `train`, `evaluate`, `InterestEncoder`, `TextEncoder`, ...)
are imported on first access.  ``train`` and ``evaluate`` are not
re-exported: their names equal their modules', and an attribute that is a
function or a module depending on import order would be a trap; import them
from `encoders.train` / `encoders.evaluate`.  This package knows nothing of
Kafka, Faust or Redis.

>>> from encoders import load_dataset, InterestEncoder
>>> from encoders.train import train  # doctest: +SKIP
>>> path = train(load_dataset("synthetic"), "/tmp/ckpt-synth", epochs=5)  # doctest: +SKIP
>>> enc = InterestEncoder.from_checkpoint(path)  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .config import EncoderConfig
from .datasets import (
    Catalogue,
    Dataset,
    Event,
    load_dataset,
    load_ml1m,
    load_movielens_small,
    synthetic,
)
from .errors import CheckpointError, ConfigError, DataFormatError, EncoderError
from .vocab import ACTIONS, ItemVocab, action_index

if TYPE_CHECKING:
    from .checkpoint import CheckpointMetadata, load_categories, load_checkpoint, load_fusion, save_checkpoint
    from .fusion import TextFusion
    from .evaluate import baseline_metrics
    from .inference import InterestEncoder
    from .model import SequenceEncoder
    from .text import TextEncoder

# name -> submodule, for names whose modules import torch.
_LAZY = {
    "SequenceEncoder": "model",
    "CheckpointMetadata": "checkpoint",
    "save_checkpoint": "checkpoint",
    "load_checkpoint": "checkpoint",
    "load_fusion": "checkpoint",
    "load_categories": "checkpoint",
    "TextFusion": "fusion",
    "baseline_metrics": "evaluate",
    "InterestEncoder": "inference",
    "TextEncoder": "text",
}

__all__ = [
    "ACTIONS",
    "Catalogue",
    "CheckpointError",
    "CheckpointMetadata",
    "ConfigError",
    "DataFormatError",
    "Dataset",
    "EncoderConfig",
    "EncoderError",
    "Event",
    "InterestEncoder",
    "ItemVocab",
    "SequenceEncoder",
    "TextEncoder",
    "TextFusion",
    "action_index",
    "baseline_metrics",
    "load_categories",
    "load_checkpoint",
    "load_dataset",
    "load_fusion",
    "load_ml1m",
    "load_movielens_small",
    "save_checkpoint",
    "synthetic",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'encoders' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value
