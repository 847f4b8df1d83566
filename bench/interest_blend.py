"""Do the multi-granularity interests help or hurt recommendations? Offline, full ranking.

Runs the worker's own scoring rule (`InterestEncoder.recommend`, as its two
halves: `interests` once per case, then `rank` per blend, with history
excluded) over the leave-one-out cases of a dataset: the blend weights are
chosen on the validation cases (grid below), then the test cases are scored
with the behaviour-only weights (current=1, the rest 0) and with the chosen
blend.  Sessions are cut by the worker's own rule (`state.sessions`).

    python bench/interest_blend.py --data ../shared/data/ml-1m --checkpoint runs/ml1m

Categories come from the checkpoint (categories.json) or, for checkpoints
written before it existed, from the dataset's catalogue.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from encoders.data import load_dataset  # noqa: E402
from encoders.inference import InterestEncoder  # noqa: E402
from encoders.interests import DAY_MS, BlendWeights, CategoryIndex, Interests, UserEvents  # noqa: E402
from encoders.protocols import EvalCases, make_split  # noqa: E402
from encoders.vocab import ACTIONS, UNKNOWN, UNKNOWN_ITEM  # noqa: E402
from state.layout import ClickHistory  # noqa: E402
from state.sessions import current_session_start  # noqa: E402

GRID = {"long_term": (0.0, 0.25, 0.5, 1.0), "session": (0.0, 0.5), "categories": (0.0, 0.05, 0.1, 0.25)}
CHUNK = 512  # users per forward pass and per scoring call


def _tuples(case, vocab) -> list[tuple[str, str, int]]:
    """A case's input as the worker sees events: (item id, action, ts ms), ts rebuilt from the gaps."""
    ts = np.concatenate([[0], np.cumsum(np.maximum(case.gaps[1:], 0))]) if len(case) else []
    items = [vocab.item_id(int(i)) if i > UNKNOWN else UNKNOWN_ITEM for i in case.items]
    return [(item, ACTIONS[int(a)], int(t)) for item, a, t in zip(items, case.actions, ts)]


def _session(events: list[tuple[str, str, int]], gap_ms: float) -> list[tuple[str, str, int]]:
    """The current session, cut by the worker's own rule (`state.sessions`)."""
    n = len(events)
    clicks = ClickHistory(np.zeros(n, np.uint64), np.array([ts for _, _, ts in events], dtype=np.int64),
                          np.zeros(n, np.uint64), np.zeros(n, np.uint32), np.zeros(n, np.uint8),
                          np.zeros(n, np.uint64))
    return events[current_session_start(clicks, int(gap_ms)):]


def _interests(encoder: InterestEncoder, cases: EvalCases, gap_ms: float) -> list[Interests]:
    """Every case's interests, one `InterestEncoder.interests` call per chunk of cases."""
    events = [_tuples(case, encoder.vocab) for case in cases.inputs]
    users = [UserEvents(e, session=_session(e, gap_ms)) for e in events]
    return [encoder.interests(users[start:start + CHUNK]) for start in range(0, len(users), CHUNK)]


def _metrics(encoder: InterestEncoder, cases: EvalCases, chunks: list[Interests],
             weights: BlendWeights) -> dict[str, float]:
    sums = {"hr@10": 0.0, "ndcg@10": 0.0, "hr@20": 0.0, "ndcg@20": 0.0}
    targets = iter(cases.targets)
    for chunk in chunks:
        for top, target in zip(encoder.rank(chunk, weights, k=20, exclude_seen=True), targets):
            ids = [item for item, _ in top]
            target_id = encoder.vocab.item_id(int(target)) if target > UNKNOWN else None
            if target_id in ids:
                rank = ids.index(target_id)
                for k in (10, 20):
                    if rank < k:
                        sums[f"hr@{k}"] += 1
                        sums[f"ndcg@{k}"] += 1 / math.log2(rank + 2)
    return {key: value / len(cases) for key, value in sums.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="dataset folder or file (leave-one-out protocol)")
    parser.add_argument("--checkpoint", required=True, help="checkpoint directory from `train`")
    parser.add_argument("--half-life-days", type=float, default=30.0, help="long-term and category decay")
    parser.add_argument("--session-gap", type=float, default=1800.0, help="seconds of inactivity ending a session")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    dataset = load_dataset(args.data)
    encoder = InterestEncoder.from_checkpoint(args.checkpoint, device="cpu", half_life_ms=args.half_life_days * DAY_MS)
    if not encoder.categories:
        encoder.categories = CategoryIndex(encoder.vocab.item_ids, dataset.catalogue.categories)
    split = make_split(dataset, encoder.vocab, "leave-one-out")
    gap = args.session_gap * 1000
    valid, test = _interests(encoder, split.valid, gap), _interests(encoder, split.test, gap)
    print(f"{dataset.name}: {len(split.valid)} validation / {len(split.test)} test cases, "
          f"{len(encoder.categories.names)} categories, encoded in {time.perf_counter() - started:.0f}s")

    best, best_ndcg = BlendWeights(), -1.0
    for long_term, session, categories in itertools.product(*GRID.values()):
        weights = BlendWeights(1.0, long_term, session, categories)
        ndcg = _metrics(encoder, split.valid, valid, weights)["ndcg@10"]
        print(f"  valid {weights}: NDCG@10 {ndcg:.4f}")
        if ndcg > best_ndcg + 1e-9:
            best, best_ndcg = weights, ndcg
    print(f"\ntest cases ({args.data}), weights chosen on validation: {best}")
    print(f"{'scoring':<56} {'HR@10':>7} {'NDCG@10':>8} {'HR@20':>7} {'NDCG@20':>8}")
    for name, weights in (("behaviour only (current)", BlendWeights()), (f"blend ({best})", best)):
        m = _metrics(encoder, split.test, test, weights)
        print(f"{name:<56} {m['hr@10']:>7.4f} {m['ndcg@10']:>8.4f} {m['hr@20']:>7.4f} {m['ndcg@20']:>8.4f}")
    print(f"({time.perf_counter() - started:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
