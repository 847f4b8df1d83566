from state.sessions import current_session, split_sessions
from state.store import StoredClick

GAP = 1_800_000


def clicks(*times, sessions=None):
    sessions = sessions or [None] * len(times)
    return [StoredClick(f"e{i}", f"i{i}", "view", t, s) for i, (t, s) in enumerate(zip(times, sessions))]


def test_inactivity_gap_cuts_sessions():
    history = clicks(0, 1000, GAP + 1001, GAP + 2000)
    assert [len(s) for s in split_sessions(history, GAP)] == [2, 2]
    assert [c.ts for c in current_session(history, GAP)] == [GAP + 1001, GAP + 2000]


def test_a_gap_of_exactly_the_limit_stays_in_the_session():
    assert len(current_session(clicks(0, GAP), GAP)) == 2


def test_a_new_session_id_cuts_even_without_a_gap():
    history = clicks(0, 10, 20, sessions=["a", "a", "b"])
    assert [len(s) for s in split_sessions(history, GAP)] == [2, 1]
    assert len(current_session(history, GAP)) == 1


def test_empty_and_single():
    assert current_session([], GAP) == []
    assert len(current_session(clicks(5), GAP)) == 1
