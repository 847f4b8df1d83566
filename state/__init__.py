"""Per-user state in Redis: key layout, Lua scripts and the store.

This package knows nothing of Kafka or torch: it takes plain records and
returns plain records (numpy arrays for histories), so it can be used from a
script or a notebook.
"""

from state.errors import InvalidUserId, LayoutMismatch, StateError
from state.keys import KeySpace
from state.layout import ClickHistory, HashIndex, StoredProfile, TextState
from state.store import AppliedUser, Entry, Profile, Store, StoredClick, StoredText, Written

__all__ = ["StateError", "InvalidUserId", "LayoutMismatch", "KeySpace", "Store", "Entry", "AppliedUser",
           "StoredClick", "StoredText", "Profile", "Written", "ClickHistory", "TextState", "StoredProfile",
           "HashIndex"]
