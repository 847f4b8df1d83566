"""Text fusion benchmark: encoder checkpoint -> fusion training -> three-row table.

Behaviour only, text only and fused interests on the leave-one-out TEST
cases (full ranking, history excluded), as in issue 4 item 1::

    OMP_NUM_THREADS=1 python -m streams train --data ../shared/data/amazon-musical-instruments \\
        --out runs/amazon-fusion-enc --d-model 64 --max-len 50 --dropout 0.5 --epochs 200 --patience 10
    OMP_NUM_THREADS=1 python bench/text_fusion.py --checkpoint runs/amazon-fusion-enc \\
        --data ../shared/data/amazon-musical-instruments

With ``--save DIR`` the encoder is re-saved with the fusion and the item
categories (`encoders.checkpoint.save_checkpoint`).  ``--sweep`` also scores
fixed mixtures, behaviour + a x text interest, on the validation and the test
cases: what any single weight would give, whatever the gate learned (the
gate is fitted on validation cases, which a ``--refit`` encoder trained on).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from encoders.checkpoint import load_checkpoint  # noqa: E402
from encoders.data import load_dataset  # noqa: E402
from encoders.nn.text import TextEncoder  # noqa: E402
from encoders.evaluation.evaluate import score_cases  # noqa: E402
from encoders.protocols import EvalCases  # noqa: E402
from encoders.training.fusion import build_cases, evaluate_fusion, fusion_table, prepare  # noqa: E402
from encoders.training.fusion import text_vectors, train_fusion  # noqa: E402

SWEEP = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)


def sweep(fusion, model, data) -> None:
    """NDCG@10 of behaviour + a * text on the validation and test cases, for each a in SWEEP."""
    table = model.item_table().detach().float().cpu()
    for split in ("valid", "test"):
        cases = build_cases(fusion, data, model, split)
        with torch.no_grad():
            text = text_vectors(fusion, data, cases)
        where = {id(seq): i for i, seq in enumerate(cases.inputs)}
        row = []
        for a in SWEEP:
            vectors = cases.behaviour + a * text

            def score(inputs, vectors=vectors):
                return vectors[torch.tensor([where[id(s)] for s in inputs])] @ table.T

            metrics = score_cases(score, EvalCases(cases.inputs, cases.targets.numpy()), exclude_history=True)
            row.append(f"a={a:g} {metrics['ndcg@10']:.4f}")
        print(f"fixed mixtures, {split} NDCG@10 ({len(cases.targets)} cases): " + ", ".join(row))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="trained encoder checkpoint (leave-one-out, no --refit)")
    parser.add_argument("--data", required=True, help="dataset folder the encoder was trained on")
    parser.add_argument("--hidden", type=int, default=0, help="projection MLP hidden size (0: linear) [default: 0]")
    parser.add_argument("--half-life-days", type=float, default=None,
                        help="recency half-life of the text interest (default: plain mean)")
    parser.add_argument("--no-finetune", action="store_true", help="stage 2 trains the gate only")
    parser.add_argument("--gate-on", choices=("train", "valid"), default="valid",
                        help="fit the gate on half of the validation cases, early stopping on the other half "
                             "(default), or on training positions (where the encoder's own fit makes "
                             "behaviour look too good)")
    parser.add_argument("--lr", type=float, default=3e-3, help="learning rate of both stages [default: 0.003]")
    parser.add_argument("--epochs", type=int, default=200, help="most epochs of each stage [default: 200]")
    parser.add_argument("--patience", type=int, default=10,
                        help="epochs without a better validation NDCG@10 before a stage stops [default: 10]")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fusion's weights [default: 0]")
    parser.add_argument("--sweep", action="store_true",
                        help="also print validation and test NDCG@10 of behaviour + a x text for a in "
                             f"{', '.join(f'{a:g}' for a in SWEEP)}")
    parser.add_argument("--save", type=Path, default=None, help="write encoder + fusion + categories here")
    parser.add_argument("--embed-cache", default=None, help=".npy file caching the MiniLM embeddings between runs")
    parser.add_argument("--json", type=Path, default=None, help="write the report and metrics as JSON")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    model, vocab, meta = load_checkpoint(args.checkpoint, device="cpu")
    dataset = load_dataset(args.data)
    data = prepare(dataset, vocab, TextEncoder(device="cpu"), cache=args.embed_cache)
    half_life = args.half_life_days * 86400.0 if args.half_life_days else None
    fusion, report = train_fusion(model, vocab, dataset, data=data, hidden=args.hidden, half_life_s=half_life,
                                  finetune_projection=not args.no_finetune, gate_on=args.gate_on, lr=args.lr,
                                  epochs=args.epochs, patience=args.patience, seed=args.seed)
    metrics = evaluate_fusion(fusion, model, data, "test")
    print(f"{dataset.name}: encoder {meta.model_version}, {report['pairs']} text/item pairs, "
          f"{report['gate_cases']} gate cases, {time.perf_counter() - started:.0f}s")
    s1, s2 = report["stage1"], report.get("stage2")
    # Its NDCG@10 is on what it stopped on: the validation users' texts, or held-out (text, item) pairs.
    print(f"stage 1 (projection, stopped on {s1['stopped_on']}): NDCG@10 {s1['valid_ndcg10']:.4f} "
          f"(best epoch {s1['best_epoch']})")
    if s2:
        print(f"stage 2 (gate on {args.gate_on}): valid fused NDCG@10 {s2['valid_ndcg10_before']:.4f} (initial gate) "
              f"-> {s2['valid_ndcg10']:.4f} (best epoch {s2['best_epoch']})")
    print(fusion_table(metrics))
    b, f = metrics["behaviour only"]["ndcg@10"], metrics["fused"]["ndcg@10"]
    print(f"fused - behaviour only NDCG@10: {f - b:+.4f} ({(f - b) / b * 100:+.1f}%)")
    if args.sweep:
        sweep(fusion, model, data)
    if args.save:
        from encoders.checkpoint import save_checkpoint

        categories = {k: v for k, v in dataset.catalogue.categories.items() if k in vocab}
        save_checkpoint(args.save, model, vocab, meta, fusion=fusion, categories=categories)
    if args.json:
        args.json.write_text(json.dumps({"report": report, "metrics": metrics, "args": vars(args)}, indent=2,
                                        default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
