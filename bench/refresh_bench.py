"""Encoder refreshes per second: a window encoded from scratch against a cached window extended by one event.

The worker's encoder path (`encoders.states.WindowEncoder`) on a model of the
production shape with untrained weights (cost, not quality), for every
combination of --d-model, --length (events in the window) and --batch (users
per call). "scratch" encodes each user's whole window, what every refresh
cost before windows were cached and what a cold or evicted user still costs;
"extend" appends one event to a window cached at length-1, what a refresh of
an active user costs. Medians of --repeats calls; bf16 autocast on CUDA, as
the worker runs there.

    python bench/refresh_bench.py                                  # CPU, d=64, L=50 and 200, batch 256
    python bench/refresh_bench.py --device cuda --d-model 64 256 --batch 256 1024 4096   # bench/gpu.sh
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from encoders.config import EncoderConfig  # noqa: E402
from encoders.features import from_arrays  # noqa: E402
from encoders.inference import keep_freed_memory  # noqa: E402
from encoders.nn.model import SequenceEncoder, resolve_device  # noqa: E402
from encoders.states import Window, WindowEncoder  # noqa: E402

ITEMS = 100_000
DAY_MS = 86_400_000


def windows(batch: int, length: int, rng, keyed: bool) -> list[Window]:
    out = []
    for user in range(batch):
        items = rng.integers(2, ITEMS, length)
        actions = rng.integers(2, 6, length)
        ts = 1_700_000_000_000 + np.cumsum(rng.integers(1_000, 600_000, length))
        out.append(Window(from_arrays(items, actions, ts), ts, 0, f"u{user}" if keyed else None,
                          np.arange(length, dtype=np.uint64) if keyed else None))
    return out


def truncated(window: Window, n: int) -> Window:
    return Window(window.seq.window(None, n), window.ts[:n], 0, window.cache_key, window.keys[:n])


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto [default: cpu]")
    parser.add_argument("--d-model", type=int, nargs="+", default=[64], help="model widths [default: 64]")
    parser.add_argument("--length", type=int, nargs="+", default=[50, 200], help="window lengths [default: 50 200]")
    parser.add_argument("--batch", type=int, nargs="+", default=[256], help="users per call [default: 256]")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per cell [default: 5]")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads [default: 1, as the worker]")
    parser.add_argument("--unmap-freed", action="store_true",
                        help="leave glibc's default of returning large freed blocks to the kernel (the worker "
                             "keeps them: encoders.inference.keep_freed_memory)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    if not args.unmap_freed:
        keep_freed_memory()
    device = resolve_device(args.device)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                else contextlib.nullcontext())
    rng = np.random.default_rng(0)
    print(f"device {device}{' (bf16)' if device.type == 'cuda' else ' (fp32)'}, {args.threads} CPU thread(s), "
          f"untrained weights, medians of {args.repeats}")
    print(f"{'d':>4} {'L':>4} {'batch':>6} {'scratch ms':>11} {'refreshes/s':>12} {'extend ms':>10} "
          f"{'refreshes/s':>12} {'ratio':>6}")
    for d in args.d_model:
        torch.manual_seed(0)
        model = SequenceEncoder(EncoderConfig(n_items=ITEMS, d_model=d, n_layers=2, n_heads=max(1, d // 32),
                                              max_len=max(args.length))).to(device).eval()
        for length in args.length:
            for batch in args.batch:
                full = windows(batch, length, rng, keyed=True)
                plain = [Window(w.seq, w.ts, 0) for w in full]
                scratch_enc = WindowEncoder(model, buckets=(length,), half_life_ms=30 * DAY_MS)
                with torch.inference_mode(), autocast:
                    scratch_enc.encode(plain)  # warm-up
                    scratch = [timed(lambda: scratch_enc.encode(plain), device) for _ in range(args.repeats)]
                    extend = []
                    for _ in range(args.repeats + 1):  # the first is a warm-up
                        cached = WindowEncoder(model, buckets=(length,), half_life_ms=30 * DAY_MS,
                                               cache_bytes=1 << 40)
                        cached.encode([truncated(w, length - 1) for w in full])
                        extend.append(timed(lambda: cached.encode(full), device))
                        assert cached.stats["extended"] == batch
                s, e = statistics.median(scratch), statistics.median(extend[1:])
                print(f"{d:>4} {length:>4} {batch:>6} {1000 * s:>11.1f} {batch / s:>12.0f} {1000 * e:>10.1f} "
                      f"{batch / e:>12.0f} {s / e:>5.1f}x", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
