"""Train several encoder configurations side by side and print their test figures.

Each configuration is one `encoders.training.train.train` run in its own process, so
several small models share one GPU (or the CPU cores); a table of validation
and test figures, epochs and training time comes last, sorted by test NDCG@10,
and every run's report.json is kept under --out.

    python bench/train_sweep.py --data ../shared/data/ml-1m --out runs/sweep --parallel 4 \\
        --config base: --config wide:d_model=128 --config deep:d_model=128,n_layers=4,n_heads=4,dropout=0.3

A configuration is NAME:key=value,...; keys are `TrainConfig` options
(`encoders.training.config`: d_model, n_layers, n_heads, max_len, dropout, lr,
weight_decay, batch_size, loss, negatives, all_windows, refit, patience,
epochs, max_seconds, seed, action_weight, ...).  Every configuration is
checked before the first run starts: a misspelt key or a bad value stops the
sweep at once with a line naming it.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

if TYPE_CHECKING:
    from encoders.training.config import TrainConfig


def _value(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def parse_config(spec: str) -> tuple[str, dict[str, Any]]:
    name, _, rest = spec.partition(":")
    pairs = [p.split("=", 1) for p in rest.split(",") if p]
    if not name or any(len(p) != 2 for p in pairs):
        raise SystemExit(f"train_sweep: error: bad --config {spec!r}; expected NAME:key=value,...")
    return name, {k: _value(v) for k, v in pairs}


def checked_configs(specs: list[str]) -> list[tuple[str, dict[str, Any], TrainConfig]]:
    """(name, settings as given, the run's TrainConfig) of each --config; exits naming a bad key or value."""
    from encoders.errors import ConfigError
    from encoders.training.config import TrainConfig

    configs = []
    for name, settings in map(parse_config, specs):
        try:
            # No progress bars: the runs share one terminal.
            config = TrainConfig.from_dict(settings, f"--config {name}").replace(progress=False)
        except ConfigError as exc:
            raise SystemExit(f"train_sweep: error: {exc}") from None
        configs.append((name, settings, config))
    return configs


def run_one(data: str, out: str, name: str, settings: dict[str, Any], config: TrainConfig) -> dict[str, Any]:
    import torch

    from encoders.data import load_dataset
    from encoders.training.train import train

    torch.set_num_threads(2)  # the processes share the machine's cores
    started = time.perf_counter()
    path = train(load_dataset(data), Path(out) / name, config)
    report = json.loads((path / "report.json").read_text())
    return {"name": name, "kwargs": settings, "wall_seconds": round(time.perf_counter() - started, 1), **report}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True, help="folder for the checkpoints and reports")
    parser.add_argument("--config", action="append", required=True, help="NAME:key=value,... (repeatable)")
    parser.add_argument("--parallel", type=int, default=2, help="runs at a time")
    parser.add_argument("--summary", default=None, help="also write the results as JSON here")
    args = parser.parse_args()
    configs = checked_configs(args.config)
    results = []
    context = multiprocessing.get_context("spawn")  # CUDA cannot be forked
    with ProcessPoolExecutor(args.parallel, mp_context=context) as pool:
        futures = {pool.submit(run_one, args.data, args.out, *c): c[0] for c in configs}
        for future in as_completed(futures):
            try:
                results.append(future.result())
                r = results[-1]
                print(f"done {r['name']}: test NDCG@10 {r['test']['ndcg@10']:.4f} in {r['wall_seconds']}s",
                      flush=True)
            except Exception as exc:  # one failed run must not hide the others' results
                print(f"failed {futures[future]}: {type(exc).__name__}: {exc}", flush=True)
    results.sort(key=lambda r: -r["test"]["ndcg@10"])
    if args.summary:
        Path(args.summary).write_text(json.dumps(results, indent=1))
    print(f"{'config':<14} {'epochs':>6} {'best':>5} {'train s':>8} {'val NDCG':>9} "
          f"{'HR@10':>7} {'NDCG@10':>8} {'HR@20':>7} {'NDCG@20':>8}  settings")
    for r in results:
        best = next((e["valid"] for e in r["epochs"] if e["epoch"] == r["best_epoch"]), None) or {}
        t = r["test"]
        print(f"{r['name']:<14} {len(r['epochs']):>6} {r['best_epoch']:>5} {r['train_seconds']:>8.0f} "
              f"{best.get('ndcg@10', float('nan')):>9.4f} {t['hr@10']:>7.4f} {t['ndcg@10']:>8.4f} "
              f"{t['hr@20']:>7.4f} {t['ndcg@20']:>8.4f}  {r['kwargs']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
