"""Training the text fusion (`encoders.nn.fusion.TextFusion`: the projection and the gate, described there).

Training (`train_fusion`) keeps the behaviour encoder and its item table
frozen and runs two stages on the TRAINING part of a leave-one-out split:

1. projection: softmax cross-entropy over the item table on (text, item)
   pairs -- catalogue "title | genres" strings and text events about a
   training-part item;
2. gate (and, optionally, a fine-tune of the projection): at each training
   position t of a user with texts, the behaviour vector at t and the text
   interest of the user's texts about events up to t predict item t + 1.

Leakage: a text about a click belongs to that click's position; a case whose
target is click n sees only texts about clicks 0..n-1 (never the target's
review, even when it shares the timestamp of the previous click, as Amazon's
day-resolution reviews often do).  A text about no known click is anchored
by time and seen only by targets strictly later than it.
"""

from __future__ import annotations

import copy
import os
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..data.records import Dataset, Event
from ..features import SeqArrays, from_events, pad_batch
from ..nn.fusion import TextFusion
from ..nn.model import SequenceEncoder
from ..protocols import EvalCases
from ..ranking import add_rank_metrics, item_scores, mask_scores  # the evaluation's own ranking rule
from ..vocab import FIRST_ITEM, ItemVocab, item_text

__all__ = ["FusionCases", "FusionData", "UserTexts", "build_cases", "catalogue_pairs", "evaluate_fusion",
           "fusion_table", "prepare", "text_vectors", "train_fusion", "user_texts"]

# Stage 1 falls back to a held-out tenth of its (text, item) pairs only when there are at least this many pairs.
MIN_HELD_OUT_PAIRS = 200

# ---------------------------------------------------------------- texts per user
@dataclass(frozen=True)
class UserTexts:
    """One user's text events, anchored to their click sequence.

    ``position[j]``: text j may be seen by a case whose target is click n iff
    ``position[j] < n``.  A text about an item the user clicked is anchored
    at that click (the one nearest before it in time, else the first after),
    or later when it was written after later clicks, so the target's own
    review is never seen; a text about no clicked item at the last click at or
    before its time, so only strictly later targets see it.
    """

    rows: np.ndarray  # indices into the embedding matrix
    position: np.ndarray
    ts: np.ndarray
    items: tuple[str, ...]  # the item each text is about ("" for none)

    def visible(self, n: int) -> np.ndarray:
        """Mask of texts a case with target click ``n`` (input = clicks 0..n-1) may use."""
        return self.position < n


def _anchor(event: Event, clicks: list[Event], click_ts: np.ndarray, where: dict[str, list[int]]) -> int:
    last_at_or_before = int(np.searchsorted(click_ts, event.ts, side="right")) - 1
    same = where.get(event.item_id) if event.item_id else None
    if not same:
        return last_at_or_before
    before = [i for i in same if clicks[i].ts <= event.ts]
    click = before[-1] if before else same[0]
    # Clicks strictly before the text: a review written after later clicks is seen only after them.
    strictly_before = int(np.searchsorted(click_ts, event.ts, side="left")) - 1
    return max(click, strictly_before)


def user_texts(dataset: Dataset, start_row: int = 0) -> tuple[dict[str, UserTexts], list[str]]:
    """Texts of every user anchored to their clicks, and the strings to embed (row order).

    Only users with clicks are kept (a text-only user has no evaluation case).
    """
    sequences = dataset.sequences()
    by_user: dict[str, list[Event]] = defaultdict(list)
    for event in dataset.texts:
        if event.text and event.user_id in sequences:
            by_user[event.user_id].append(event)
    out, strings = {}, []
    for user, texts in by_user.items():
        clicks = sequences[user]
        click_ts = np.asarray([c.ts for c in clicks], dtype=np.int64)
        where: dict[str, list[int]] = defaultdict(list)
        for i, c in enumerate(clicks):
            where[c.item_id].append(i)
        rows, positions, ts, items = [], [], [], []
        for event in texts:
            rows.append(start_row + len(strings))
            strings.append(event.text)
            positions.append(_anchor(event, clicks, click_ts, where))
            ts.append(event.ts)
            items.append(event.item_id or "")
        out[user] = UserTexts(np.asarray(rows, np.int64), np.asarray(positions, np.int64),
                              np.asarray(ts, np.int64), tuple(items))
    return out, strings


def catalogue_pairs(dataset: Dataset, vocab: ItemVocab) -> tuple[list[str], list[int]]:
    """("title | genres", item index) for catalogue items in ``vocab``."""
    strings, items = [], []
    cat = dataset.catalogue
    for item_id in sorted(set(cat.titles) | set(cat.categories)):
        if item_id in vocab:
            strings.append(item_text(cat.titles.get(item_id), cat.categories.get(item_id)))
            items.append(vocab.index(item_id))
    return strings, items


# ---------------------------------------------------------------- training
@dataclass
class FusionData:
    """Embeddings and per-user anchoring shared by training and evaluation (built once)."""

    emb: torch.Tensor  # [n_strings, 384]: user texts, then catalogue strings
    texts: dict[str, UserTexts]
    users: list[str]  # users in `Dataset.sequences` order (= `make_split` order)
    seqs: list[SeqArrays]
    click_ts: list[np.ndarray]  # absolute ms per click, aligned with seqs
    pair_rows: np.ndarray  # stage-1 pairs: embedding row -> item index
    pair_items: np.ndarray


def prepare(dataset: Dataset, vocab: ItemVocab, text_encoder: Any, batch_size: int = 64,
            cache: str | None = None) -> FusionData:
    """Embed every text and catalogue string once (batched) and anchor texts to clicks.

    Stage-1 pairs use only texts about a TRAINING-part click (leave-one-out:
    all but a user's last two clicks) plus the catalogue strings.  ``cache``
    (a .npy path) keeps the embeddings between runs; it is reused only when
    its row count matches.
    """
    texts, strings = user_texts(dataset)
    cat_strings, cat_items = catalogue_pairs(dataset, vocab)
    all_strings = strings + cat_strings
    emb = np.load(cache) if cache and os.path.exists(cache) else None
    if emb is None or emb.shape[0] != len(all_strings):
        emb = np.zeros((len(all_strings), 384), dtype=np.float32)
        step = 512
        for start in tqdm(range(0, len(all_strings), step), desc="embed texts", unit="chunk"):
            emb[start : start + step] = text_encoder.embed(all_strings[start : start + step], batch_size=batch_size)
        if cache:
            np.save(cache, emb)
    sequences = dataset.sequences()
    users = list(sequences)
    seqs = [from_events(sequences[u], vocab) for u in users]
    click_ts = [np.asarray([e.ts for e in sequences[u]], np.int64) for u in users]
    pair_rows, pair_items = [], []
    for u, seq in zip(users, seqs):
        ut = texts.get(u)
        if ut is None:
            continue
        n_train = len(seq) - 2 if len(seq) >= 3 else len(seq)
        for row, pos, item in zip(ut.rows, ut.position, ut.items):
            # A text about an item, seen by the training part only (never about a valid/test target).
            if pos < n_train and item in vocab:
                pair_rows.append(int(row))
                pair_items.append(vocab.index(item))
    pair_rows += [len(strings) + i for i in range(len(cat_items))]
    pair_items += cat_items
    return FusionData(torch.from_numpy(emb), texts, users, seqs, click_ts,
                      np.asarray(pair_rows, np.int64), np.asarray(pair_items, np.int64))


def _hidden_states(model: SequenceEncoder, seqs: Sequence[SeqArrays]) -> list[torch.Tensor]:
    """Per sequence, hidden states [m, d] of its newest m = min(n, max_len) events (frozen model)."""
    device, max_len = next(model.parameters()).device, model.config.max_len
    out: list[torch.Tensor] = []
    with torch.inference_mode():
        for start in range(0, len(seqs), 256):
            chunk = [s.window(-max_len, None) for s in seqs[start : start + 256]]
            batch = pad_batch(chunk, max(max(len(s) for s in chunk), 1))
            tensors = [torch.from_numpy(a).to(device) for a in (batch.items, batch.actions, batch.gaps)]
            hidden = model(*tensors).float().cpu()
            out.extend(hidden[i, : len(s)].clone() for i, s in enumerate(chunk))
    return out


@dataclass
class FusionCases:
    """Cases for the gate: behaviour vector, sparse weights over text rows, target, input history."""

    behaviour: torch.Tensor  # [N, d]
    text_weights: torch.Tensor  # sparse [N, n_strings], rows sum to 1 where has_text
    has_text: torch.Tensor  # [N] bool
    targets: torch.Tensor  # [N]
    inputs: list[SeqArrays]


def build_cases(fusion: TextFusion, data: FusionData, model: SequenceEncoder, which: str,
                hidden: list[torch.Tensor] | None = None) -> FusionCases:
    """Cases of ``which``: "train" (every training position of users with texts), "valid" or "test".

    A case with target click n has input clicks 0..n-1 and sees the user's
    texts with `UserTexts.visible` (n): never the target's own text.  Test
    inputs include the validation click (as `encoders.protocols` does).
    Training cases need a behaviour vector of their own, so only the
    newest ``max_len`` positions of a long history are used.
    """
    max_len = model.config.max_len
    # Valid/test inputs are exactly the protocol's: all but the last (two) clicks.
    if which == "train":
        hidden = hidden if hidden is not None else _hidden_states(model, [_train_part(s) for s in data.seqs])
    else:
        drop = 1 if which == "test" else 2
        hidden = _hidden_states(model, [s.window(None, -drop) if len(s) >= 3 else s for s in data.seqs])
    beh, rows_i, cols_i, vals, has_t, targets, inputs = [], [], [], [], [], [], []
    for u, seq, ts, h in zip(data.users, data.seqs, data.click_ts, hidden):
        ut, n_all = data.texts.get(u), len(seq)
        if which == "train":
            if ut is None:
                continue
            n_train = len(_train_part(seq))
            offset = max(0, n_train - max_len)
            targets_at: Sequence[int] = range(max(1, offset + 1), n_train)
        else:
            if n_all < 3:
                continue
            targets_at = [n_all - 1 if which == "test" else n_all - 2]
            offset = max(0, targets_at[0] - max_len)
        for n in targets_at:
            idx = len(targets)
            beh.append(h[n - 1 - offset])
            if ut is not None:
                keep = ut.visible(n)
                rows_i.extend([idx] * int(keep.sum()))
                cols_i.extend(ut.rows[keep].tolist())
                vals.extend(fusion.weights(ut.ts[keep], int(ts[n - 1])).tolist())
                has_t.append(bool(keep.any()))
            else:
                has_t.append(False)
            targets.append(int(seq.items[n]))
            inputs.append(seq.window(None, n))
    n_cases = len(targets)
    index = torch.tensor([rows_i, cols_i], dtype=torch.long).reshape(2, -1)
    weights = torch.sparse_coo_tensor(index, torch.tensor(vals, dtype=torch.float32),
                                      (n_cases, data.emb.shape[0]), check_invariants=True).coalesce()
    return FusionCases(torch.stack(beh) if beh else torch.zeros(0, fusion.d_model), weights,
                       torch.tensor(has_t, dtype=torch.bool), torch.tensor(targets, dtype=torch.long), inputs)


def _train_part(seq: SeqArrays) -> SeqArrays:
    return seq.window(None, -2) if len(seq) >= 3 else seq


def text_vectors(fusion: TextFusion, data: FusionData, cases: FusionCases) -> torch.Tensor:
    """Text interest [N, d] of each case (zeros where it has no text)."""
    return torch.sparse.mm(cases.text_weights, fusion.project(data.emb))


def _loss(vectors: torch.Tensor, table: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = vectors @ table.T
    logits[:, :FIRST_ITEM] = float("-inf")
    return nn.functional.cross_entropy(logits, targets)


def _ndcg10(vectors: torch.Tensor, table: torch.Tensor, cases: FusionCases) -> float:
    """NDCG@10 with history excluded (the evaluation's rule), for early stopping."""
    if len(cases.targets) == 0:
        return 0.0
    scores = mask_scores(item_scores(vectors, table).detach().clone(), [s.items for s in cases.inputs])
    sums = {f"{m}@10": 0.0 for m in ("hr", "ndcg", "mrr")}
    add_rank_metrics(sums, scores, cases.targets, (10,))
    return sums["ndcg@10"] / max(len(cases.targets), 1)


def train_fusion(
    model: SequenceEncoder,
    vocab: ItemVocab,
    dataset: Dataset,
    text_encoder: Any = None,
    *,
    data: FusionData | None = None,
    hidden: int = 0,
    half_life_s: float | None = None,
    finetune_projection: bool = True,
    gate_on: str = "valid",
    epochs: int = 200,
    patience: int = 10,
    lr: float = 3e-3,
    weight_decay: float = 1e-4,
    batch_size: int = 256,
    seed: int = 0,
    deadline: float | None = None,
) -> tuple[TextFusion, dict[str, Any]]:
    """Train a `TextFusion` on top of a trained, frozen ``model``; returns it and a report.

    Leave-one-out only: stage 1 fits the projection on (text, item) pairs of
    the training part and the catalogue (`_fit_projection`); stage 2 fits
    the gate.  With ``gate_on="train"`` it
    fits the gate (and, with ``finetune_projection``, the projection) on the
    training positions of users with texts, early-stopped on the fused
    validation NDCG@10.

    ``gate_on="valid"`` (the default) fits the gate instead on half of the validation cases
    (every other one) and stops on the other half: the encoder has fitted
    its own training positions, so there its behaviour vector looks better
    than it will on unseen targets and a gate fitted there over-trusts it.
    The projection is then not fine-tuned (too few cases).  Test cases are
    never used.

    ``deadline`` (a `time.perf_counter` reading) ends each stage at the
    first epoch end past it, keeping its best weights so far.

    >>> fusion, report = train_fusion(model, vocab, dataset, TextEncoder(device="cpu"))  # doctest: +SKIP
    """
    torch.manual_seed(seed)
    if data is None:
        data = prepare(dataset, vocab, text_encoder)
    model.eval()
    table = model.item_table().detach().float().cpu()
    fusion = TextFusion(data.emb.shape[1], model.config.d_model, hidden=hidden, half_life_s=half_life_s)
    if gate_on not in ("train", "valid"):
        raise ValueError(f"gate_on must be 'train' or 'valid', got {gate_on!r}")
    valid = build_cases(fusion, data, model, "valid")
    if gate_on == "valid":
        idx = torch.arange(len(valid.targets))
        train_cases, valid = _subset(valid, idx % 2 == 0), _subset(valid, idx % 2 == 1)
        finetune_projection = False
    else:
        train_cases = build_cases(fusion, data, model, "train")
    report: dict[str, Any] = {"pairs": len(data.pair_rows), "gate_cases": len(train_cases.targets),
                              "valid_cases": len(valid.targets)}

    def valid_text() -> float:
        with torch.no_grad():
            t = text_vectors(fusion, data, valid)
            keep = valid.has_text
            sub = FusionCases(valid.behaviour[keep], valid.text_weights, keep[keep],
                              valid.targets[keep], [c for c, k in zip(valid.inputs, keep) if k])
            return _ndcg10(t[keep], table, sub)

    def valid_fused() -> float:
        with torch.no_grad():
            fused = fusion.fuse(valid.behaviour, text_vectors(fusion, data, valid),
                                torch.ones_like(valid.has_text), valid.has_text)
            return _ndcg10(fused, table, valid)

    has_valid_text = bool(valid.has_text.any())
    report["stage1"] = _fit_projection(fusion, data, table, valid_text if has_valid_text else None,
                                       epochs=epochs, patience=patience, lr=lr, weight_decay=weight_decay,
                                       batch_size=batch_size, seed=seed, deadline=deadline)
    # Stage 2: gate (and projection) on next-item targets of training positions with texts.
    groups = [{"params": list(fusion.gate.parameters()), "lr": lr}]
    if finetune_projection:
        groups.append({"params": list(fusion.proj.parameters()), "lr": lr / 3})
    opt = torch.optim.AdamW(groups, weight_decay=weight_decay)
    has_t = train_cases.has_text
    gate_idx = torch.nonzero(has_t)[:, 0]
    weights = train_cases.text_weights

    def gate_loss(idx: torch.Tensor) -> torch.Tensor:
        case = gate_idx[idx]
        t = torch.sparse.mm(_rows(weights, case), fusion.project(data.emb))
        fused = fusion.fuse(train_cases.behaviour[case], t, torch.ones(len(case), dtype=torch.bool),
                            torch.ones(len(case), dtype=torch.bool))
        return _loss(fused, table, train_cases.targets[case])

    if len(gate_idx) and has_valid_text:
        report["stage2"] = _fit(fusion, opt, epochs, patience, len(gate_idx), batch_size, valid_fused, "gate",
                                gate_loss, deadline)
    fusion.eval()
    return fusion, report


def _fit_projection(fusion: TextFusion, data: FusionData, table: torch.Tensor, valid_text: Callable[[], float] | None,
                    *, epochs: int, patience: int, lr: float, weight_decay: float, batch_size: int, seed: int,
                    deadline: float | None) -> dict[str, Any]:
    """Stage 1: the projection on (text, item) pairs; `_fit`'s report plus what it stopped on.

    It stops on the validation users' texts (``valid_text``).  Where there are none, or they never beat the
    untrained projection (a log where few users write: ml-latest-small's ~60 taggers score 0.0 throughout), it fits
    again from the start, stopped on a held-out tenth of the pairs (each text's own item), given
    `MIN_HELD_OUT_PAIRS`: before, the untrained projection was kept, useless to a new item's title.
    """
    rows, items = torch.from_numpy(data.pair_rows), torch.from_numpy(data.pair_items)
    rng = torch.get_rng_state()

    def fit(rows: torch.Tensor, items: torch.Tensor, validate: Callable[[], float] | None,
            stopped_on: str) -> dict[str, Any]:
        opt = torch.optim.AdamW(fusion.proj.parameters(), lr=lr, weight_decay=weight_decay)
        report = _fit(fusion, opt, epochs, patience, len(rows), batch_size, validate, "projection",
                      lambda idx: _loss(fusion.project(data.emb[rows[idx]]), table, items[idx]), deadline)
        return {**report, "stopped_on": stopped_on}

    if valid_text is not None:
        report = fit(rows, items, valid_text, "users with texts")
        if report["best_epoch"] > 0 or report["stopped_by_max_seconds"] or len(rows) < MIN_HELD_OUT_PAIRS:
            return report
        torch.set_rng_state(rng)  # `_fit` restored the untrained weights; this replays the same batches
        why = "the validation users' texts never beat the untrained projection"
    elif len(rows) < MIN_HELD_OUT_PAIRS:
        return fit(rows, items, None, "nothing: all epochs")
    else:
        why = "no validation user has a text"
    rows, items, held_rows, held_items = _hold_out(rows, items, seed)

    def held_out_pairs() -> float:
        with torch.no_grad():
            return _pairs_ndcg10(fusion.project(data.emb[held_rows]), table, held_items)

    return fit(rows, items, held_out_pairs, f"{len(held_rows)} held-out text/item pairs ({why})")


def _hold_out(rows: torch.Tensor, items: torch.Tensor, seed: int,
              share: float = 0.1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rows, items) to fit on and (rows, items) held out: a seeded ``share`` of the pairs, at least one."""
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))
    held, kept = order[: max(1, int(share * len(rows)))], order[max(1, int(share * len(rows))):]
    return rows[kept], items[kept], rows[held], items[held]


def _pairs_ndcg10(vectors: torch.Tensor, table: torch.Tensor, targets: torch.Tensor) -> float:
    """NDCG@10 of each text's own item among every real item (stage 1's held-out check)."""
    scores = mask_scores(item_scores(vectors, table).detach().clone(), None)
    sums = {f"{m}@10": 0.0 for m in ("hr", "ndcg", "mrr")}
    add_rank_metrics(sums, scores, targets, (10,))
    return sums["ndcg@10"] / max(len(targets), 1)


def _rows(sparse: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    return torch.index_select(sparse, 0, rows)


def _fit(fusion: TextFusion, opt: torch.optim.Optimizer, epochs: int, patience: int, n: int, batch_size: int,
         validate: Callable[[], float] | None, name: str,
         loss_fn: Callable[[torch.Tensor], torch.Tensor], deadline: float | None = None) -> dict[str, Any]:
    """Minibatch epochs with early stopping on ``validate()``; restores the best weights.

    ``validate=None``: all ``epochs`` run and the last weights are kept.
    Past ``deadline`` (a `time.perf_counter` reading) no further epoch starts.
    """
    if validate is None:
        validate = lambda: 0.0  # noqa: E731
        patience = epochs + 1
    best, best_epoch, best_state, bad = validate(), 0, copy.deepcopy(fusion.state_dict()), 0
    start_score, out_of_time = best, False
    bar = tqdm(range(1, epochs + 1), desc=f"fusion {name}", unit="epoch")
    for epoch in bar:
        fusion.train()
        total = 0.0
        for idx in torch.randperm(n).split(batch_size):
            opt.zero_grad()
            loss = loss_fn(idx)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        fusion.eval()
        score = validate()
        bar.set_postfix(loss=f"{total / max(n, 1):.3f}", val_ndcg10=f"{score:.4f}")
        if score > best or patience > epochs:
            best, best_epoch, best_state, bad = score, epoch, copy.deepcopy(fusion.state_dict()), 0
        else:
            bad += 1
            if bad >= patience:
                break
        if deadline is not None and time.perf_counter() > deadline:
            out_of_time = True
            break
    bar.close()
    fusion.load_state_dict(best_state)
    return {"valid_ndcg10_before": start_score, "valid_ndcg10": best, "best_epoch": best_epoch,
            "stopped_by_max_seconds": out_of_time}


# ---------------------------------------------------------------- evaluation
def _case_scorer(vectors: torch.Tensor, cases: FusionCases, table: torch.Tensor,
                 defined: torch.Tensor | None = None) -> Callable[..., torch.Tensor]:
    """An `encoders.evaluation.evaluate` scorer over these exact cases (looked up by identity).

    Rows where ``defined`` is False score -inf everywhere, so they count as
    misses (a zero vector would tie every item, and ties go to the target).
    """
    where = {id(seq): i for i, seq in enumerate(cases.inputs)}

    def score(inputs: Sequence[SeqArrays]) -> torch.Tensor:
        rows = torch.tensor([where[id(s)] for s in inputs], dtype=torch.long)
        scores = vectors[rows] @ table.T
        if defined is not None:
            scores[~defined[rows]] = float("-inf")
        return scores

    return score


@torch.no_grad()
def evaluate_fusion(fusion: TextFusion, model: SequenceEncoder, data: FusionData,
                    split: str = "test") -> dict[str, dict[str, Any]]:
    """Rows "behaviour only", "text only", "fused" (+ the same on users with texts) on leave-one-out cases.

    Full ranking with history excluded (`encoders.evaluation.evaluate.score_cases`).
    "text only" scores the text interest alone; a case without any visible
    text counts as a miss there, and "... (users with text)" restricts all
    three rows to the cases that have one.
    """
    from ..evaluation.evaluate import score_cases

    fusion.eval()
    model.eval()
    table = model.item_table().detach().float().cpu()
    cases = build_cases(fusion, data, model, split)
    text = text_vectors(fusion, data, cases)
    fused = fusion.fuse(cases.behaviour, text, torch.ones_like(cases.has_text), cases.has_text)
    out: dict[str, dict[str, Any]] = {}
    subsets = {"": torch.ones_like(cases.has_text), " (users with text)": cases.has_text}
    for suffix, keep in subsets.items():
        sub = _subset(cases, keep)
        for name, vectors in (("behaviour only", cases.behaviour), ("text only", text), ("fused", fused)):
            ev = EvalCases(sub.inputs, sub.targets.numpy())
            defined = sub.has_text if name == "text only" else None
            out[name + suffix] = score_cases(_case_scorer(vectors[keep], sub, table, defined), ev,
                                             exclude_history=True)
    return out


def _subset(cases: FusionCases, keep: torch.Tensor) -> FusionCases:
    idx = torch.nonzero(keep)[:, 0]
    return FusionCases(cases.behaviour[idx], _rows(cases.text_weights, idx), cases.has_text[idx],
                       cases.targets[idx], [cases.inputs[i] for i in idx.tolist()])


def fusion_table(metrics: dict[str, dict[str, Any]]) -> str:
    """`evaluate_fusion` rows as a text table."""
    lines = [f"{'interest':<34} {'HR@10':>7} {'NDCG@10':>8} {'HR@20':>7} {'NDCG@20':>8} {'cases':>6}"]
    for name, m in metrics.items():
        lines.append(f"{name:<34} {m['hr@10']:>7.4f} {m['ndcg@10']:>8.4f} {m['hr@20']:>7.4f} "
                     f"{m['ndcg@20']:>8.4f} {m['cases']:>6}")
    return "\n".join(lines)
