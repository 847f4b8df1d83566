import numpy as np

from state.layout import LAYOUT, decode_clicks, pack_click, session_hash
from state.sessions import current_session_start, session_starts

GAP = 1_800_000


def clicks(*times, sessions=None):
    sessions = sessions or [None] * len(times)
    records = b"".join(pack_click(i, t, i, session_hash(s), 2) for i, (t, s) in enumerate(zip(times, sessions)))
    return decode_clicks(bytes([LAYOUT]) + records)


def test_inactivity_gap_cuts_sessions():
    history = clicks(0, 1000, GAP + 1001, GAP + 2000)
    assert session_starts(history, GAP).tolist() == [0, 2]
    assert history.ts[current_session_start(history, GAP):].tolist() == [GAP + 1001, GAP + 2000]


def test_a_gap_of_exactly_the_limit_stays_in_the_session():
    assert current_session_start(clicks(0, GAP), GAP) == 0


def test_a_new_session_id_cuts_even_without_a_gap_but_a_missing_one_does_not():
    assert session_starts(clicks(0, 10, 20, sessions=["a", "a", "b"]), GAP).tolist() == [0, 2]
    assert session_starts(clicks(0, 10, 20, sessions=["a", None, "b"]), GAP).tolist() == [0]


def test_empty_and_single():
    assert current_session_start(clicks(), GAP) == 0
    assert current_session_start(clicks(5), GAP) == 0
    assert np.array_equal(session_starts(clicks(), GAP), [])


def test_many_histories_are_cut_as_each_alone():
    rng = np.random.default_rng(3)
    histories = []
    for n in (0, 1, 5, 0, 12, 3):
        ts = np.cumsum(rng.integers(0, 2 * GAP, n))
        names = [str(x) if x else None for x in rng.integers(0, 3, n)]
        histories.append(clicks(*ts.tolist(), sessions=names) if n else clicks())
    from state.sessions import session_starts_of

    assert session_starts_of(histories, GAP) == [current_session_start(h, GAP) for h in histories]
