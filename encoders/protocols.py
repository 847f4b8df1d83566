"""How an event log is split into training sequences and evaluation cases.

Two protocols, both ranking the whole catalogue:

``leave-one-out`` (the ML-1M benchmark, SASRec/BERT4Rec/HSTU): per user with
at least 3 events, the last item is the test target, the one before it the
validation target, and everything earlier is training.  Users with fewer
events are training only.  With ``through_valid`` the training part also
keeps the validation target (the final fit, after the epoch count has been
chosen on validation; HSTU's published ML-1M runs train this way).

``session`` (next item within a session, the session-rec protocol used for
YOOCHOOSE): each sequence is a session.  Test sessions come from the
dataset's held-out file; the last 10% of training sessions by start time are
the validation sessions.  Every position of an evaluated session is one case:
the events before it are the input and its item the target.  Test items the
training data never saw are dropped from the test sessions (a model cannot
rank an item it has no embedding for), as session-rec does.

An `EvalCases` holds the inputs and targets; scorers are evaluated on them
by `encoders.evaluation`.  No torch here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .data.records import Dataset, Event
from .features import SeqArrays, from_events, split_input
from .vocab import UNKNOWN, ItemVocab

__all__ = ["PROTOCOLS", "EvalCases", "Split", "default_protocol", "make_split"]

PROTOCOLS = ("leave-one-out", "session")
VALID_FRACTION = 0.1  # of training sessions, the latest by start time


@dataclass(frozen=True)
class EvalCases:
    """Inputs (histories, oldest first), target item indices and target action indices.

    ``actions`` holds the action (`encoders.vocab.ACTIONS` index) of each
    target event, for the next-action head; None when cases are built by hand
    without them.
    """

    inputs: list[SeqArrays]
    targets: np.ndarray
    actions: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.inputs)


@dataclass(frozen=True)
class Split:
    """Training sequences and the validation/test cases of one protocol."""

    protocol: str
    train: list[SeqArrays]
    valid: EvalCases
    test: EvalCases
    # Leave-one-out excludes what the user already consumed, as a recommender
    # would; within sessions repeats are common and legitimate targets.
    exclude_history: bool


def default_protocol(dataset: Dataset) -> str:
    """"session" when the dataset ships held-out test sessions, else "leave-one-out"."""
    return "session" if dataset.test_clicks else "leave-one-out"


def make_split(dataset: Dataset, vocab: ItemVocab, protocol: str = "auto", *, through_valid: bool = False) -> Split:
    """Split ``dataset`` by ``protocol`` ("auto", "leave-one-out" or "session")."""
    if protocol == "auto":
        protocol = default_protocol(dataset)
    if protocol == "leave-one-out":
        return _leave_one_out(dataset, vocab, through_valid)
    if protocol == "session":
        return _sessions(dataset, vocab, through_valid)
    raise ValueError(f"protocol must be 'auto' or one of {PROTOCOLS}, got {protocol!r}")


def _cases(triples: list[tuple[SeqArrays, int, int]]) -> EvalCases:
    """Cases of ``(input, target item, target action)`` triples."""
    return EvalCases([t[0] for t in triples], np.asarray([t[1] for t in triples], dtype=np.int64),
                     np.asarray([t[2] for t in triples], dtype=np.int64))


def _loo_cases(seqs: list[SeqArrays], split: str) -> EvalCases:
    # The input is a prefix of the sequence, so the target event sits right after it.
    triples = []
    for seq in seqs:
        case = split_input(seq, split)
        if case is not None:
            triples.append((case[0], case[1], int(seq.actions[len(case[0])])))
    return _cases(triples)


def _leave_one_out(dataset: Dataset, vocab: ItemVocab, through_valid: bool) -> Split:
    seqs = [from_events(events, vocab) for events in dataset.sequences().values()]
    # through_valid trains on the test input (everything but the test item); short users whole.
    fit = [split_input(seq, "test" if through_valid else "train") for seq in seqs]
    train = [case[0] if case is not None else seq for case, seq in zip(fit, seqs)]
    valid = _loo_cases(seqs, "valid")
    test = _loo_cases(seqs, "test")
    return Split("leave-one-out", train, valid, test, exclude_history=True)


def _prefix_cases(sessions: list[SeqArrays]) -> EvalCases:
    """One case per position 1..n-1 of every session: the prefix predicts the item."""
    triples = []
    for seq in sessions:
        triples.extend((seq.window(None, i), int(seq.items[i]), int(seq.actions[i])) for i in range(1, len(seq)))
    return _cases(triples)


def _known_only(seq: SeqArrays) -> SeqArrays:
    keep = seq.items != UNKNOWN
    return SeqArrays(seq.items[keep], seq.actions[keep], seq.gaps[keep],
                     None if seq.context is None else seq.context[keep])


def _by_start(sequences: dict[str, list[Event]]) -> list[list[Event]]:
    return sorted(sequences.values(), key=lambda events: (events[0].ts, events[0].user_id))


def _sessions(dataset: Dataset, vocab: ItemVocab, through_valid: bool) -> Split:
    if not dataset.test_clicks:
        raise ValueError(f"dataset {dataset.name!r} has no held-out test sessions for the session protocol")
    train_sessions = [from_events(s, vocab) for s in _by_start(dataset.sequences())]
    n_valid = max(1, int(len(train_sessions) * VALID_FRACTION))
    fit, valid = train_sessions[:-n_valid], train_sessions[-n_valid:]
    test = [_known_only(from_events(s, vocab)) for s in _by_start(dataset.test_sequences())]
    train = train_sessions if through_valid else fit
    return Split("session", train, _prefix_cases(valid), _prefix_cases(test), exclude_history=False)
