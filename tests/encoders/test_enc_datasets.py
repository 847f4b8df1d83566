"""Loaders, config and vocabulary (no torch needed)."""

from __future__ import annotations

import gzip
import sys
from itertools import pairwise
from pathlib import Path

import pytest

from encoders.config import EncoderConfig
from encoders.data import SYNTHETIC_START_MS, Dataset, load_dataset, synthetic
from encoders.errors import ConfigError, DataFormatError
from encoders.vocab import ACTIONS, ItemVocab, action_index


def test_ml1m_loader(ml1m: Dataset) -> None:
    seqs = ml1m.sequences()
    assert (len(ml1m.clicks), len(seqs), len(ml1m.texts)) == (999_611, 6_040, 0)
    first = seqs["1"]
    # No timestamps in this copy: ts is the per-user order index * 1000.
    assert [e.ts for e in first[:3]] == [0, 1000, 2000]
    assert [e.item_id for e in first[:3]] == ["1", "2", "3"]
    assert len({e.item_id for e in ml1m.clicks}) == 3_416
    assert ml1m.catalogue.titles["2"] == "Titanic (1997)"
    assert ml1m.catalogue.categories["2"] == ("Drama", "Romance")


def test_movielens_small_loader(ml_small: Dataset) -> None:
    assert (len(ml_small.clicks), len(ml_small.texts), len(ml_small.sequences())) == (100_004, 1_296, 671)
    first = ml_small.clicks[0]  # 1,31,2.5,1260759144
    assert (first.user_id, first.item_id, first.ts, first.action) == ("1", "31", 1_260_759_144_000, "view")
    assert {e.action for e in ml_small.clicks} == {"view", "click", "buy"}
    assert {e.kind for e in ml_small.texts} == {"comment"}
    assert any(e.text == "sandra 'boring' bullock" for e in ml_small.texts)  # quoted CSV field
    assert ml_small.catalogue.categories["1"][:2] == ("Adventure", "Animation")
    for events in ml_small.sequences().values():
        assert [e.ts for e in events] == sorted(e.ts for e in events)


def test_load_dataset_dispatch(tmp_path: Path, ml_small_dir: Path) -> None:
    assert load_dataset(str(ml_small_dir)).name == "ml-latest-small"
    assert load_dataset("synthetic").name == "synthetic"
    with pytest.raises(DataFormatError, match=str(tmp_path)):
        load_dataset(str(tmp_path))


def test_malformed_line_names_file_and_line(tmp_path: Path) -> None:
    with gzip.open(tmp_path / "sequences.txt.gz", "wt") as fh:
        fh.write("1 1\n1 2 3\n")
    with pytest.raises(DataFormatError, match=r"sequences.txt.gz:2: .*'1 2 3'"):
        load_dataset(str(tmp_path))


def test_synthetic_is_seeded_and_plausible() -> None:
    a, b, c = synthetic(n_users=50, seed=3), synthetic(n_users=50, seed=3), synthetic(n_users=50, seed=4)
    assert a == b and a != c
    seqs = a.sequences()
    assert len(seqs) == 50
    for events in seqs.values():
        assert 20 <= len(events) <= 60
        assert all(e.ts >= SYNTHETIC_START_MS for e in events)
        assert all(x.ts < y.ts for x, y in pairwise(events))
    assert {e.action for e in a.clicks} == {"view", "click", "cart", "buy"}
    categories = {cat for cats in a.catalogue.categories.values() for cat in cats}
    assert "rock" in categories and a.catalogue.titles["i1"].startswith("rock #")
    assert a.texts and all(e.kind == "search" and any(c in e.text for c in categories) for e in a.texts)


def test_datasets_module_does_not_import_torch() -> None:
    import subprocess

    code = "import encoders, encoders.data, sys; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_config_round_trip_and_unknown_keys() -> None:
    config = EncoderConfig(n_items=10, d_model=32)
    assert EncoderConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="unknown keys \\['d_modle'\\]"):
        EncoderConfig.from_dict({"n_items": 10, "d_modle": 32})
    with pytest.raises(ConfigError, match="n_heads"):
        EncoderConfig(n_items=10, d_model=30, n_heads=4)


def test_vocab(tmp_path: Path) -> None:
    vocab = ItemVocab.from_items(["b", "a", "b", "c"])
    assert len(vocab) == 5 and vocab.index("a") == 2 and vocab.index("nope") == 1
    assert vocab.item_id(4) == "c"
    with pytest.raises(IndexError):
        vocab.item_id(1)
    vocab.save(tmp_path / "v.json")
    loaded = ItemVocab.load(tmp_path / "v.json")
    assert loaded.item_ids == vocab.item_ids
    assert len(ACTIONS) == 8
    assert [action_index(a) for a in ("view", "clicks", "orders", "", "like")] == [2, 3, 5, 1, 7]
