"""The training loss on its own: the chunked full softmax against torch's plain cross-entropy.

The full-catalogue softmax is about half of an ML-1M training epoch on the CPU
(py-spy). This times one forward + backward of `encoders.training.loop.full_softmax_loss`
at several chunk sizes (float32 products) and with bfloat16 products (``--loss-precision
bf16``, 1,024-row chunks), and of ``F.cross_entropy(h @ w.T)``, interleaved in one run,
on the shapes of one ML-1M batch (128 users x ~125 positions, 3,416 items, d=64).

    python bench/loss_bench.py --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from encoders.training.loop import full_softmax_loss  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=16_000, help="positions per batch [default: 16000]")
    parser.add_argument("--items", type=int, default=3_416, help="catalogue size [default: 3416, ML-1M]")
    parser.add_argument("--d-model", type=int, default=64, help="hidden width [default: 64]")
    parser.add_argument("--chunks", default="512,1024,2048,4096",
                        help="chunk sizes to time [default: 512,1024,2048,4096]")
    parser.add_argument("--repeats", type=int, default=9, help="timed calls of each, medians reported [default: 9]")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads [default: 1]")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    hidden = torch.randn(args.rows, args.d_model) * 0.5
    table = torch.randn(args.items, args.d_model) * 0.5
    targets = torch.randint(0, args.items, (args.rows,))

    def chunked(chunk: int, dtype: torch.dtype = torch.float32):
        def run() -> None:
            h, w = hidden.clone().requires_grad_(), table.clone().requires_grad_()
            full_softmax_loss(h, w, targets, chunk=chunk, matmul_dtype=dtype).backward()
        return run

    def plain() -> None:
        h, w = hidden.clone().requires_grad_(), table.clone().requires_grad_()
        torch.nn.functional.cross_entropy(h @ w.T, targets).backward()

    runs = {f"chunked, {c} rows": chunked(c) for c in (int(c) for c in args.chunks.split(","))}
    runs["chunked, 1024, bf16"] = chunked(1024, torch.bfloat16)
    runs["plain cross_entropy"] = plain
    times: dict[str, list[float]] = {name: [] for name in runs}
    for fn in runs.values():
        fn()  # warm-up
    for _ in range(args.repeats):  # interleaved, so that a noisy moment hits every variant alike
        for name, fn in runs.items():
            started = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - started)
    base = statistics.median(times["plain cross_entropy"])
    print(f"full softmax, {args.rows} rows x {args.items} items x d={args.d_model}, {args.threads} thread(s), "
          f"median of {args.repeats} forward+backward:")
    for name, ts in times.items():
        median = statistics.median(ts)
        print(f"  {name:22s} {median * 1000:8.1f} ms  ({base / median:.2f}x plain)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
