"""Batched vs. unbatched sequence encoder: the worker's own inference path.

Encodes the same users once as one micro-batch and once one call per user,
side by side, and prints the medians. Also times text embedding at batch 1 and
at the micro-batch size. Runs on CUDA when present (--device auto).

    python bench/encoder_bench.py --checkpoint runs/ml1m --data ../shared/data/ml-1m
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from encoders.data import load_dataset  # noqa: E402
from encoders.inference import InterestEncoder  # noqa: E402


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: first calls pay for allocation and kernel selection
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--users", type=int, default=256, help="users in the micro-batch")
    parser.add_argument("--length", type=int, default=50, help="events per user")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--texts", action="store_true", help="also time the text encoder")
    args = parser.parse_args()

    encoder = InterestEncoder.from_checkpoint(args.checkpoint, device=args.device)
    histories = [h for h in load_dataset(args.data).sequences().values() if len(h) >= args.length][: args.users]
    seqs = [[(e.item_id, e.action, e.ts) for e in h[-args.length:]] for h in histories]
    batched = median_seconds(lambda: encoder.encode(seqs), args.repeats)
    single = median_seconds(lambda: [encoder.encode([s]) for s in seqs], max(3, args.repeats // 2))
    print(f"device {encoder.device}, {len(seqs)} users x {args.length} events, medians")
    print(f"one call for all users: {batched * 1e3:8.1f} ms  ({len(seqs) / batched:7.0f} users/s)")
    print(f"one call per user:      {single * 1e3:8.1f} ms  ({len(seqs) / single:7.0f} users/s)")
    print(f"batched speed-up: {single / batched:.1f}x")
    if args.texts:
        from encoders.nn.text import TextEncoder

        text_encoder = TextEncoder(device=args.device)
        texts = [f"looking for something like item {i} with a longer description" for i in range(len(seqs))]
        text_batched = median_seconds(lambda: text_encoder.embed(texts), 3)
        text_single = median_seconds(lambda: [text_encoder.embed([t]) for t in texts[:64]], 3) * len(texts) / 64
        print(f"texts: batch {len(texts)}: {len(texts) / text_batched:.0f} texts/s; "
              f"batch 1: {len(texts) / text_single:.0f} texts/s")


if __name__ == "__main__":
    main()
