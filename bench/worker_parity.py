"""Quality through the worker's path: what the bounded history and the window hop cost, against `evaluate`.

The worker does not encode a user the way `evaluate` does: Redis keeps the
newest --max-history clicks (so items seen before them are no longer excluded
from the list), and the encoder's window moves by --window-hop events (so it
holds between max_len - hop + 1 and max_len events, not always the last
max_len). This script scores the leave-one-out test cases with the worker's
own call (`InterestEncoder.recommend_histories`, behaviour only, seen items
excluded) on histories built as Redis keeps them, for each hop, beside the
exact path (`recommend` on the whole history: what `evaluate` reports).

With --replay N, each user's history is also fed to the worker's call in
refreshes of up to N events (a cached window extended between them, as in the
worker) and the final lists are checked to be the ones computed in one go.

    python bench/worker_parity.py --data ../shared/data/ml-1m --checkpoint runs/ml1m --hops 1 25 50 100
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from encoders.data import load_dataset  # noqa: E402
from encoders.inference import InterestEncoder  # noqa: E402
from encoders.interests import BlendWeights, History, UserEvents  # noqa: E402
from encoders.protocols import make_split  # noqa: E402
from encoders.vocab import ACTIONS, UNKNOWN, UNKNOWN_ITEM  # noqa: E402
from state.layout import ClickHistory  # noqa: E402
from state.sessions import current_session_start  # noqa: E402

CHUNK = 512


def _timestamps(case) -> np.ndarray:
    """Event times rebuilt from the gaps (ML-1M has none: one second apart)."""
    return np.concatenate([[0], np.cumsum(np.maximum(case.gaps[1:], 0))]).astype(np.int64) if len(case) else \
        np.zeros(0, np.int64)


def _history(user: int, case, max_history: int, gap_ms: int) -> History:
    """The case's input as the worker holds it: the newest ``max_history`` clicks, the session cut by its rule."""
    ts = _timestamps(case)
    kept = slice(max(0, len(case) - max_history), None)
    items, actions, ts = case.items[kept], case.actions[kept], ts[kept]
    n = len(items)
    clicks = ClickHistory(np.zeros(n, np.uint64), ts, np.arange(n, dtype=np.uint64), np.zeros(n, np.uint32),
                          np.zeros(n, np.uint8), np.zeros(n, np.uint64))
    return History(f"u{user}", items, actions, ts, np.arange(len(case) - n, len(case), dtype=np.uint64),
                   total=len(case), session_start=current_session_start(clicks, gap_ms))


def _figures(lists: list[list[int]], targets) -> dict[str, float]:
    hits = ndcg = 0.0
    for top, target in zip(lists, targets):
        if target in top:
            hits += 1
            ndcg += 1 / math.log2(top.index(target) + 2)
    return {"hr@10": hits / len(targets), "ndcg@10": ndcg / len(targets)}


def _rows(recs) -> list[list[int]]:
    return [list(rec.rows) for rec in recs]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="dataset (leave-one-out protocol)")
    parser.add_argument("--checkpoint", required=True, help="checkpoint directory from `train`")
    parser.add_argument("--hops", type=int, nargs="+", default=[1, 25, 50, 100],
                        help="window hops to score [default: 1 25 50 100]")
    parser.add_argument("--max-history", type=int, default=200, help="clicks Redis keeps [default: 200]")
    parser.add_argument("--session-gap", type=float, default=1800.0, help="seconds ending a session [default: 1800]")
    parser.add_argument("--replay", type=int, default=0,
                        help="also replay each history in refreshes of up to N events and check the lists agree "
                             "[default: 0, off]")
    parser.add_argument("--users", type=int, default=0, help="score only the first N test users [default: all]")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    dataset = load_dataset(args.data)
    exact = InterestEncoder.from_checkpoint(args.checkpoint, device="cpu")
    cases = make_split(dataset, exact.vocab, "leave-one-out").test
    n = args.users or len(cases)
    inputs, targets = cases.inputs[:n], [int(t) for t in cases.targets[:n]]
    gap_ms = int(args.session_gap * 1000)
    print(f"{dataset.name}: {n} test cases, histories kept {args.max_history}, "
          f"{sum(len(c) > args.max_history for c in inputs)} users longer than that", flush=True)

    def tuples(case):
        items = [exact.vocab.item_id(int(i)) if i > UNKNOWN else UNKNOWN_ITEM for i in case.items]
        return [(item, ACTIONS[int(a)], int(t)) for item, a, t in zip(items, case.actions, _timestamps(case))]

    reference = []
    for start in range(0, n, CHUNK):
        users = [UserEvents(e, session=e) for e in map(tuples, inputs[start:start + CHUNK])]
        reference += _rows(exact.recommend(users, BlendWeights(), k=10))
    base = _figures(reference, targets)
    print(f"{'path':<58} {'HR@10':>7} {'NDCG@10':>8} {'vs evaluate':>12}")
    print(f"{'exact: whole history, last max_len events (= evaluate)':<58} {base['hr@10']:>7.4f} "
          f"{base['ndcg@10']:>8.4f} {'':>12}", flush=True)
    for hop in args.hops:
        encoder = InterestEncoder.from_checkpoint(args.checkpoint, device="cpu", window_hop=hop,
                                                  cache_bytes=2**31 if args.replay else 0)
        histories = [_history(u, case, args.max_history, gap_ms) for u, case in enumerate(inputs)]
        lists = []
        for start in range(0, n, CHUNK):
            lists += _rows(encoder.recommend_histories(histories[start:start + CHUNK], BlendWeights(), k=10))
        got = _figures(lists, targets)
        print(f"{f'worker: {args.max_history} kept, window hop {hop}':<58} {got['hr@10']:>7.4f} "
              f"{got['ndcg@10']:>8.4f} {100 * (got['ndcg@10'] / base['ndcg@10'] - 1):>+11.2f}%", flush=True)
        if args.replay:
            replayed = _replay(encoder, inputs, args.max_history, gap_ms, args.replay)
            same = sum(a == b for a, b in zip(replayed, lists))
            print(f"  replayed in refreshes of <= {args.replay} events: {same} of {n} lists identical "
                  f"({encoder.windows.stats})", flush=True)
    print(f"({time.perf_counter() - started:.0f}s)")
    return 0


def _replay(encoder: InterestEncoder, inputs, max_history: int, gap_ms: int, step: int) -> list[list[int]]:
    """Every user's history fed in growing prefixes, many users per call, as micro-batches would."""
    rng = np.random.default_rng(0)
    cuts = []
    for case in inputs:
        ends = np.cumsum(rng.integers(1, step + 1, size=len(case) + 1))
        cuts.append([int(e) for e in ends if e < len(case)] + [len(case)])
    final: dict[int, list[int]] = {}
    for round_ in range(max(map(len, cuts))):
        users = [u for u in range(len(inputs)) if round_ < len(cuts[u])]
        for start in range(0, len(users), CHUNK):
            batch = users[start:start + CHUNK]
            histories = [_history(u, inputs[u].window(None, cuts[u][round_]), max_history, gap_ms) for u in batch]
            for u, rec in zip(batch, encoder.recommend_histories(histories, BlendWeights(), k=10)):
                final[u] = list(rec.rows)
    return [final[u] for u in range(len(inputs))]


if __name__ == "__main__":
    sys.exit(main())
