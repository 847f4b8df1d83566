"""Published full-ranking figures to print beside our own (see ../shared/data/README.md).

Keyed by dataset folder name.  Each entry says where the figure comes from;
`PROTOCOL_NOTES` says how those protocols differ from ours, so that nobody
reads a table without its caveats.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["PROTOCOL_NOTES", "PUBLISHED", "Published"]


class Published(NamedTuple):
    model: str
    hr10: float
    ndcg10: float
    source: str


PUBLISHED: dict[str, tuple[Published, ...]] = {
    "ml-1m": (
        Published("SASRec, 1-negative BCE", 0.2392, 0.1259, "gSASRec-pytorch README"),
        Published("BERT4Rec", 0.2821, 0.1516, "Petrov & Macdonald 2022"),
        Published("SASRec, sampled softmax", 0.2853, 0.1603, "generative-recommenders README"),
        Published("gSASRec (256 neg., t=0.75)", 0.3003, 0.1726, "Petrov & Macdonald 2023"),
        Published("HSTU-large", 0.3294, 0.1893, "Zhai et al. 2024"),
    ),
}

PROTOCOL_NOTES: dict[str, str] = {
    "ml-1m": (
        "Published rows: leave-one-out, full ranking over all 3,416 items, 6,040 users, on approximately "
        "the same data (within-second ties may be ordered differently). Ours excludes items already in "
        "the user's history from the ranking (ML-1M has no repeats, so no target is lost by it). HSTU's "
        "and the sampled-softmax SASRec's runs train on every item but the test one (the validation item "
        "too), as `train --refit` does; without --refit ours never trains on the validation item."
    ),
}
