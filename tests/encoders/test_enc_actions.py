"""The next-action head: training, the padding mask, old checkpoints, metadata and metrics."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from encoders.checkpoint import CheckpointMetadata, load_checkpoint, read_metadata, save_checkpoint
from encoders.config import EncoderConfig
from encoders.data import Dataset, synthetic
from encoders.errors import CheckpointError
from encoders.evaluation.actions import action_table, classification_metrics, evaluate_actions
from encoders.nn.model import SequenceEncoder
from encoders.protocols import make_split
from encoders.vocab import ACTIONS, ItemVocab

TINY = {"d_model": 32, "n_layers": 1, "n_heads": 2, "max_len": 50, "batch_size": 64, "progress": False}
CYCLE = ("view", "click", "cart", "buy")


def _with_actions(data: Dataset, action_of) -> Dataset:
    """``data`` with each user's k-th event given the action ``action_of(k)``."""
    clicks = []
    for events in data.sequences().values():
        clicks.extend(replace(e, action=action_of(k)) for k, e in enumerate(events))
    return replace(data, clicks=clicks)


@pytest.fixture(scope="module")
def cyclic() -> Dataset:
    """Synthetic items whose actions cycle view -> click -> cart -> buy: the next action is predictable."""
    return _with_actions(synthetic(n_users=120, n_items=120, seed=3), lambda k: CYCLE[k % 4])


@pytest.fixture(scope="module")
def trained(cyclic: Dataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from encoders.training.train import train

    return train(cyclic, tmp_path_factory.mktemp("actions") / "cyclic", epochs=6, lr=5e-3, patience=6,
                 device="cpu", **TINY)


def test_head_learns_a_predictable_next_action(trained: Path, cyclic: Dataset) -> None:
    report = evaluate_actions(trained, cyclic, device="cpu")
    assert report is not None and report["classes"] == list(CYCLE)
    assert report["model"]["cases"] == report["majority"]["cases"] == 120
    assert report["model"]["macro_f1"] > report["majority"]["macro_f1"] + 0.5
    assert report["model"]["accuracy"] > 0.9
    # In a cycle the next action is never the last one: the head must have learned the order.
    assert report["last_action"]["accuracy"] == 0.0 and report["last_action"]["cases"] == 120
    assert "repeat the last action" in action_table(report)
    # train's report and metadata carry the same figures.
    saved = json.loads((trained / "report.json").read_text())["next_action_test"]
    assert saved["majority"] == report["majority"] and saved["model"]["cases"] == report["model"]["cases"]
    for key in ("accuracy", "macro_f1"):
        assert saved["model"][key] == pytest.approx(report["model"][key])
    assert read_metadata(trained).metrics["test_action_macro_f1"] == pytest.approx(report["model"]["macro_f1"])


def test_metadata_carries_action_classes(trained: Path) -> None:
    meta = read_metadata(trained)
    assert meta.extra["action_classes"] == list(CYCLE)  # ACTIONS index order
    assert meta.extra["action_majority"] in CYCLE
    model, _, _ = load_checkpoint(trained, device="cpu")
    assert model.config.action_head and model.has_action_head
    assert model.next_action_logits(torch.zeros(3, model.config.d_model)).shape == (3, len(ACTIONS))


def test_metadata_classes_are_the_training_targets_only(tmp_path: Path) -> None:
    from encoders.training.train import train

    # "cart" appears only as each user's first event, which is never a target.
    data = _with_actions(synthetic(n_users=40, n_items=60, seed=4), lambda k: "cart" if k == 0 else CYCLE[k % 2])
    meta = read_metadata(train(data, tmp_path / "m", epochs=1, device="cpu", **TINY))
    assert meta.extra["action_classes"] == ["view", "click"]


def test_one_action_or_zero_weight_trains_the_plain_model(tmp_path: Path) -> None:
    from encoders.training.train import train

    base = synthetic(n_users=40, n_items=60, seed=5)
    one_action = _with_actions(base, lambda k: "click")  # like ML-1M
    paths = [train(one_action, tmp_path / "one", epochs=1, device="cpu", **TINY),
             train(one_action, tmp_path / "zero", epochs=1, device="cpu", action_weight=0.0, **TINY),
             train(base, tmp_path / "base0", epochs=1, device="cpu", action_weight=0.0, **TINY)]
    for path in paths:
        model, _, meta = load_checkpoint(path, device="cpu")
        assert not model.has_action_head and "action_classes" not in meta.extra
        assert not any(k.startswith("action_head") for k in model.state_dict())
        assert json.loads((path / "report.json").read_text())["next_action_test"] is None
        assert evaluate_actions(path, one_action, device="cpu") is None
    # No head: the weight does not matter, the checkpoint is the same.
    assert read_metadata(paths[0]).model_version == read_metadata(paths[1]).model_version
    with pytest.raises(ValueError, match="action_weight"):
        train(base, tmp_path / "neg", epochs=1, device="cpu", action_weight=-1.0, **TINY)


def test_config_without_the_key_loads_old_weights(tmp_path: Path) -> None:
    torch.manual_seed(0)
    old = SequenceEncoder(EncoderConfig(n_items=12, d_model=16, n_heads=2, max_len=8))
    assert not old.has_action_head and not any("action_head" in k for k in old.state_dict())
    with pytest.raises(ValueError, match="no next-action head"):
        old.next_action_logits(torch.zeros(1, 16))
    path = save_checkpoint(tmp_path / "old", old, ItemVocab([f"i{i}" for i in range(10)]),
                           CheckpointMetadata("old"))
    config = json.loads((path / "config.json").read_text())
    del config["action_head"]  # as written before the head existed
    (path / "config.json").write_text(json.dumps(config))
    loaded, _, _ = load_checkpoint(path, device="cpu")
    assert not loaded.has_action_head
    for key, value in old.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)
    # The same seed draws the same initial weights with or without the head (it is created last).
    torch.manual_seed(0)
    headed = SequenceEncoder(EncoderConfig(n_items=12, d_model=16, n_heads=2, max_len=8, action_head=True))
    for key, value in old.state_dict().items():
        torch.testing.assert_close(headed.state_dict()[key], value)
    # And weights with a head do not load into a config without one.
    save_checkpoint(tmp_path / "headed", headed, ItemVocab([f"i{i}" for i in range(10)]), CheckpointMetadata("h"))
    (tmp_path / "headed" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="unexpected"):
        load_checkpoint(tmp_path / "headed", device="cpu")


def test_action_loss_ignores_padding() -> None:
    from encoders.training.loop import next_action_loss

    torch.manual_seed(0)
    model = SequenceEncoder(EncoderConfig(n_items=12, d_model=16, n_heads=2, max_len=8, action_head=True))
    hidden = torch.randn(2, 4, 16, requires_grad=True)
    targets = torch.tensor([[3, 5, 0, 0], [2, 3, 4, 0]])  # 0 = padding
    loss = next_action_loss(model, hidden, targets)
    real = hidden[targets > 0]
    expected = torch.nn.functional.cross_entropy(model.next_action_logits(real), targets[targets > 0])
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert torch.all(hidden.grad[targets == 0] == 0) and torch.all(hidden.grad[targets > 0].abs().sum(-1) > 0)
    # Whatever sits at padded positions changes nothing.
    noisy = hidden.detach().clone()
    noisy[targets == 0] = 1e3
    torch.testing.assert_close(next_action_loss(model, noisy, targets), loss.detach())


def test_eval_cases_carry_the_target_action(cyclic: Dataset) -> None:
    vocab = ItemVocab.from_items(e.item_id for e in cyclic.clicks)
    split = make_split(cyclic, vocab, "leave-one-out")
    seqs = list(cyclic.sequences().values())
    expected = [ACTIONS.index(CYCLE[(len(s) - 1) % 4]) for s in seqs if len(s) >= 3]
    assert split.test.actions.tolist() == expected
    assert split.valid.actions.tolist() == [ACTIONS.index(CYCLE[(len(s) - 2) % 4]) for s in seqs if len(s) >= 3]


def test_classification_metrics() -> None:
    view, click, buy = (ACTIONS.index(a) for a in ("view", "click", "buy"))
    targets = np.array([view, view, view, click, buy])
    m = classification_metrics(np.array([view, view, click, click, view]), targets, [view, click, buy])
    assert m["accuracy"] == pytest.approx(0.6) and m["cases"] == 5
    # view: tp 2 fp 1 fn 1 -> 2/3; click: tp 1 fp 1 fn 0 -> 2/3; buy: tp 0 fn 1 -> 0.
    assert m["f1"] == pytest.approx({"view": 2 / 3, "click": 2 / 3, "buy": 0.0})
    assert m["macro_f1"] == pytest.approx(4 / 9)
    # A class neither predicted nor a target has no F1 and is left out of the mean.
    majority = classification_metrics(np.full(4, view), targets[:4], [view, click, buy])
    assert majority["f1"] == pytest.approx({"view": 6 / 7, "click": 0.0})
