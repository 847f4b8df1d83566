"""Interest encoders: event logs, the sequence model, training, evaluation, inference.

Layers, each importing only those above it in this list (checked by
import-linter, see pyproject.toml):

- ``errors``, ``config``, ``vocab``: torch-free bottom (exceptions, the model's
  dimensions, the item and action vocabularies, `vocab.FIRST_ITEM`);
- ``features``, ``protocols``, ``interests``, ``data``: numpy only: event
  arrays, train/valid/test splits, multi-granularity interests (with the
  records `recommend` takes and gives), and the records and file formats of
  event logs (`data.load_dataset`);
- ``ranking``: the one ranking rule (scores, masking, exclusion, top K, metric sums);
- ``nn``: torch modules: the sequence model, the text fusion, the text encoder;
- ``checkpoint``: config + weights + vocabulary + metadata on disk;
- ``inference``: `InterestEncoder` and its `recommend`, the scoring rule the
  worker and the benchmarks call, and nothing above;
- ``evaluation`` then ``training``: offline only.

This package knows nothing of Kafka, Faust or Redis.  Importing it is cheap:
the names below are loaded on first access.

>>> from encoders import load_dataset, InterestEncoder, UserEvents
>>> from encoders.training.train import train  # doctest: +SKIP
>>> path = train(load_dataset("synthetic"), "/tmp/ckpt-synth", epochs=5)  # doctest: +SKIP
>>> enc = InterestEncoder.from_checkpoint(path)  # doctest: +SKIP
>>> enc.recommend([UserEvents([("1", "click", 0), ("48", "buy", 60_000)])], k=5)[0].items  # doctest: +SKIP
[('7', 3.2), ...]
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> the module that defines it, imported on first access so that, say,
# the worker's `import encoders.inference` does not load the dataset loaders.
_LAZY = {
    "CheckpointError": "errors", "ConfigError": "errors", "DataFormatError": "errors", "EncoderError": "errors",
    "EncoderConfig": "config",
    "ACTIONS": "vocab", "ItemVocab": "vocab", "UNKNOWN_ITEM": "vocab", "action_index": "vocab",
    "BlendWeights": "interests", "Recommendation": "interests", "UserEvents": "interests",
    "Catalogue": "data.records", "Dataset": "data.records", "Event": "data.records",
    "load_dataset": "data.formats", "load_ml1m": "data.builtin", "load_movielens_small": "data.builtin",
    "synthetic": "data.builtin",
    "SequenceEncoder": "nn.model", "TextFusion": "nn.fusion", "TextEncoder": "nn.text",
    "CheckpointMetadata": "checkpoint", "save_checkpoint": "checkpoint", "load_checkpoint": "checkpoint",
    "load_fusion": "checkpoint", "load_categories": "checkpoint",
    "InterestEncoder": "inference",
    "baseline_metrics": "evaluation.evaluate",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'encoders' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value
