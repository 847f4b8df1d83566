"""SASRec+ (Klenitskiy & Vasilev, RecSys 2023) run beside ours on the same file and split.

The reference's own model and data classes are imported at run time from a
checkout of ``antklen/sasrec-bert4rec-recsys23`` (``--reference``; its code
is not part of this project).  Its training module is a PyTorch Lightning
wrapper; this script runs the same steps without Lightning, so that it works
with this project's torch:

- data: ``user item`` lines, each user's lines in time order (the SASRec
  ML-1M file, ``../shared/data/ml-1m/sequences.txt.gz``, is the one the
  reference's ``data/ml-1m.txt`` names); leave-one-out exactly as its
  ``prepare_data``: the last item is the test target, the one before it the
  validation target, the rest training;
- model: its ``SASRec`` (d=64, 2 blocks, 1 head, dropout 0.1, maxlen 200),
  its ``CausalLMDataset`` (the newest ``max_length + 1`` training items),
  ``CausalLMPredictionDataset`` and ``PaddingCollateFn``;
- training (its ``SeqRec`` and ``run.py``): Adam lr 1e-3, cross-entropy over
  the whole catalogue at every position, batch 128, validation NDCG@10 on
  every user after each epoch, early stopping with patience 10, at most 100
  epochs, the best epoch's weights for the test;
- ranking: every item, the user's history excluded (its ``filter_seen``),
  HR@10 and NDCG@10 over all users (its ``compute_metrics``).

    python bench/reference_sasrec.py --reference /path/to/sasrec-bert4rec-recsys23 \\
        --data ../shared/data/ml-1m/sequences.txt.gz --threads 1      # --device cuda on a GPU

Prints one line per epoch and ends with ``reference SASRec+: ...``.
"""

from __future__ import annotations

import argparse
import gzip
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch


def read_sequences(path: Path) -> dict[int, list[int]]:
    """``user item`` lines -> {user: items in file order}."""
    sequences: dict[int, list[int]] = {}
    with (gzip.open(path, "rt") if path.suffix == ".gz" else open(path)) as f:
        for line in f:
            user, item = line.split()[:2]
            sequences.setdefault(int(user), []).append(int(item))
    return sequences


def dataset(cls, data: dict[int, list[int]], max_length: int, **attributes):
    """One of the reference's dataset classes over ``data``, without its pandas constructor."""
    ds = cls.__new__(cls)
    ds.data, ds.user_ids, ds.max_length = data, list(data), max_length
    for name, value in attributes.items():
        setattr(ds, name, value)
    return ds


def on_device(batch: dict, device: torch.device) -> dict:
    """The collated batch's tensors on ``device`` (the other fields as they are)."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def rank_metrics(model, loader, targets: dict[int, int], device: torch.device, k: int = 10) -> tuple[float, float]:
    """HR@k and NDCG@k of ``targets`` ranked among all items, history and padding excluded."""
    model.eval()
    hits = ndcg = 0.0
    with torch.no_grad():
        for batch in map(lambda b: on_device(b, device), loader):
            logits = model(batch["input_ids"], batch["attention_mask"])
            last = (batch["input_ids"] != 0).sum(dim=1) - 1
            scores = logits[torch.arange(len(last)), last]
            scores[:, 0] = -math.inf
            scores.scatter_(1, batch["full_history"], -math.inf)  # history padded with 0: already excluded
            target = torch.tensor([targets[int(u)] for u in batch["user_id"]], device=device)
            rank = (scores > scores[torch.arange(len(target)), target][:, None]).sum(dim=1)
            hit = rank < k
            hits += float(hit.sum())
            ndcg += float((1.0 / torch.log2(rank[hit].to(torch.float64) + 2.0)).sum())
    model.train()
    return hits / len(targets), ndcg / len(targets)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--reference", type=Path, required=True,
                        help="checkout of antklen/sasrec-bert4rec-recsys23 (its src/ is imported)")
    parser.add_argument("--data", type=Path, default=Path("../shared/data/ml-1m/sequences.txt.gz"),
                        help="'user item' lines, each user's in time order")
    parser.add_argument("--max-length", type=int, default=200, help="dataset.max_length (run_final.sh's for ML-1M)")
    parser.add_argument("--max-epochs", type=int, default=100, help="trainer_params.max_epochs")
    parser.add_argument("--patience", type=int, default=10, help="early stopping patience (epochs)")
    parser.add_argument("--max-seconds", type=float, default=None,
                        help="also stop at the first epoch end past this wall time (default: no limit)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")
    parser.add_argument("--seed", type=int, default=0, help="torch and numpy seed")
    parser.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1 ...")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(args.reference / "src"))
    from datasets import CausalLMDataset, CausalLMPredictionDataset, PaddingCollateFn  # noqa: E402
    from models import SASRec  # noqa: E402

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    sequences = read_sequences(args.data)
    train = {u: s[:-2] for u, s in sequences.items()}
    validation_full = {u: s[:-1] for u, s in sequences.items()}
    val_targets = {u: s[-2] for u, s in sequences.items()}
    test_targets = {u: s[-1] for u, s in sequences.items()}
    n_items = max(max(s) for s in sequences.values())

    collate = PaddingCollateFn()
    loader = torch.utils.data.DataLoader
    train_loader = loader(dataset(CausalLMDataset, train, args.max_length, num_negatives=None,
                                  label_masking_probability=0),
                          batch_size=128, shuffle=True, collate_fn=collate)
    # Validation: inputs are the training items (validation_mode drops the target); test: train + validation.
    val_loader = loader(dataset(CausalLMPredictionDataset, validation_full, args.max_length, validation_mode=True),
                        batch_size=256, collate_fn=collate)
    test_loader = loader(dataset(CausalLMPredictionDataset, validation_full, args.max_length,
                                 validation_mode=False), batch_size=256, collate_fn=collate)

    device = torch.device(args.device)
    model = SASRec(item_num=n_items, maxlen=200, hidden_units=64, num_blocks=2, num_heads=1,
                   dropout_rate=0.1).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    best, best_epoch, best_state, start = -1.0, 0, None, time.perf_counter()
    for epoch in range(1, args.max_epochs + 1):
        epoch_start = time.perf_counter()
        for batch in map(lambda b: on_device(b, device), train_loader):
            logits = model(batch["input_ids"], batch["attention_mask"])
            loss = loss_fn(logits.view(-1, logits.size(-1)), batch["labels"].view(-1))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        train_s = time.perf_counter() - epoch_start
        hr, ndcg = rank_metrics(model, val_loader, val_targets, device)
        if ndcg > best:
            best, best_epoch = ndcg, epoch
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        print(f"epoch {epoch}: train {train_s:.1f} s, valid {time.perf_counter() - epoch_start - train_s:.1f} s, "
              f"val HR@10 {hr:.4f} NDCG@10 {ndcg:.4f} (best {best:.4f} at {best_epoch})", flush=True)
        if epoch - best_epoch >= args.patience:
            break
        if args.max_seconds is not None and time.perf_counter() - start > args.max_seconds:
            print(f"stopped by --max-seconds {args.max_seconds:g}", flush=True)
            break
    wall = time.perf_counter() - start
    model.load_state_dict(best_state)
    hr, ndcg = rank_metrics(model, test_loader, test_targets, device)
    print(f"reference SASRec+: test HR@10 {hr:.4f} NDCG@10 {ndcg:.4f}; best epoch {best_epoch} of {epoch}, "
          f"val NDCG@10 {best:.4f}, {wall:.0f} s on {args.threads} thread(s), {device}", flush=True)


if __name__ == "__main__":
    main()
