"""Top-10 over a large catalogue through the worker's rule: the exact scan against an index's candidates.

The worker scores every item (``query . item + w_cat * category lift``), leaves
out the user's seen items and keeps the best 10 (`InterestEncoder.rank`).
Above --ann-above items an index proposes candidates and the same rule
re-ranks them (`encoders.retrieval`). This script runs that very call, on one
CPU thread, with the exact scan and with each index configuration, and
prints the time per user and the recall@10 of the final lists against the
scan's, at the catalogue sizes given.

Catalogues: with --checkpoint and --data, the checkpoint's trained item table
grown to --items by jittered copies of its items (each copy keeps its
source's categories), and the dataset's leave-one-out users as queries (their
real interests and category mixes); without, synthetic vectors around 1,000
topics with popularity in the norms and 20 categories, and users mixing a few
items. Each user has 50 seen items among their 200 nearest (the ones an
exclusion matters for). Blend: current=1, categories=--weight.

    python bench/ann_bench.py --items 100000 1000000
    python bench/ann_bench.py --items 100000 1000000 --checkpoint runs/ml1m --data ../shared/data/ml-1m
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from encoders.config import EncoderConfig  # noqa: E402
from encoders.inference import InterestEncoder, keep_freed_memory  # noqa: E402
from encoders.interests import BlendWeights, Interests, UserEvents  # noqa: E402
from encoders.nn.model import SequenceEncoder  # noqa: E402
from encoders.vocab import FIRST_ITEM, ItemVocab  # noqa: E402

K, SEEN, NEAR = 10, 50, 200
CHUNK = 256  # users per call, as a micro-batch


def synthetic(n: int, users: int, rng) -> tuple[np.ndarray, dict, np.ndarray, list[dict]]:
    """Item vectors, item categories, user queries and user category mixes, all made up."""
    d, topics, n_cat = 64, 1000, 20
    centres = rng.normal(size=(topics, d)).astype(np.float32)
    topic = rng.integers(0, topics, n)
    norm = (0.6 + 0.4 * rng.random(n) ** 3).astype(np.float32)[:, None]  # a few popular items score higher
    items = centres[topic] + 0.8 * rng.normal(size=(n, d)).astype(np.float32)
    items *= norm / np.linalg.norm(items, axis=1, keepdims=True)
    categories = {f"i{i}": (f"c{t % n_cat}",) for i, t in enumerate(topic)}
    queries = 4.0 * (items[rng.integers(0, n, (users, 3))].mean(1) + 0.2 * rng.normal(size=(users, d)))
    mixes = [dict(zip((f"c{j}" for j in range(n_cat)), rng.dirichlet(np.ones(n_cat) * 0.3))) for _ in range(users)]
    return items, categories, queries.astype(np.float32), mixes


def inflated(n: int, users: int, rng, checkpoint: str, data: str) -> tuple[np.ndarray, dict, np.ndarray, list[dict]]:
    """A trained table grown to n items by jittered copies; the dataset's users as queries."""
    from encoders.data import load_dataset
    from encoders.protocols import make_split

    trained = InterestEncoder.from_checkpoint(checkpoint, device="cpu")
    table = trained._table[FIRST_ITEM:].numpy()
    source = rng.integers(0, len(table), n)
    items = table[source] + 0.3 * table.std(0).mean() * rng.normal(size=(n, table.shape[1])).astype(np.float32)
    categories = {f"i{i}": trained.categories.categories.get(trained.vocab.item_id(int(s) + FIRST_ITEM), ())
                  for i, s in enumerate(source)}
    cases = make_split(load_dataset(data), trained.vocab, "leave-one-out").test
    inputs = [cases.inputs[i] for i in rng.choice(len(cases), users, replace=False)]
    seqs = [[(trained.vocab.item_id(int(i)) if i >= FIRST_ITEM else "-", "click", k) for k, i in enumerate(c.items)]
            for c in inputs]
    found = trained.interests([UserEvents(s) for s in seqs])
    return items.astype(np.float32), categories, found.current, found.categories


def encoder_over(items: np.ndarray, categories: dict, **index) -> InterestEncoder:
    """An encoder whose item table is ``items``: only its scoring is used here."""
    model = SequenceEncoder(EncoderConfig(n_items=len(items) + FIRST_ITEM, d_model=items.shape[1], n_layers=1,
                                          n_heads=1, max_len=8))
    with torch.no_grad():
        model.item_emb.weight[FIRST_ITEM:] = torch.from_numpy(items)
    return InterestEncoder(model.eval(), ItemVocab(f"i{i}" for i in range(len(items))), "bench",
                           categories=categories, **index)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, nargs="+", default=[100_000, 1_000_000],
                        help="catalogue sizes [default: 100000 1000000]")
    parser.add_argument("--users", type=int, default=512, help="users scored per configuration [default: 512]")
    parser.add_argument("--checkpoint", default=None, help="grow this checkpoint's item table [default: synthetic]")
    parser.add_argument("--data", default=None, help="the checkpoint's dataset: its users are the queries")
    parser.add_argument("--weight", type=float, default=0.1, help="category weight of the blend [default: 0.1]")
    parser.add_argument("--configs", nargs="+", default=["ivf:16", "ivf:32", "ivf:64", "ivf:128", "hnsw:256"],
                        help="index kind:probe (IVF lists searched, or HNSW efSearch) [default: ivf:16 ivf:32 "
                             "ivf:64 ivf:128 hnsw:256]")
    parser.add_argument("--candidates", type=int, default=200, help="candidates besides seen items [default: 200]")
    args = parser.parse_args(argv)
    if bool(args.checkpoint) != bool(args.data):
        parser.error("--checkpoint and --data go together")

    keep_freed_memory()  # as the worker: large temporaries are reused, not page-faulted afresh
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    source = f"{args.checkpoint}'s table, users of {args.data}" if args.checkpoint else "synthetic"
    print(f"catalogue: {source}; {args.users} users, {SEEN} seen items each, blend current=1, "
          f"categories={args.weight}; one thread")
    print(f"{'items':>9} {'scoring':<26} {'build s':>8} {'ms/user':>8} {'recall@10':>10}")
    weights = BlendWeights(categories=args.weight)
    for n in args.items:
        items, categories, queries, mixes = (inflated(n, args.users, rng, args.checkpoint, args.data)
                                             if args.checkpoint else synthetic(n, args.users, rng))
        seen = []
        for q in queries:
            near = np.argpartition(-(items @ q), NEAR)[:NEAR]
            seen.append(rng.choice(near, SEEN, replace=False) + FIRST_ITEM)
        scan = encoder_over(items, categories)
        chunks = []  # the same interests for every configuration: only the index differs
        for start in range(0, len(queries), CHUNK):
            q = queries[start:start + CHUNK]
            zeros = np.zeros_like(q)
            mix = mixes[start:start + CHUNK]
            chunks.append(Interests(q, zeros, zeros, mix, None, seen[start:start + CHUNK],
                                    scan.categories.mix_of(mix).astype(np.float64)))
        truth, seconds = _rank(scan, chunks, weights)
        print(f"{n:>9} {'exact scan':<26} {0:>8.1f} {1000 * seconds / len(queries):>8.2f} {1.0:>10.3f}", flush=True)
        for config in args.configs:
            kind, probe = config.split(":")
            started = time.perf_counter()
            indexed = encoder_over(items, categories, ann_above=1, ann_candidates=args.candidates,
                                   ann_probe=int(probe), index_kind=kind)
            built = time.perf_counter() - started
            found, seconds = _rank(indexed, chunks, weights)
            recall = np.mean([len(set(a) & set(b)) / K for a, b in zip(found, truth)])
            label = f"{kind} {'lists' if kind == 'ivf' else 'ef'} {probe}" + (
                f" ({indexed.index.lists} lists)" if kind == "ivf" else "")
            print(f"{n:>9} {label:<26} {built:>8.1f} {1000 * seconds / len(queries):>8.2f} {recall:>10.3f}",
                  flush=True)
    return 0


def _rank(encoder: InterestEncoder, chunks: list[Interests], weights: BlendWeights) -> tuple[list[list[int]], float]:
    encoder._rank_rows(chunks[0], weights, K, True)  # warm-up
    started = time.perf_counter()
    lists = [[r for r, _ in row] for chunk in chunks for row in encoder._rank_rows(chunk, weights, K, True)]
    return lists, time.perf_counter() - started


if __name__ == "__main__":
    sys.exit(main())
