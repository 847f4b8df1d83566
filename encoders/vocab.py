"""Item and action vocabularies shared by training and inference.

Index 0 is padding and index 1 the unknown item (an item first seen after
training); real items start at 2.  Both reserved rows exist in the item
table but are never returned as recommendations.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from .errors import CheckpointError

__all__ = ["ACTIONS", "FIRST_ITEM", "PAD", "UNKNOWN", "UNKNOWN_ITEM", "ItemVocab", "action_index", "item_text"]

PAD = 0
UNKNOWN = 1
FIRST_ITEM = 2  # the first row of a real item: rows PAD and UNKNOWN are never recommended
# An item id no vocabulary holds and no producer can send (event ids are
# [A-Za-z0-9_.:@+=/-]), so it always maps to the UNKNOWN row: the stand-in for
# "some item" where an event must name one (a text-only user's search, a case
# input whose item the vocabulary lacks).
UNKNOWN_ITEM = "\x00unknown"

ACTIONS: tuple[str, ...] = ("pad", "unknown", "view", "click", "cart", "buy", "search", "other")
_ACTION_INDEX = {a: i for i, a in enumerate(ACTIONS)}
# Spellings used by common sources (OTTO, e-commerce logs) for the same actions.
_ACTION_ALIASES = {
    "clicks": "click", "carts": "cart", "add_to_cart": "cart", "addtocart": "cart",
    "orders": "buy", "order": "buy", "purchase": "buy", "transaction": "buy",
    "views": "view", "pageview": "view",
}


def action_index(action: str) -> int:
    """Index of an action name: aliases are folded, "" is unknown, others are "other".

    >>> action_index("buy"), action_index("orders"), action_index("like")
    (5, 5, 7)
    """
    name = action.strip().lower()
    if not name:
        return UNKNOWN
    name = _ACTION_ALIASES.get(name, name)
    if name in ("pad", "unknown"):  # reserved, never a real action
        return _ACTION_INDEX["other"]
    return _ACTION_INDEX.get(name, _ACTION_INDEX["other"])


class ItemVocab:
    """Bidirectional item_id <-> index map with reserved padding/unknown rows.

    >>> v = ItemVocab.from_items(["b", "a", "b"])
    >>> len(v), v.index("a"), v.index("zzz"), v.item_id(3)
    (4, 2, 1, 'b')
    """

    def __init__(self, item_ids: Iterable[str]) -> None:
        self._ids: list[str] = ["<pad>", "<unk>"]
        self._index: dict[str, int] = {}
        for item in item_ids:
            if item not in self._index:
                self._index[item] = len(self._ids)
                self._ids.append(item)

    @classmethod
    def from_items(cls, ids: Iterable[str]) -> ItemVocab:
        """Vocabulary of the distinct ids, sorted so that it does not depend on event order."""
        return cls(sorted(set(ids)))

    def index(self, item_id: str) -> int:
        """Index of an item, `UNKNOWN` (1) when it was not in the training data."""
        return self._index.get(item_id, UNKNOWN)

    def item_id(self, index: int) -> str:
        """Item id of a real-item index (>= 2)."""
        if not 2 <= index < len(self._ids):
            raise IndexError(f"item index {index} is not a real item (2..{len(self._ids) - 1})")
        return self._ids[index]

    @property
    def item_ids(self) -> list[str]:
        """Real item ids in index order (index = position + 2)."""
        return self._ids[FIRST_ITEM:]

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._index

    def save(self, path: str | Path) -> None:
        """Write the real item ids, in index order, as JSON."""
        Path(path).write_text(json.dumps({"items": self.item_ids}), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> ItemVocab:
        """Read a vocabulary written by `save`."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            items = data["items"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(path, f"unreadable vocabulary ({exc})") from exc
        if not isinstance(items, list) or len(set(items)) != len(items):
            raise CheckpointError(path, "vocabulary 'items' must be a list of distinct ids")
        return cls(str(i) for i in items)


def item_text(title: str | None, categories: Sequence[str] | None) -> str:
    """An item as the text encoder reads it, "title | categories": what the text projection trains on
    (catalogue strings) and what the worker scores a new item by.

    >>> item_text("Nylon strings", ("Guitar", "Strings"))
    'Nylon strings | Guitar, Strings'
    """
    return " | ".join(p for p in (title or "", ", ".join(categories or ())) if p)
