"""Checkpoint round trip and the errors of mismatched checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from encoders.checkpoint import (
    CheckpointMetadata,
    load_checkpoint,
    read_metadata,
    save_checkpoint,
)
from encoders.config import EncoderConfig
from encoders.errors import CheckpointError
from encoders.nn.model import SequenceEncoder
from encoders.vocab import ItemVocab


@pytest.fixture()
def saved(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    vocab = ItemVocab.from_items(f"i{n}" for n in range(20))
    model = SequenceEncoder(EncoderConfig(n_items=len(vocab), d_model=16, n_heads=2, max_len=12))
    meta = CheckpointMetadata(dataset="unit", epochs=3, train_seconds=1.5, metrics={"test_hr@10": 0.5})
    return save_checkpoint(tmp_path / "ckpt", model, vocab, meta)


def _edit_json(path: Path, **changes: object) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_round_trip(saved: Path) -> None:
    names = sorted(p.name for p in saved.iterdir())
    assert names == ["config.json", "metadata.json", "model.safetensors", "vocab.json"]
    model, vocab, meta = load_checkpoint(saved, device="cpu")
    assert not model.training and len(vocab) == model.config.n_items == 22
    assert (meta.dataset, meta.epochs, meta.metrics) == ("unit", 3, {"test_hr@10": 0.5})
    assert len(meta.model_version) == 12 and read_metadata(saved) == meta
    # Saving the loaded weights again gives the same content-derived version.
    again = save_checkpoint(saved.parent / "again", model, vocab, meta)
    assert read_metadata(again).model_version == meta.model_version


def test_overwrite_replaces_whole_directory(saved: Path) -> None:
    model, vocab, meta = load_checkpoint(saved, device="cpu")
    with torch.no_grad():
        model.item_emb.weight.add_(1.0)
    save_checkpoint(saved, model, vocab, meta)
    assert read_metadata(saved).model_version != meta.model_version
    assert not list(saved.parent.glob(".ckpt.*"))  # no temporary leftovers


def test_vocab_size_mismatch(saved: Path) -> None:
    ItemVocab.from_items(["a", "b"]).save(saved / "vocab.json")
    with pytest.raises(CheckpointError, match=r"vocab.json: vocabulary size 4 != config.n_items 22"):
        load_checkpoint(saved, device="cpu")


def test_weight_shape_mismatch(saved: Path) -> None:
    _edit_json(saved / "config.json", d_model=32, n_heads=2)
    with pytest.raises(CheckpointError, match=r"model.safetensors: weight .* has shape"):
        load_checkpoint(saved, device="cpu")


def test_unknown_config_key(saved: Path) -> None:
    _edit_json(saved / "config.json", n_layer=3)
    with pytest.raises(CheckpointError, match=r"config.json.*unknown keys \['n_layer'\]"):
        load_checkpoint(saved, device="cpu")


def test_missing_file(saved: Path) -> None:
    (saved / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing model.safetensors"):
        load_checkpoint(saved, device="cpu")
