"""--item-init text: item rows that start from the items' texts (encoders.training.text_init)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from encoders.config import EncoderConfig
from encoders.data import Catalogue, Dataset, Event, synthetic
from encoders.errors import ConfigError
from encoders.training.text_init import TEXT_INIT_STD, item_text_rows, items_with_texts

TINY = {"d_model": 16, "n_layers": 1, "n_heads": 1, "max_len": 20, "batch_size": 64, "progress": False}


def test_items_that_read_alike_start_alike_at_the_given_spread() -> None:
    rng = np.random.default_rng(0)
    strings = torch.from_numpy(rng.standard_normal((6, 384)).astype(np.float32))
    # Items 2 and 3 have the same two texts; 4 and 5 one each; item 6 none (row 5 is about nothing listed).
    rows, items = np.array([0, 1, 0, 1, 2, 3]), np.array([2, 2, 3, 3, 4, 5])
    got_items, got = item_text_rows(strings, rows, items, d_model=8)
    assert got_items.tolist() == [2, 3, 4, 5]
    assert got.shape == (4, 8)
    assert torch.allclose(got[0], got[1])  # the same texts, the same start
    assert not torch.allclose(got[0], got[2])
    # Four items span at most three axes after centring: the other five columns are zero.
    assert torch.count_nonzero(got[:, 3:]) == 0
    assert float(got.std()) == pytest.approx(TEXT_INIT_STD, rel=1e-5)
    assert float(item_text_rows(strings, rows, items, d_model=8, std=0.2)[1].std()) == pytest.approx(0.2, rel=1e-5)


def test_one_item_with_texts_gives_no_start() -> None:
    items, rows = item_text_rows(torch.ones(2, 384), np.array([0, 1]), np.array([3, 3]), d_model=8)
    assert len(items) == 0 and rows.shape == (0, 8)


def test_the_start_replaces_only_the_given_items_rows() -> None:
    from encoders.training.train import _new_model

    config = EncoderConfig(n_items=10, d_model=8, n_layers=1, n_heads=1, max_len=5, block="sasrec")
    random_start = _new_model(config, 0, torch.device("cpu")).item_emb.weight.detach()
    items, rows = torch.tensor([2, 5]), torch.full((2, 8), 0.5)
    text_start = _new_model(config, 0, torch.device("cpu"), text_rows=(items, rows)).item_emb.weight.detach()
    assert torch.equal(text_start[items], rows)
    others = [i for i in range(10) if i not in (2, 5)]
    assert torch.equal(text_start[others], random_start[others])  # the same seed draws the same random rows


def test_titles_and_texts_about_items_count_and_categories_alone_do_not() -> None:
    clicks = [Event("u", f"i{n}", n) for n in range(4)]
    texts = [Event("u", "i1", 10, text="bright strings", kind="review"), Event("u", "", 11, text="amp", kind="search")]
    data = Dataset("d", clicks, texts, Catalogue({"i0": "Nylon strings", "x": "never clicked"}, {"i2": ("Strings",)}))
    assert items_with_texts(data) == (2, 4)


def test_training_from_the_texts_records_it_and_learns(tmp_path: Path) -> None:
    from encoders.training.train import train

    data = synthetic(n_users=120, n_items=80, seed=3)  # every item has a title ("rock #17")
    reports = {}
    for start in ("text", "random"):
        out = train(data, tmp_path / start, epochs=2, item_init=start, seed=0, **TINY)
        reports[start] = json.loads((out / "report.json").read_text())
    assert reports["text"]["train_args"]["item_init"] == "text"
    losses = [e["loss"] for e in reports["text"]["epochs"]]
    assert losses[1] < losses[0]
    # The start reaches the model train() fits: the same seed from a random start learns otherwise.
    assert losses[0] != reports["random"]["epochs"][0]["loss"]


def test_a_text_start_without_texts_or_with_sessions_is_refused(tmp_path: Path) -> None:
    from encoders.training.train import train

    clicks = [Event(f"u{u}", f"i{(u + n) % 7}", n) for u in range(20) for n in range(6)]
    bare = Dataset("bare", clicks, [], Catalogue({}, {}))
    with pytest.raises(ConfigError, match="item_init='text' needs items with titles or text events"):
        train(bare, tmp_path / "bare", epochs=1, item_init="text", **TINY)
    sessions = Dataset("sessions", clicks, [], Catalogue({"i1": "a title"}, {}), test_clicks=clicks[:6])
    with pytest.raises(ConfigError, match="item_init='text' needs a leave-one-out split, not session"):
        train(sessions, tmp_path / "sessions", epochs=1, item_init="text", **TINY)
    with pytest.raises(ConfigError, match="item_init='words' must be one of"):
        train(bare, tmp_path / "bad", item_init="words", **TINY)


def test_items_that_all_read_the_same_get_no_start() -> None:
    items, rows = item_text_rows(torch.ones(2, 384), np.array([0, 1]), np.array([3, 4]), d_model=8)
    assert len(items) == 0 and rows.shape == (0, 8)
