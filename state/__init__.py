"""Per-user state in Redis: key layout, Lua scripts and the store.

This package knows nothing of Kafka, Faust or torch: it takes plain records
and returns plain records, so it can be used from a script or a notebook.
"""

from state.errors import InvalidUserId, StateError
from state.keys import KeySpace
from state.store import AppliedUser, Entry, Profile, Store, StoredClick, StoredText, Written

__all__ = ["StateError", "InvalidUserId", "KeySpace", "Store", "Entry", "AppliedUser", "StoredClick", "StoredText", "Profile", "Written"]
