"""Fine-tuning a checkpoint on a newer slice of the event log."""

import json
from dataclasses import replace

import pytest
import torch

from encoders.checkpoint import load_checkpoint, load_fusion, read_metadata
from encoders.data import Event, synthetic
from encoders.training.finetune import extend_vocab, finetune, newer_slice, start_new_items_from_text


def test_new_items_join_the_vocabulary_and_known_rows_keep_their_embeddings(synthetic_checkpoint):
    model, vocab, _ = load_checkpoint(synthetic_checkpoint, device="cpu")
    grown, bigger = extend_vocab(model, vocab, ["i0", "brand-new", "another-new"], seed=0)
    assert len(bigger) == len(vocab) + 2 and bigger.index("i0") == vocab.index("i0")
    assert bigger.item_ids[-2:] == ["another-new", "brand-new"]
    assert torch.equal(grown.item_table()[: len(vocab)], model.item_table())
    assert extend_vocab(model, vocab, ["i0"], seed=0) == (model, vocab)


def test_a_new_item_with_a_title_starts_from_its_projected_text(synthetic_checkpoint):
    from encoders.data.records import Catalogue
    from encoders.nn.text import TextEncoder
    from encoders.vocab import FIRST_ITEM, item_text

    model, vocab, _ = load_checkpoint(synthetic_checkpoint, device="cpu")
    fusion = load_fusion(synthetic_checkpoint)
    grown, bigger = extend_vocab(model, vocab, ["titled-new", "untitled-new"], seed=0)
    random_start = grown.item_emb.weight.detach().clone()
    catalogue = Catalogue(titles={"titled-new": "late night jazz"}, categories={"titled-new": ("jazz",)})

    assert start_new_items_from_text(grown, len(vocab), bigger, None, catalogue) == 0  # no projection: random
    assert torch.equal(grown.item_emb.weight, random_start)
    assert start_new_items_from_text(grown, len(vocab), bigger, fusion, catalogue) == 1

    table = grown.item_emb.weight.detach()
    titled, untitled = bigger.index("titled-new"), bigger.index("untitled-new")
    with torch.no_grad():
        projected = fusion.project(torch.from_numpy(TextEncoder(device="cpu").embed(
            [item_text("late night jazz", ("jazz",))])))[0]
    assert torch.cosine_similarity(table[titled], projected, dim=0) > 0.9999  # the direction the worker scored
    known_norm = model.item_emb.weight[FIRST_ITEM:].detach().norm(dim=1).median()
    assert torch.isclose(table[titled].norm(), known_norm)  # the length of a learned row
    assert torch.equal(table[untitled], random_start[untitled])
    assert torch.equal(table[: len(vocab)], random_start[: len(vocab)])


def test_finetune_writes_a_new_checkpoint_from_the_newer_slice(synthetic_checkpoint, tmp_path):
    base = synthetic()
    since = sorted(e.ts for e in base.clicks)[len(base.clicks) // 2]
    users = sorted({e.user_id for e in base.clicks})[:30]
    extra = [Event(u, f"new-{k % 7}", since + 86_400_000 * (k + 1), "click") for k, u in enumerate(users * 3)]
    dataset = replace(base, clicks=base.clicks + extra)
    parent = read_metadata(synthetic_checkpoint)

    out = finetune(synthetic_checkpoint, dataset, tmp_path / "ft", since_ms=since, epochs=2, progress=False)

    meta = read_metadata(out)
    report = json.loads((out / "report.json").read_text())
    assert meta.model_version != parent.model_version
    assert meta.extra["train_args"]["finetuned_from"] == parent.model_version
    assert {"hr@10", "ndcg@10"} <= set(report["test_before_finetune"]) and report["test"]["cases"] > 0
    _, vocab, _ = load_checkpoint(out, device="cpu")
    assert "new-3" in vocab and load_fusion(out) is not None
    assert len(newer_slice(dataset, since).clicks) < len(dataset.clicks)
    assert meta.extra["train_args"]["context"] == load_checkpoint(synthetic_checkpoint, device="cpu")[0].config.max_len
    assert meta.extra["train_args"]["new_items"] == {"added": 7, "from_text": 0}  # untitled: they start at random
    # The fine-tune's own schedule over the parent's way of learning.
    args, parent_args = meta.extra["train_args"], parent.extra["train_args"]
    assert {k: args[k] for k in ("epochs", "lr", "batch_size", "patience", "eval_every", "refit")} == {
        "epochs": 2, "lr": 3e-4, "batch_size": 128, "patience": 3, "eval_every": 1, "refit": False}
    assert all(args[k] == parent_args[k] for k in ("loss", "negatives", "all_windows", "weight_decay", "action_weight"))


def test_a_bad_finetune_option_names_itself(synthetic_checkpoint, tmp_path):
    from encoders.errors import ConfigError

    with pytest.raises(ConfigError, match="epochs=0 must be >= 1"):
        finetune(synthetic_checkpoint, synthetic(), tmp_path / "ft", epochs=0, progress=False)
    assert not (tmp_path / "ft").exists()


def test_no_encoders_module_imports_a_private_name_of_another():
    """finetune once borrowed train's _fit, _finish ...: what modules share is public and documented as such."""
    import ast
    from pathlib import Path

    import encoders

    borrowed = []
    for path in sorted(Path(encoders.__file__).parent.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                borrowed += [f"{path.name}: {node.module}.{a.name}" for a in node.names
                             if a.name.startswith("_") and not a.name.startswith("__")]
    assert borrowed == []


def test_the_slice_keeps_earlier_events_of_active_users_as_context():
    base = synthetic()
    since = sorted(e.ts for e in base.clicks)[len(base.clicks) // 2]
    alone, with_context = newer_slice(base, since), newer_slice(base, since, context=5)
    assert all(e.ts >= since for e in alone.clicks)
    active = {e.user_id for e in alone.clicks}
    assert {e.user_id for e in with_context.clicks} == active  # users gone quiet stay out
    history, kept = base.sequences(), with_context.sequences()
    for user in active:
        older = [e for e in history[user] if e.ts < since]
        assert kept[user][: min(5, len(older))] == older[len(older) - min(5, len(older)):]
        assert kept[user][min(5, len(older)):] == [e for e in history[user] if e.ts >= since]
    with pytest.raises(ValueError, match="context"):
        newer_slice(base, since, context=-1)
