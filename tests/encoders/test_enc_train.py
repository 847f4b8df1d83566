"""A tiny, seeded training run on synthetic data beats popularity."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from encoders.checkpoint import read_metadata
from encoders.data import Dataset, synthetic
from encoders.evaluation.evaluate import baseline_metrics, evaluate
from encoders.inference import InterestEncoder

TINY = {"d_model": 32, "n_layers": 1, "n_heads": 2, "max_len": 50, "batch_size": 64, "progress": False}


@pytest.fixture(scope="module")
def data() -> Dataset:
    return synthetic(n_users=200, n_items=200, seed=1)


@pytest.fixture(scope="module")
def trained(data: Dataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _train(data, tmp_path_factory.mktemp("ckpt") / "synthetic", epochs=15)


def _train(data: Dataset, out: Path, epochs: int) -> Path:
    from encoders.training.train import train

    return train(data, out, epochs=epochs, lr=5e-3, patience=15, **TINY)


def test_beats_popularity(trained: Path, data: Dataset) -> None:
    model_metrics = evaluate(trained, data, device="cpu")
    popular = baseline_metrics(data)["most popular"]
    assert model_metrics["cases"] == popular["cases"] == 200
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


def _figures(path: Path) -> dict:
    """What a run produced, less its timings."""
    report = json.loads((path / "report.json").read_text())
    epochs = [{k: v for k, v in e.items() if "seconds" not in k} for e in report["epochs"]]
    return {"version": read_metadata(path).model_version, "epochs": epochs,
            **{k: report[k] for k in ("config", "train_args", "best_epoch", "test", "next_action_test")}}


def test_a_config_trains_what_the_same_keywords_train(data: Dataset, tmp_path: Path) -> None:
    from encoders.training.config import TrainConfig
    from encoders.training.train import train

    by_keywords = _train(data, tmp_path / "keywords", epochs=2)
    # A config, with a keyword on top of it (the keyword wins).
    config = TrainConfig(epochs=9, lr=5e-3, patience=15, **TINY)
    by_config = train(data, tmp_path / "config", config, epochs=2)
    assert _figures(by_config) == _figures(by_keywords)
    assert _figures(by_keywords)["train_args"]["epochs"] == 2


def test_unknown_options_fail_before_any_work(data: Dataset, tmp_path: Path) -> None:
    from encoders.errors import ConfigError
    from encoders.training.train import train

    with pytest.raises(ConfigError, match=r"train\(\) keywords: unknown keys \['epoch'\] \(did you mean 'epochs'\?"):
        train(data, tmp_path / "typo", epoch=2, **TINY)
    with pytest.raises(ConfigError, match=r"train\(\) keywords: loss='soft' must be one of"):
        train(data, tmp_path / "bad", loss="soft", **TINY)
    with pytest.raises(TypeError, match="config must be a TrainConfig, not dict"):
        train(data, tmp_path / "dict", {"epochs": 2})
    assert not any(tmp_path.iterdir())  # nothing was written


def test_worker_inference_equals_the_training_forward(trained: Path, data: Dataset) -> None:
    """Parity: the checkpoint `train` wrote, loaded as the worker loads it, gives the vectors
    of the training model's own forward pass (one right-padded training batch) on random real
    sequences of mixed lengths, which the worker pads to its length buckets instead."""
    _assert_worker_parity(trained, data)


def test_a_sasrec_block_model_trains_and_serves_what_it_trained(data: Dataset, tmp_path: Path) -> None:
    from encoders.training.train import train

    out = train(data, tmp_path / "sasrec", epochs=2, block="sasrec", input_scale=8.0,
                **{**TINY, "n_heads": 1})
    assert json.loads((out / "config.json").read_text())["block"] == "sasrec"
    _assert_worker_parity(out, data)


def test_random_batches_cover_every_window_once_and_length_batches_group_lengths() -> None:
    import numpy as np

    from encoders.features import SeqArrays
    from encoders.training.loop import _batches

    lengths = np.random.default_rng(0).integers(2, 200, 1000)
    windows = [SeqArrays(*(np.zeros(n, np.int64),) * 3) for n in lengths]
    for batching in ("random", "length"):
        batches = _batches(windows, 64, np.random.default_rng(1), batching)
        assert sorted(np.concatenate(batches).tolist()) == list(range(1000))
        assert [len(b) for b in batches].count(64) == 15
    spread = {b: np.mean([np.ptp(lengths[i]) for i in _batches(windows, 64, np.random.default_rng(1), b)])
              for b in ("random", "length")}
    assert spread["length"] < spread["random"] / 5


def _assert_worker_parity(trained: Path, data: Dataset) -> None:
    import numpy as np
    import torch

    from encoders.checkpoint import load_checkpoint
    from encoders.features import SeqArrays, from_events
    from encoders.training.loop import batch_tensors

    worker = InterestEncoder.from_checkpoint(trained, device="cpu")  # as streams/commands.load_encoders does
    model, vocab, _ = load_checkpoint(trained, device="cpu")
    rng = np.random.default_rng(7)
    seqs = list(data.sequences().values())
    cap = model.config.max_len
    picked = [seqs[i][: rng.integers(1, min(len(seqs[i]), cap) + 1)] for i in rng.choice(len(seqs), 24, False)]
    picked += [seqs[0][:1], seqs[1][:cap]]
    vectors = worker.encode([[(e.item_id, e.action, e.ts) for e in p] for p in picked])
    # Training reads events 0..n-1 of a window of n + 1 (the last is only a target).
    windows = [from_events(p, vocab) for p in picked]
    windows = [SeqArrays(*(np.append(a, 0) for a in (w.items, w.actions, w.gaps))) for w in windows]
    items, actions, gaps, *_ = batch_tensors(windows, torch.device("cpu"))  # then the targets
    with torch.inference_mode():
        hidden = model.train(False)(items, actions, gaps)
    expected = hidden[torch.arange(len(picked)), torch.tensor([len(p) for p in picked]) - 1].numpy()
    assert len({next(b for b in worker.buckets if b >= len(p)) for p in picked}) >= 3  # several buckets
    np.testing.assert_allclose(vectors, expected, rtol=1e-4, atol=1e-5)


def test_refit_sampled_loss_and_training_curve(data: Dataset, tmp_path: Path) -> None:
    from encoders.training.train import train

    out = train(data, tmp_path / "refit", epochs=3, lr=5e-3, patience=3, loss="sampled", negatives=32,
                refit=True, all_windows=True, **TINY)
    report = json.loads((out / "report.json").read_text())
    assert report["train_args"]["negatives"] == 32 and report["train_args"]["refit"] is True
    assert len(report["refit_epochs"]) == report["best_epoch"]
    assert all(e["valid"] is None for e in report["refit_epochs"])
    assert set(report["test_before_refit"]) == set(report["test"])  # the strict figure is kept too
    assert set(report["baselines_test"]) == {"most popular", "item-to-item co-occurrence"}
    png = (out / "training.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert read_metadata(out).epochs == len(report["epochs"]) + report["best_epoch"]


def test_cosine_anneals_by_the_last_step_or_the_time_budget_and_a_replay_follows_the_given_rates() -> None:
    import math
    import time

    import torch

    from encoders.training.loop import _LrSchedule

    def rates(kind: str, total_steps: int, max_seconds: float | None, start: float, replay=None) -> list[float]:
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
        schedule = _LrSchedule(kind, opt, 0.1, total_steps, 4, max_seconds, start, replay)
        seen = []
        for _ in range(8):  # two epochs of four steps
            schedule.before_step()
            seen.append(opt.param_groups[0]["lr"])
        assert schedule.lr == seen[-1]  # what EpochLog.lr records
        return seen

    now = time.perf_counter()
    assert rates("constant", 8, None, now) == [0.1] * 8
    cosine = rates("cosine", 8, None, now)
    assert cosine[0] == 0.1 and all(a > b for a, b in zip(cosine, cosine[1:]))
    assert cosine[-1] == pytest.approx(0.05 * (1 + math.cos(math.pi * 7 / 8)))
    # The time budget spent, the rate is 0 however few of the steps were taken; half spent, half the rate.
    assert rates("cosine", 1000, 10.0, now - 10.0) == pytest.approx([0.0] * 8, abs=1e-12)
    assert rates("cosine", 10**6, 1e6, now - 5e5)[0] == pytest.approx(0.05, rel=1e-3)
    # A replay goes linearly from each epoch's last rate to the next, whatever the schedule's kind.
    assert rates("cosine", 8, None, now, replay=[0.08, 0.02]) == pytest.approx(
        [0.095, 0.09, 0.085, 0.08, 0.065, 0.05, 0.035, 0.02])


def test_a_refit_replays_the_cosine_rates_of_the_epochs_it_was_chosen_for(
    data: Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from encoders.training import train as train_module

    real_fit, calls = train_module.fit, []

    def recording_fit(*args, **kwargs):  # the real fit, its arguments kept
        calls.append((args, kwargs))
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(train_module, "fit", recording_fit)
    out = train_module.train(data, tmp_path / "cosine", epochs=3, lr=5e-3, patience=3, lr_schedule="cosine",
                             refit=True, **TINY)
    report = json.loads((out / "report.json").read_text())
    chosen = [e["lr"] for e in report["epochs"]]
    assert report["train_args"]["lr_schedule"] == "cosine"
    assert chosen[0] < 5e-3 and all(a > b for a, b in zip(chosen, chosen[1:])) and chosen[-1] < 1e-4
    (_, select_kwargs), (refit_args, refit_kwargs) = calls
    assert select_kwargs.get("lr_replay") is None
    assert refit_kwargs["lr_replay"] == pytest.approx(chosen[:report["best_epoch"]])
    assert [e["lr"] for e in report["refit_epochs"]] == pytest.approx(chosen[:report["best_epoch"]])
    # A replay wins over the config's own cosine even where the two would differ (2 epochs, not 3).
    model, windows, _, config = refit_args
    replayed = real_fit(model, windows, None, config, epochs=2, lr_replay=[4e-3, 1e-3])
    assert [log.lr for log in replayed.logs] == pytest.approx([4e-3, 1e-3])


def test_the_weight_average_is_the_plain_mean_then_a_moving_one() -> None:
    import torch

    from encoders.nn.model import EncoderConfig, SequenceEncoder
    from encoders.training.loop import _WeightAverage

    trained = SequenceEncoder(EncoderConfig(6, d_model=8, n_layers=1, n_heads=1, max_len=4, block="sasrec"))
    average = _WeightAverage(trained, epochs=1.0, steps_per_epoch=2)  # a span of two steps
    with torch.no_grad():
        for value in (1.0, 2.0, 3.0):
            for weight in trained.parameters():
                weight.fill_(value)
            average.update(trained)
    # Steps 1 and 2 are averaged plainly (1.5, not pulled toward the start); step 3 moves halfway: 2.25.
    assert all(torch.all(mean == 2.25) for mean in average.model.parameters())
    assert all(torch.all(weight == 3.0) for weight in trained.parameters())  # the trained weights untouched


def _fit_inputs(data: Dataset, config):
    """The split, the training windows and a fresh seeded model for calling `fit` directly."""
    import torch

    from encoders.protocols import make_split
    from encoders.training.loop import train_windows
    from encoders.training.train import _new_model
    from encoders.vocab import ItemVocab

    vocab = ItemVocab.from_items(e.item_id for e in data.clicks)
    split = make_split(data, vocab)
    windows = train_windows(split.train, config.max_len, config.all_windows)
    return split, windows, _new_model(config.encoder_config(len(vocab)), 0, torch.device("cpu"))


def test_fit_keeps_the_averaged_weights_and_trains_the_same_path(data: Dataset) -> None:
    import torch

    from encoders.training.config import TrainConfig
    from encoders.training.loop import fit

    config = TrainConfig(epochs=2, **TINY)
    runs = {}
    for ema_epochs in (0.0, 1.0):
        _, windows, model = _fit_inputs(data, config)
        runs[ema_epochs] = model, fit(model, windows, None, config.replace(ema_epochs=ema_epochs))
    (plain_model, plain), (averaged_model, averaged) = runs[0.0], runs[1.0]
    # Averaging only follows training: the trained weights end the same either way.
    for name, weight in plain_model.state_dict().items():
        assert torch.equal(weight, averaged_model.state_dict()[name]), name
    assert all(torch.equal(plain.best_state[k], v) for k, v in plain_model.state_dict().items())
    # What fit keeps is the average, which differs from the last weights.
    assert any(not torch.equal(averaged.best_state[k], v) for k, v in averaged_model.state_dict().items())


def test_validation_reads_the_averaged_weights(data: Dataset) -> None:
    from encoders.evaluation.evaluate import rank_metrics
    from encoders.training.config import TrainConfig
    from encoders.training.loop import fit

    config = TrainConfig(epochs=1, ema_epochs=3.0, **TINY)  # one epoch: its weights are the best
    split, windows, model = _fit_inputs(data, config)
    result = fit(model, windows, split, config)
    logged = result.logs[0].valid["ndcg@10"]
    trained = rank_metrics(model, split.valid, exclude_history=split.exclude_history)["ndcg@10"]
    model.load_state_dict(result.best_state)
    averaged = rank_metrics(model, split.valid, exclude_history=split.exclude_history)["ndcg@10"]
    assert logged == averaged != trained


def test_a_refit_that_would_run_past_max_seconds_is_skipped() -> None:
    import time

    from encoders.training.loop import EpochLog, FitResult
    from encoders.training.config import TrainConfig
    from encoders.training.train import _refit_overrun

    selected = FitResult([EpochLog(e, 1.0, 10.0, 1.0, None) for e in range(1, 6)], 4, {}, 55.0)  # 10 s an epoch
    config, now = TrainConfig(refit=True, max_seconds=100), time.perf_counter()
    skipped = _refit_overrun(selected, config, wall_start=now - 70)  # 30 s left, 4 epochs need 40
    assert skipped is not None and "refit skipped: its 4 epochs need about 40 s" in skipped["reason"]
    assert _refit_overrun(selected, config, wall_start=now - 10) is None  # 90 s left
    assert _refit_overrun(selected, config.replace(max_seconds=None), wall_start=now - 1e6) is None
