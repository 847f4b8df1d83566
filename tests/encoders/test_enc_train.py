"""A tiny, seeded training run on synthetic data beats popularity."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from encoders.checkpoint import read_metadata
from encoders.datasets import Dataset, synthetic
from encoders.evaluate import evaluate, popularity_baseline
from encoders.inference import InterestEncoder

TINY = {"d_model": 32, "n_layers": 1, "n_heads": 2, "max_len": 50, "batch_size": 64, "progress": False}


@pytest.fixture(scope="module")
def data() -> Dataset:
    return synthetic(n_users=200, n_items=200, seed=1)


@pytest.fixture(scope="module")
def trained(data: Dataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _train(data, tmp_path_factory.mktemp("ckpt") / "synthetic", epochs=15)


def _train(data: Dataset, out: Path, epochs: int) -> Path:
    from encoders.train import train

    return train(data, out, epochs=epochs, lr=5e-3, patience=15, **TINY)


def test_beats_popularity(trained: Path, data: Dataset) -> None:
    model_metrics = evaluate(trained, data, device="cpu")
    popular = popularity_baseline(data)
    assert model_metrics["users"] == popular["users"] == 200
    assert model_metrics["ndcg@10"] > 1.5 * popular["ndcg@10"]
    assert model_metrics["hr@10"] > popular["hr@10"] + 0.05


def test_checkpoint_metadata_and_report(trained: Path, data: Dataset) -> None:
    meta = read_metadata(trained)
    assert meta.dataset == "synthetic" and meta.epochs >= 1 and meta.train_seconds > 0
    encoder = InterestEncoder.from_checkpoint(trained, device="cpu")
    assert meta.metrics["test_ndcg@10"] == pytest.approx(evaluate(encoder, data)["ndcg@10"])
    report = json.loads((trained / "report.json").read_text())
    assert len(report["epochs"]) == meta.epochs and report["best_epoch"] == meta.extra["best_epoch"]
    assert {"loss", "valid", "seconds"} <= set(report["epochs"][0])


def test_training_is_reproducible(data: Dataset, tmp_path: Path) -> None:
    a = read_metadata(_train(data, tmp_path / "a", epochs=2))
    b = read_metadata(_train(data, tmp_path / "b", epochs=2))
    assert a.model_version == b.model_version and a.metrics == b.metrics
