"""The Transformer blocks: SASRec's and the gated one against their references' formulas, all independent of padding."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from encoders.config import BLOCKS, EncoderConfig
from encoders.errors import ConfigError
from encoders.nn.model import GatedBlock, SASRecBlock, SequenceEncoder


def _reference_block(block: SASRecBlock, x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """The block as `antklen/sasrec-bert4rec-recsys23` (after pmixer/SASRec.pytorch) computes it,
    with `nn.MultiheadAttention` and a point-wise feed-forward layer given our block's weights."""
    d = x.shape[-1]
    mha = nn.MultiheadAttention(d, n_heads)
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([block.query.weight, block.key_value.weight]))
        mha.in_proj_bias.copy_(torch.cat([block.query.bias, block.key_value.bias]))
        mha.out_proj.weight.copy_(block.out.weight)
        mha.out_proj.bias.copy_(block.out.bias)
    length = x.shape[1]
    mask = ~torch.tril(torch.ones((length, length), dtype=torch.bool))
    seqs = x.transpose(0, 1)
    q = block.ln_query(seqs)
    attended, _ = mha(q, seqs, seqs, attn_mask=mask)
    seqs = block.ln_ffn((q + attended).transpose(0, 1))
    return seqs + block.ffn_out(torch.relu(block.ffn_in(seqs)))


@pytest.mark.parametrize("n_heads", [1, 2])
def test_the_sasrec_block_is_the_references(n_heads):
    torch.manual_seed(0)
    model = SequenceEncoder(EncoderConfig(n_items=20, d_model=16, n_layers=1, n_heads=n_heads, max_len=10,
                                          block="sasrec")).eval()
    x = torch.randn(3, 7, 16)
    with torch.no_grad():
        ours, _ = model._run_blocks(x, lambda layer, q, k, v: nn.functional.scaled_dot_product_attention(
            q, k, v, is_causal=True), keep_cache=False)
        block = model.blocks[0]
        want = _reference_block(block, x, n_heads)
        want = nn.functional.layer_norm(want, (16,), model.ln_final.weight, model.ln_final.bias, 1e-8)
    torch.testing.assert_close(ours, want, atol=1e-5, rtol=1e-5)


def _reference_gated_block(block: GatedBlock, x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """The LiGR layer as RecTools' `LiGRLayer` (eSASRec) computes it, in eval mode, given our block's weights:
    `nn.MultiheadAttention` on the normalised input, sigmoid gates read from the residual stream, SwiGLU."""
    d = x.shape[-1]
    mha = nn.MultiheadAttention(d, n_heads, batch_first=True)
    with torch.no_grad():
        mha.in_proj_weight.copy_(block.qkv.weight)
        mha.in_proj_bias.copy_(block.qkv.bias)
        mha.out_proj.weight.copy_(block.out.weight)
        mha.out_proj.bias.copy_(block.out.bias)
    length = x.shape[1]
    mask = ~torch.tril(torch.ones((length, length), dtype=torch.bool))
    h = block.ln_attention(x)
    attended, _ = mha(h, h, h, attn_mask=mask, need_weights=False)
    x = x + torch.sigmoid(block.gate_attention(x)) * attended
    gate_weight, up_weight = block.ffn_gate_up.weight.chunk(2, dim=0)
    h = block.ln_ffn(x)
    swiglu = (nn.functional.silu(h @ gate_weight.T) * (h @ up_weight.T)) @ block.ffn_down.weight.T
    return x + torch.sigmoid(block.gate_ffn(x)) * swiglu


@pytest.mark.parametrize("n_heads", [1, 2])
def test_the_gated_block_is_ligrs(n_heads):
    torch.manual_seed(0)
    model = SequenceEncoder(EncoderConfig(n_items=20, d_model=16, n_layers=1, n_heads=n_heads, max_len=10,
                                          block="gated")).eval()
    with torch.no_grad():  # gates away from their start, so that a wrong input to them shows
        for gate in (model.blocks[0].gate_attention, model.blocks[0].gate_ffn):
            gate.weight.normal_(std=0.5)
            gate.bias.normal_(std=0.5)
    x = torch.randn(3, 7, 16)
    with torch.no_grad():
        ours, _ = model._run_blocks(x, lambda layer, q, k, v: nn.functional.scaled_dot_product_attention(
            q, k, v, is_causal=True), keep_cache=False)
        want = _reference_gated_block(model.blocks[0], x, n_heads)
        want = nn.functional.layer_norm(want, (16,), model.ln_final.weight, model.ln_final.bias, 1e-8)
    torch.testing.assert_close(ours, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("block", BLOCKS)
def test_a_users_vector_does_not_depend_on_the_padding(block):
    torch.manual_seed(1)
    model = SequenceEncoder(EncoderConfig(n_items=30, d_model=16, n_layers=2, n_heads=2, max_len=12,
                                          block=block)).eval()
    items = torch.tensor([[5, 9, 3, 7, 0, 0, 0, 0]])
    actions = torch.where(items > 0, 3, 0)
    gaps = torch.tensor([[-1, 4000, 90_000, 10, 0, 0, 0, 0]])
    with torch.no_grad():
        padded = model.user_vectors(items, actions, gaps, torch.tensor([4]))
        alone = model.user_vectors(items[:, :4], actions[:, :4], gaps[:, :4], torch.tensor([4]))
        other = model.user_vectors(items[:, :3], actions[:, :3], gaps[:, :3], torch.tensor([3]))
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(padded, other, atol=1e-3)


def test_dropout_acts_in_training_only():
    torch.manual_seed(2)
    model = SequenceEncoder(EncoderConfig(n_items=30, d_model=16, n_layers=2, n_heads=1, max_len=12, dropout=0.5,
                                          block="sasrec"))
    items = torch.tensor([[5, 9, 3, 7]])
    actions, gaps = torch.full_like(items, 3), torch.tensor([[-1, 1, 1, 1]])
    with torch.no_grad():
        assert not torch.allclose(model(items, actions, gaps), model(items, actions, gaps))
        model.eval()
        torch.testing.assert_close(model(items, actions, gaps), model(items, actions, gaps))


@pytest.mark.parametrize("block", BLOCKS)
def test_attention_dropout_is_its_own_knob_and_defaults_to_dropout(block):
    items = torch.tensor([[5, 9, 3, 7]])
    actions, gaps = torch.full_like(items, 3), torch.tensor([[-1, 1, 1, 1]])

    def varies_in_training(**dropouts) -> bool:
        torch.manual_seed(2)
        model = SequenceEncoder(EncoderConfig(n_items=30, d_model=16, n_layers=2, n_heads=1, max_len=12,
                                              block=block, **dropouts))
        with torch.no_grad():
            return not torch.allclose(model(items, actions, gaps), model(items, actions, gaps))

    # With every other dropout off, only the attention weights' can make two passes differ.
    assert varies_in_training(dropout=0.0, attention_dropout=0.5)
    assert not varies_in_training(dropout=0.0, attention_dropout=0.0)
    assert not varies_in_training(dropout=0.0)  # None: the same as dropout
    assert EncoderConfig(n_items=30, dropout=0.3).attention_dropout_p == 0.3
    assert EncoderConfig.from_dict({"n_items": 30, "dropout": 0.3}).attention_dropout is None  # an old config.json
    with pytest.raises(ConfigError, match=r"attention_dropout=1.0 must be in \[0, 1\)"):
        EncoderConfig(n_items=30, attention_dropout=1.0)


def test_the_blocks_have_their_own_weights_and_old_configs_are_gpt2(tmp_path):
    gpt2 = SequenceEncoder(EncoderConfig(n_items=30, d_model=16, n_layers=1, n_heads=1))
    sasrec = SequenceEncoder(EncoderConfig(n_items=30, d_model=16, n_layers=1, n_heads=1, block="sasrec"))
    gated = SequenceEncoder(EncoderConfig(n_items=30, d_model=16, n_layers=1, n_heads=1, block="gated"))
    assert any(name.startswith("gpt.h.0.") for name in gpt2.state_dict())
    assert any(name.startswith("blocks.0.") for name in sasrec.state_dict())
    assert "blocks.0.gate_ffn.weight" in gated.state_dict() and "blocks.0.gate_ffn.weight" not in sasrec.state_dict()
    # A config.json written before the choice existed has no "block": it is GPT-2's.
    old = json.loads(json.dumps({"n_items": 30, "d_model": 16}))
    assert EncoderConfig.from_dict(old).block == "gpt2"
    with pytest.raises(ConfigError, match="block='bert' must be one of"):
        EncoderConfig(n_items=30, block="bert")
