"""`TrainConfig`: every training option typed, checked when built, strict about keys (no torch)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from encoders.config import EncoderConfig
from encoders.errors import ConfigError
from encoders.training.config import LOSS_PRECISIONS, LOSSES, TrainConfig


def test_defaults_are_trains():
    assert TrainConfig().to_dict() == {
        "d_model": 64, "n_layers": 2, "n_heads": 2, "max_len": 200, "dropout": 0.2, "attention_dropout": None,
        "input_scale": 1.0, "block": "gpt2", "item_init": "random",
        "context": "auto", "epochs": 50,
        "batch_size": 128, "batching": "random", "lr": 1e-3, "lr_schedule": "constant", "weight_decay": 0.0,
            "ema_epochs": 0.0,
        "loss": "auto", "negatives": 256,
        "loss_precision": "auto", "all_windows": False, "refit": False, "protocol": "auto", "history": "auto", "device": "auto", "seed": 0, "patience": 5,
        "eval_every": 1, "max_seconds": None, "progress": True, "action_weight": 0.2, "text_fusion": False}
    assert LOSSES == ("auto", "full", "sampled")
    assert LOSS_PRECISIONS == ("auto", "fp32", "bf16")


def test_an_unknown_key_is_an_error_naming_it():
    with pytest.raises(ConfigError, match=r"unknown keys \['epoch'\] \(did you mean 'epochs'\?\)"):
        TrainConfig.from_dict({"epoch": 3, "lr": 1e-3})
    with pytest.raises(ConfigError, match=r"replace\(\): unknown keys \['d_modle'\]"):
        TrainConfig().replace(d_modle=128)
    with pytest.raises(ConfigError, match=r"--config wide: unknown keys \['zzz'\]; expected"):
        TrainConfig.from_dict({"zzz": 1}, "--config wide")
    with pytest.raises(ConfigError, match="expected a mapping"):
        TrainConfig.from_dict([("epochs", 3)])


@pytest.mark.parametrize(("option", "value", "requirement"), [
    ("epochs", 0, "must be >= 1"),
    ("batch_size", -8, "must be >= 1"),
    ("negatives", 0, "must be >= 1"),
    ("eval_every", 0, "must be >= 1"),
    ("loss", "soft", "must be one of ('auto', 'full', 'sampled')"),
    ("loss_precision", "fp16", "must be one of ('auto', 'fp32', 'bf16')"),
    ("lr_schedule", "linear", "must be one of ('constant', 'cosine')"),
    ("protocol", "random", "must be 'auto' or one of ('leave-one-out', 'session')"),
    ("context", "hour,cell",
     "must be 'auto', 'on', 'off' or some of hour_of_week, device, region, cell, distance, comma-separated"),
    ("lr", 0.0, "must be > 0"),
    ("lr", float("nan"), "must be > 0"),
    ("dropout", 1.0, "must be in [0, 1)"),
    ("ema_epochs", -1.0, "must be >= 0 (0: no average)"),
    ("item_init", "words", "must be one of ('random', 'text')"),
    ("attention_dropout", -0.1, "must be in [0, 1) (or None: dropout)"),
    ("action_weight", -1.0, "must be >= 0"),
    ("max_seconds", 0, "must be > 0 (or None: no limit)"),
    ("seed", -1, "must be >= 0"),
    ("device", "", "must name a device (auto, cpu, cuda, cuda:1 ...)"),
    ("d_model", 30, "is not divisible by n_heads=4"),
    ("epochs", "5", "must be an int"),  # no silent coercion of a string from a command line
    ("epochs", 2.5, "must be an int"),
    ("batch_size", True, "must be an int"),  # a flag where a number belongs
    ("lr", "1e-3", "must be a float"),
    ("refit", 1, "must be a bool"),
    ("max_seconds", "60", "must be a float or None"),
])
def test_a_bad_value_is_an_error_naming_the_option_and_the_value(option, value, requirement):
    base = {"n_heads": 4} if option == "d_model" else {}
    with pytest.raises(ConfigError) as raised:
        TrainConfig(**base, **{option: value})
    assert str(raised.value) == f"training config values: {option}={value!r} {requirement}"
    # The same checks on every way in, naming where the value came from.
    with pytest.raises(ConfigError, match=f"^training config --config x: {option}="):
        TrainConfig.from_dict({**base, option: value}, "--config x")
    with pytest.raises(ConfigError, match=f"^training config replace\\(\\): {option}="):
        TrainConfig(**base).replace(**{option: value})


def test_config_errors_are_value_errors_as_before():
    # train() raised ValueError for a bad loss or action weight; callers that catch it still do.
    with pytest.raises(ValueError, match="action_weight"):
        TrainConfig(action_weight=-1.0)


def test_frozen_and_round_trips():
    config = TrainConfig(d_model=32, n_heads=4, loss="sampled", negatives=64, max_seconds=90.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.epochs = 3  # type: ignore[misc]
    assert TrainConfig.from_dict(config.to_dict()) == config
    assert config.replace() == config and config.replace(epochs=3) != config
    assert config.replace(epochs=3).replace(epochs=config.epochs) == config
    # Numbers of other int and float types are numbers (numpy's, from a sweep's arrays).
    np = pytest.importorskip("numpy")
    assert TrainConfig(epochs=np.int64(3), lr=np.float32(1e-3)).epochs == 3


def test_model_dimensions_go_to_the_encoder_config():
    config = TrainConfig(d_model=32, n_layers=1, n_heads=4, max_len=50, dropout=0.1, block="sasrec")
    assert config.encoder_config(10, action_head=True) == EncoderConfig(
        10, d_model=32, n_layers=1, n_heads=4, max_len=50, dropout=0.1, action_head=True, block="sasrec")
    with pytest.raises(ConfigError, match=r"block='bert' must be one of \('gpt2', 'sasrec', 'gated'\)"):
        TrainConfig(block="bert")


def test_negatives_by_loss_and_catalogue_size():
    assert TrainConfig(loss="full").negatives_for(10**6) is None
    assert TrainConfig(loss="sampled", negatives=32).negatives_for(10) == 32
    assert TrainConfig().negatives_for(50_000) is None and TrainConfig().negatives_for(50_001) == 256


def test_the_record_is_train_args_as_checkpoints_have_them():
    record = TrainConfig(epochs=3, progress=False, text_fusion=True).record(n_items=100, device="cpu",
                                                                           action_head=False, loss_precision="bf16")
    # Key order and values as report.json has always had them (the figures in effect), new keys last.
    assert list(record.items()) == [
        ("epochs", 3), ("batch_size", 128), ("batching", "random"), ("lr", 1e-3), ("weight_decay", 0.0),
        ("loss", "auto"), ("negatives", None), ("all_windows", False), ("refit", False), ("seed", 0), ("patience", 5),
        ("eval_every", 1), ("max_seconds", None), ("device", "cpu"), ("action_weight", 0.0),
        ("history", "auto"), ("loss_precision", "bf16"), ("lr_schedule", "constant"),
        ("ema_epochs", 0.0), ("item_init", "random")]
    assert TrainConfig(loss="sampled").record(n_items=100, device="cuda", action_head=True,
                                              loss_precision="fp32")["action_weight"] == 0.2


def test_from_record_keeps_how_the_parent_learned_not_its_schedule():
    encoder = EncoderConfig(10, d_model=32, n_layers=1, n_heads=2, max_len=50, dropout=0.1, action_head=True,
                            block="sasrec")
    parent = TrainConfig(d_model=32, n_layers=1, max_len=50, dropout=0.1, block="sasrec", epochs=7, lr=5e-3,
                         loss="sampled",
                         negatives=32, all_windows=True, weight_decay=0.01, action_weight=0.5, seed=3,
                         ema_epochs=3.0, item_init="text")  # a fine-tune starts from weights, not from texts
    record = {**parent.record(n_items=10, device="cuda", action_head=True, loss_precision="bf16"),
              "finetuned_from": "abc", "context": 5}
    child = TrainConfig.from_record(encoder, record, "leave-one-out")
    assert child == TrainConfig(d_model=32, n_layers=1, max_len=50, dropout=0.1, block="sasrec", context="off",
                                loss="sampled",
                                negatives=32,
                                all_windows=True, weight_decay=0.01, action_weight=0.5, protocol="leave-one-out",
                                ema_epochs=3.0)
    # A full softmax records no count (None), and an old checkpoint may record nothing: the defaults.
    assert TrainConfig.from_record(encoder, {"negatives": None}).negatives == 256
    assert TrainConfig.from_record(encoder, {}).replace(d_model=64) == TrainConfig(
        n_layers=1, max_len=50, dropout=0.1, block="sasrec", context="off")
    with pytest.raises(ConfigError, match="checkpoint train_args: loss='soft'"):
        TrainConfig.from_record(encoder, {"loss": "soft"})


def test_importing_the_config_loads_no_torch():
    code = "import sys, encoders.training.config; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_sweep_checks_every_configuration_before_it_starts():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "bench" / "train_sweep.py"
    spec = importlib.util.spec_from_file_location("train_sweep", path)
    sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep)
    [(name, settings, config)] = sweep.checked_configs(["wide:d_model=128,lr=3e-4,refit=true"])
    assert (name, settings) == ("wide", {"d_model": 128, "lr": 3e-4, "refit": True})
    assert config == TrainConfig(d_model=128, lr=3e-4, refit=True, progress=False)
    with pytest.raises(SystemExit, match=r"--config ok2: unknown keys \['n_layer'\] \(did you mean 'n_layers'\?\)"):
        sweep.checked_configs(["ok:epochs=3", "ok2:n_layer=4"])
    with pytest.raises(SystemExit, match="--config neg: negatives=0 must be >= 1"):
        sweep.checked_configs(["neg:loss=sampled,negatives=0"])
