"""Text fusion: gate limits, projection training, leakage rules, checkpoint round trip."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from encoders.checkpoint import (CheckpointMetadata, load_categories, load_checkpoint, load_fusion,
                                 read_metadata, save_checkpoint)
from encoders.config import EncoderConfig
from encoders.data import Catalogue, Dataset, Event
from encoders.nn.fusion import TextFusion
from encoders.training.fusion import MIN_HELD_OUT_PAIRS, build_cases, catalogue_pairs, evaluate_fusion, prepare
from encoders.training.fusion import _fit_projection, train_fusion, user_texts
from encoders.nn.model import SequenceEncoder
from encoders.vocab import ItemVocab

DAY = 86_400_000


class HashEncoder:
    """Deterministic stand-in for MiniLM: a unit vector per distinct string (no model load)."""

    dim = 384

    def embed(self, texts, batch_size: int = 64) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")
            v = np.random.default_rng(seed).standard_normal(self.dim)
            out[i] = v / np.linalg.norm(v)
        return out


def _model(n_items: int, d: int = 16) -> SequenceEncoder:
    torch.manual_seed(0)
    model = SequenceEncoder(EncoderConfig(n_items=n_items, d_model=d, n_layers=1, n_heads=1, max_len=8)).eval()
    with torch.no_grad():  # a trained table's scale (the init's std 0.02 would need huge projections)
        model.item_emb.weight.normal_()
    return model


def test_gate_limits_are_exact() -> None:
    torch.manual_seed(0)
    fusion = TextFusion(text_dim=384, d_model=16)
    with torch.no_grad():  # a non-trivial gate, so the limits are not an accident of the init
        fusion.gate.weight.normal_()
    b, t = torch.randn(4, 16), torch.randn(4, 16)
    has_b = torch.tensor([True, False, True, False])
    has_t = torch.tensor([False, True, True, False])
    out = fusion.fuse(b, t, has_b, has_t)
    assert torch.equal(out[0], b[0])  # no text -> behaviour exactly
    assert torch.equal(out[1], t[1])  # no behaviour -> text exactly
    g = fusion.gate_values(b[2:3], t[2:3])
    assert torch.allclose(out[2], (g * b[2:3] + (1 - g) * t[2:3])[0], atol=1e-6)
    assert not torch.allclose(out[2], b[2]) and not torch.allclose(out[2], t[2])
    numpy_out = fusion.fuse_numpy(b.numpy(), t.numpy(), has_b.numpy(), has_t.numpy())
    np.testing.assert_allclose(numpy_out, out.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_text_interest_is_the_weighted_mean_of_projections() -> None:
    fusion = TextFusion(text_dim=384, d_model=16).eval()
    emb = [np.eye(384, dtype=np.float32)[i] for i in range(3)]
    proj = fusion.project(torch.from_numpy(np.stack(emb))).detach().numpy()
    np.testing.assert_allclose(fusion.text_interest(emb, [0, DAY, 2 * DAY]), proj.mean(0), rtol=1e-5, atol=1e-6)
    fusion.half_life_s = 86_400.0  # one day: the newest text weighs twice the one before
    w = np.array([0.25, 0.5, 1.0]) / 1.75
    np.testing.assert_allclose(fusion.text_interest(emb, [0, DAY, 2 * DAY]), w @ proj, rtol=1e-5, atol=1e-6)
    assert fusion.text_interest([], []).shape == (16,)


def _catalogue_dataset(n_items: int = 12) -> Dataset:
    """Items with distinct titles; a few users so that validation cases exist."""
    titles = {f"i{k}": f"title of item {k}" for k in range(n_items)}
    clicks = [Event(f"u{u}", f"i{(2 * u + j) % n_items}", (u * 10 + j) * DAY, "buy")
              for u in range(6) for j in range(4)]
    return Dataset("tiny", clicks, [], Catalogue(titles, {k: ("cat",) for k in titles}))


def test_projection_ranks_the_paired_item_first() -> None:
    dataset = _catalogue_dataset()
    vocab = ItemVocab.from_items(e.item_id for e in dataset.clicks)
    model = _model(len(vocab))
    encoder = HashEncoder()
    fusion, report = train_fusion(model, vocab, dataset, encoder, epochs=150, patience=150, lr=3e-2, batch_size=4)
    assert report["pairs"] == len(dataset.catalogue.titles)
    strings, items = catalogue_pairs(dataset, vocab)
    assert strings[0] == "title of item 0 | cat"
    emb = torch.from_numpy(encoder.embed(strings))
    logits = fusion.project(emb).detach() @ model.item_table().detach().T
    logits[:, :2] = float("-inf")
    assert logits.argmax(1).tolist() == items
    assert sorted(items) == sorted(vocab.index(k) for k in dataset.catalogue.titles)


class TableEncoder:
    """Texts that say which item they are about: item k's title embeds as a fixed linear map of its table row."""

    def __init__(self, model, vocab: ItemVocab, titles: dict[str, str]) -> None:
        table = model.item_table().detach()
        mix = torch.randn(384, table.shape[1], generator=torch.Generator().manual_seed(0))
        self.vectors = {f"{title} | cat": (mix @ table[vocab.index(item)]).numpy() for item, title in titles.items()}

    def embed(self, texts, batch_size: int = 64) -> np.ndarray:
        return np.stack([self.vectors[t] for t in texts]).astype(np.float32)


@pytest.mark.parametrize("users_texts", ["none", "never better than untrained"])
def test_where_users_texts_cannot_stop_the_projection_held_out_pairs_do(users_texts: str) -> None:
    """No user texts to validate on (ML-1M), or too few to move (ml-latest-small's ~60 taggers): titles train it."""
    n_items = 2 * MIN_HELD_OUT_PAIRS
    titles = {f"i{k}": f"title of item {k}" for k in range(n_items)}
    clicks = [Event(f"u{u}", f"i{(5 * u + j) % n_items}", (u * 10 + j) * DAY, "buy") for u in range(n_items // 5)
              for j in range(5)]
    dataset = Dataset("titles only", clicks, [], Catalogue(titles, {k: ("cat",) for k in titles}))
    vocab = ItemVocab.from_items(e.item_id for e in dataset.clicks)
    model = _model(len(vocab))
    encoder = TableEncoder(model, vocab, titles)
    if users_texts == "none":
        _fusion, report = train_fusion(model, vocab, dataset, encoder, epochs=20, patience=20, lr=1e-2, batch_size=32)
        stage1 = report["stage1"]
    else:
        stage1 = _fit_projection(TextFusion(384, model.config.d_model), prepare(dataset, vocab, encoder),
                                 model.item_table().detach(), lambda: 0.0, epochs=20, patience=20, lr=1e-2,
                                 weight_decay=1e-4, batch_size=32, seed=0, deadline=None)
    assert stage1["stopped_on"].startswith(f"{n_items // 10} held-out text/item pairs (")
    # Before: the untrained projection was kept, as these users' validation had no text to improve on.
    assert stage1["best_epoch"] >= 1 and stage1["valid_ndcg10"] > 2 * stage1["valid_ndcg10_before"]


def _review_dataset() -> Dataset:
    """One user, four reviewed purchases; the last two share a day (Amazon's resolution)."""
    days = [1, 2, 3, 3]
    clicks = [Event("u", f"i{k}", d * DAY, "buy") for k, d in enumerate(days)]
    texts = [Event("u", f"i{k}", d * DAY, "review", text=f"review {k}", kind="review") for k, d in enumerate(days)]
    texts.append(Event("u", "", int(2.5 * DAY), "search", text="search between 2 and 3", kind="search"))
    # A second user so the vocabulary is not only this one's items.
    clicks += [Event("v", f"i{k}", (10 + k) * DAY, "buy") for k in (4, 5, 6)]
    return Dataset("reviews", clicks, texts, Catalogue({}, {}))


def test_target_text_never_leaks_into_cases_or_pairs() -> None:
    dataset = _review_dataset()
    vocab = ItemVocab.from_items(e.item_id for e in dataset.clicks)
    texts, strings = user_texts(dataset)
    data = prepare(dataset, vocab, HashEncoder())
    fusion = TextFusion(384, 16)
    model = _model(len(vocab))

    def seen(which: str) -> set[str]:
        cases = build_cases(fusion, data, model, which)
        user_case = [i for i, c in enumerate(cases.inputs) if len(c) == {"test": 3, "valid": 2}[which]
                     and int(c.items[0]) == vocab.index("i0")][0]
        row = cases.text_weights.to_dense()[user_case]
        return {strings[j] for j in torch.nonzero(row)[:, 0].tolist()}

    # test target = i3 (same day as i2): its review is not seen; i2's review and the earlier search are.
    assert seen("test") == {"review 0", "review 1", "review 2", "search between 2 and 3"}
    # valid target = i2: the search (day 2.5) came before it, the reviews of i2 and i3 did not.
    assert seen("valid") == {"review 0", "review 1", "search between 2 and 3"}
    # Stage-1 pairs: only reviews of training-part clicks (i0, i1).
    assert sorted(strings[r] for r in data.pair_rows) == ["review 0", "review 1"]


def test_evaluate_fusion_rows() -> None:
    dataset = _review_dataset()
    vocab = ItemVocab.from_items(e.item_id for e in dataset.clicks)
    data = prepare(dataset, vocab, HashEncoder())
    metrics = evaluate_fusion(TextFusion(384, 16), _model(len(vocab)), data)
    assert {"behaviour only", "text only", "fused"} <= set(metrics)
    assert metrics["fused"]["cases"] == 2 and metrics["fused (users with text)"]["cases"] == 1
    # User v has no text: text only must count it as a miss, not as a tie won by the target.
    assert metrics["text only"]["hr@20"] <= 0.5


def test_checkpoint_round_trip_with_fusion_and_categories(tmp_path: Path) -> None:
    vocab = ItemVocab.from_items(["a", "b", "c"])
    model = _model(len(vocab))
    plain = save_checkpoint(tmp_path / "plain", model, vocab, CheckpointMetadata("tiny"))
    assert load_fusion(plain) is None and load_categories(plain) == {}
    fusion = TextFusion(384, 16)
    with torch.no_grad():
        fusion.gate.weight.normal_()
    categories = {"a": ("jazz", "rock"), "b": ("pop",), "zzz": ("not in vocab",)}
    ckpt = save_checkpoint(tmp_path / "fused", model, vocab, CheckpointMetadata("tiny"),
                           fusion=fusion, categories=categories)
    loaded = load_fusion(ckpt)
    assert loaded is not None and not loaded.training
    for key, value in fusion.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    assert load_categories(ckpt) == {"a": ("jazz", "rock"), "b": ("pop",)}
    v_plain, v_fused = read_metadata(plain).model_version, read_metadata(ckpt).model_version
    assert v_plain != v_fused
    with torch.no_grad():
        fusion.gate.bias.add_(0.1)
    save_checkpoint(ckpt, model, vocab, CheckpointMetadata("tiny"), fusion=fusion, categories=categories)
    assert read_metadata(ckpt).model_version not in (v_plain, v_fused)
    # The encoder itself still loads as before, and the version without fusion is unchanged.
    save_checkpoint(tmp_path / "plain2", model, vocab, CheckpointMetadata("tiny"))
    assert read_metadata(tmp_path / "plain2").model_version == v_plain
    loaded_model, loaded_vocab, _ = load_checkpoint(ckpt, device="cpu")
    assert loaded_vocab.item_ids == vocab.item_ids


def test_fusion_with_wrong_width_is_refused(tmp_path: Path) -> None:
    vocab = ItemVocab.from_items(["a", "b"])
    with pytest.raises(Exception, match="d_model"):
        save_checkpoint(tmp_path / "x", _model(len(vocab)), vocab, CheckpointMetadata("t"), fusion=TextFusion(384, 8))


def test_a_deadline_ends_each_fusion_stage_after_its_first_epoch() -> None:
    import time

    dataset = _catalogue_dataset()
    vocab = ItemVocab.from_items(e.item_id for e in dataset.clicks)
    _fusion, report = train_fusion(_model(len(vocab)), vocab, dataset, HashEncoder(), epochs=150, patience=150,
                                   batch_size=4, deadline=time.perf_counter())
    assert report["stage1"]["stopped_by_max_seconds"] and report["stage1"]["best_epoch"] <= 1
    _fusion, unbounded = train_fusion(_model(len(vocab)), vocab, dataset, HashEncoder(), epochs=3, patience=150,
                                      batch_size=4)
    assert not unbounded["stage1"]["stopped_by_max_seconds"]
