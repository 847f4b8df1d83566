"""The live catalogue as each worker sees it: every announced item's newest upsert.

Item events (the items topic, keyed by item id) are applied to Redis by the
worker that consumes them (`state.store.Store.apply_items`: the newest ``ts``
wins, a replay changes nothing). Every worker follows Redis's change stream
before each refresh (`Catalogue.sync`, one round trip), so all workers hold
the same catalogue from their next batch on, whichever of them applied the
upsert. What scoring needs of it is `Catalogue.unavailable`: the items never
to recommend (`encoders.inference.InterestEncoder.set_unavailable`).
"""

from __future__ import annotations

import logging

from state.store import ItemState, Store

__all__ = ["Catalogue"]

log = logging.getLogger("interest_updater.catalogue")

_PAGE = 10_000  # changes read per round trip


class Catalogue:
    """This worker's copy of the live catalogue; `sync` brings it up to Redis's.

    ``version`` rises each time the set of unavailable items changes, so a
    reader re-masks its scores only then; ``changes`` counts every upsert read.
    """

    def __init__(self, store: Store, metrics=None) -> None:
        self.store = store
        self.metrics = metrics
        self.items: dict[str, ItemState] = {}
        self.unavailable: frozenset[str] = frozenset()
        self.version = 0
        self.changes = 0
        self._position: str | None = None  # in Redis's change stream; None: read it whole

    async def sync(self) -> int:
        """Read the upserts applied since the last sync (by any worker); returns how many."""
        read = 0
        unavailable = set(self.unavailable)
        while True:
            found = await self.store.catalogue_changes(self._position, _PAGE)
            if found.whole:
                self.items, unavailable = {}, set()
            for item in found.items:
                self.items[item.item_id] = item
                (unavailable.discard if item.available else unavailable.add)(item.item_id)
            self._position = found.position
            read += len(found.items)
            if self.metrics is not None and found.items:
                self.metrics.catalogue_syncs.labels("whole" if found.whole else "change").inc(len(found.items))
            if found.whole or len(found.items) < _PAGE:
                break
        if read:
            self.changes += read
            self._changed(frozenset(unavailable))
        return read

    def _changed(self, unavailable: frozenset[str]) -> None:
        if unavailable != self.unavailable:
            self.unavailable = unavailable
            self.version += 1
            log.info("catalogue: %d items announced, %d unavailable", len(self.items), len(unavailable))
        if self.metrics is not None:
            self.metrics.catalogue_items.labels("available").set(len(self.items) - len(unavailable))
            self.metrics.catalogue_items.labels("unavailable").set(len(unavailable))
