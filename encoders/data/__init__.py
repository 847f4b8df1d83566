"""Event logs: the canonical records, the built-in datasets and the file formats, behind one `load_dataset`.

Torch-free and numpy-free, so the CLI can load and inspect data cheaply.
"""

from __future__ import annotations

from .builtin import SYNTHETIC_START_MS, load_ml1m, load_movielens_small, rating_action, synthetic
from .formats import FORMATS, Columns, load_dataset, parse_ts, sniff_format
from .records import Catalogue, Dataset, Event

__all__ = ["FORMATS", "SYNTHETIC_START_MS", "Catalogue", "Columns", "Dataset", "Event", "load_dataset", "load_ml1m",
           "load_movielens_small", "parse_ts", "rating_action", "sniff_format", "synthetic"]
