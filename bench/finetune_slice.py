"""Does fine-tuning on a newer slice of the log help, and does it need the users' earlier events?

Cuts a timestamped log at a quantile of its click times (``--cut``, 0.8), then:

1. trains a base model on the events before the cut (`encoders.training.train.train`,
   with its text projection);
2. fine-tunes it on the events after the cut (`encoders.training.finetune.finetune`)
   three times: on the slice alone (``context=0``), with each active user's
   ``max_len`` earlier events (the default), and the same with the new
   items started at random instead of from their titles' projection;
3. ranks the same test cases with all four models: for every user with a
   click after the cut, their last click, with their whole history as input
   (what the worker would hold for them), full ranking, history excluded;
   and apart, the cases whose target is an item first clicked after the cut.

    python bench/finetune_slice.py --data ../shared/data/amazon-musical-instruments --seeds 0 1 2 3 4

The base model is trained once per ``--out`` and seed, and reused on later runs.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from encoders.checkpoint import load_checkpoint  # noqa: E402
from encoders.data import load_dataset  # noqa: E402
from encoders.evaluation.evaluate import model_scorer, rank_metrics  # noqa: E402
from encoders.protocols import EvalCases, make_split  # noqa: E402
from encoders.ranking import mask_scores  # noqa: E402
from encoders.training.finetune import finetune, newer_slice  # noqa: E402
from encoders.training.train import train  # noqa: E402
from encoders.vocab import FIRST_ITEM  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a timestamped dataset folder or event log")
    parser.add_argument("--out", default="runs/finetune-bench", help="folder for the checkpoints")
    parser.add_argument("--cut", type=float, default=0.8, help="quantile of click times where the slice starts")
    parser.add_argument("--base-epochs", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=10, help="most fine-tuning epochs")
    parser.add_argument("--d-model", type=int, default=48)
    parser.add_argument("--max-len", type=int, default=100)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="one base and two fine-tunes per seed")
    args = parser.parse_args()

    dataset = load_dataset(args.data)
    cut = int(np.quantile([e.ts for e in dataset.clicks], args.cut))
    # Every active user's whole history: the input the worker has when their next click comes.
    whole = newer_slice(dataset, cut, context=len(dataset.clicks))
    results = {seed: _run_seed(dataset, whole, cut, Path(args.out) / f"seed{seed}", args, seed) for seed in args.seeds}
    cases = next(iter(results.values()))[MODELS[0]]["cases"]
    print(f"{dataset.name}: cut at {args.cut:.0%} of click times ({cut} ms); {cases} test cases "
          f"(each active user's last click, whole history as input); seeds {args.seeds}")
    print(f"{'model':<36} {'HR@10':>7} {'NDCG@10':>8}   NDCG@10 per seed")
    for name in MODELS:
        hr = np.mean([r[name]["hr@10"] for r in results.values()])
        ndcg = [r[name]["ndcg@10"] for r in results.values()]
        print(f"{name:<36} {hr:>7.4f} {np.mean(ndcg):>8.4f}   " + " ".join(f"{x:.4f}" for x in ndcg))
    new = [r[MODELS[0]]["new"] for r in results.values()]
    if all(new):
        print(f"cases whose target was first clicked after the cut: {new[0]['cases']} "
              "(the base cannot rank them)")
        print(f"{'model':<36} {'HR@10':>7} {'NDCG@10':>8}   median rank per seed")
        for name in MODELS:
            hr = np.mean([r[name]["new"]["hr@10"] for r in results.values()])
            ndcg = np.mean([r[name]["new"]["ndcg@10"] for r in results.values()])
            ranks = [r[name]["new"]["median_rank"] for r in results.values()]
            print(f"{name:<36} {hr:>7.4f} {ndcg:>8.4f}   " + " ".join(f"{x:.0f}" for x in ranks))
    return 0


MODELS = ("base (events before the cut)", "fine-tuned on the slice alone", "fine-tuned with earlier events",
          "the same, new items at random")


def _run_seed(dataset, whole, cut: int, out: Path, args, seed: int) -> dict[str, dict]:
    """Train the base (once per folder), fine-tune it both ways, rank the shared test cases with all three."""
    base = out / "base"
    if not (base / "metadata.json").exists():
        older = replace(dataset, name=f"{dataset.name} before {cut}", clicks=[e for e in dataset.clicks if e.ts < cut],
                        texts=[e for e in dataset.texts if e.ts < cut])
        train(older, base, d_model=args.d_model, max_len=args.max_len, epochs=args.base_epochs,
              patience=args.base_epochs, seed=seed, text_fusion=True)
    runs = (("ft-alone", 0, True), ("ft-context", None, True), ("ft-context-random", None, False))
    paths = [base] + [finetune(base, dataset, out / folder, since_ms=cut, context=context, epochs=args.epochs,
                               seed=seed, new_items_from_text=from_text) for folder, context, from_text in runs]
    known = set(load_checkpoint(base, device="cpu")[1].item_ids)
    metrics = {}
    for name, path in zip(MODELS, paths):
        model, vocab, _ = load_checkpoint(path, device="cpu")
        test = make_split(whole, vocab, "leave-one-out").test
        metrics[name] = rank_metrics(model, test, exclude_history=True)
        # Targets first clicked after the cut (the base reads them as its unknown item, and never ranks them).
        new = _subset(test, np.array([t < FIRST_ITEM or vocab.item_id(int(t)) not in known for t in test.targets]))
        metrics[name]["new"] = ({**rank_metrics(model, new, exclude_history=True), "median_rank": _median_rank(model, new)}
                                if len(new) else None)
    return metrics


def _median_rank(model, cases: EvalCases) -> float:
    """The targets' median rank among all items, the user's history excluded (1 is the top; ties to the target)."""
    with torch.inference_mode():
        scores = mask_scores(model_scorer(model.eval())(cases.inputs), [x.items for x in cases.inputs])
        targets = torch.from_numpy(cases.targets)
        ranks = (scores > scores.gather(1, targets[:, None])).sum(1) + 1
    return float(np.median(ranks.numpy()))


def _subset(cases: EvalCases, keep: np.ndarray) -> EvalCases:
    actions = None if cases.actions is None else cases.actions[keep]
    return EvalCases([x for x, k in zip(cases.inputs, keep) if k], cases.targets[keep], actions)


if __name__ == "__main__":
    raise SystemExit(main())
