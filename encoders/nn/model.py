"""SASRec-style causal Transformer over a user's recent events.

Each position's input is item + action + time-gap embeddings; GPT-2 (from
`transformers`) adds learned position embeddings and runs causal
self-attention.  The item embedding table is tied: it embeds inputs and
scores every catalogue item against a hidden state.

Padding is on the RIGHT: a sequence of n events sits at positions 0..n-1 and
padding follows.  With causal attention a valid position attends only to
itself and earlier positions, all of them real events, so no attention mask
is needed and a user's vector does not depend on how far the batch was
padded.  Inference relies on this to pad users to a few length buckets;
tests/encoders check it.  Keep it that way: a left-padded or masked variant
would make results depend on the batch's padding.

Inference has a second, lean path over the same weights (`encode_cached`,
`extend`): the GPT-2 block written out in a dozen tensor operations, which
also returns each layer's attention keys and values.  With them, events
appended to a sequence are encoded alone, attending to the cached keys and
values of the events before them: the hidden state of a new event is the one
the full forward pass would give (causal attention: earlier positions never
see later ones), at the cost of one position instead of the whole window.
Tests hold both paths to the training forward pass (``allclose``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GPT2Config, GPT2Model

from ..config import EncoderConfig

__all__ = ["SequenceEncoder", "resolve_device", "time_buckets"]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" -> cuda when available, else cpu; anything else is passed to torch."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def time_buckets(items: torch.Tensor, gaps: torch.Tensor, n_buckets: int) -> torch.Tensor:
    """Log2-bucketed gap (ms) to the previous event.

    0 = padding, 1 = no previous event (gap -1), then 2 + floor(log2(1 + seconds)),
    capped at ``n_buckets - 1`` (32 buckets reach ~17 years).
    """
    seconds = gaps.clamp(min=0).to(torch.float32) / 1000.0
    buckets = (2 + torch.floor(torch.log2(1.0 + seconds))).to(torch.long).clamp(max=n_buckets - 1)
    buckets = torch.where(gaps < 0, torch.ones_like(buckets), buckets)
    return torch.where(items == 0, torch.zeros_like(buckets), buckets)


def _gpt2_config(config: EncoderConfig) -> GPT2Config:
    gpt = GPT2Config(
        vocab_size=1,  # token embeddings are unused: we pass inputs_embeds
        n_embd=config.d_model,
        n_layer=config.n_layers,
        n_head=config.n_heads,
        n_positions=config.max_len,
        resid_pdrop=config.dropout,
        embd_pdrop=config.dropout,
        attn_pdrop=config.dropout,
        bos_token_id=0,
        eos_token_id=0,
        use_cache=False,
    )
    # Scaled-dot-product attention (flash / memory-efficient kernels) where torch has it.
    gpt._attn_implementation = "sdpa"
    return gpt


class SequenceEncoder(nn.Module):
    """Causal Transformer encoder; its last hidden state is the user's interest.

    >>> m = SequenceEncoder(EncoderConfig(n_items=10, max_len=8))
    >>> items = torch.tensor([[2, 3, 4, 0]]); acts = torch.tensor([[3, 3, 5, 0]])
    >>> gaps = torch.tensor([[-1, 5000, 60000, 0]])
    >>> m.user_vectors(items, acts, gaps, torch.tensor([3])).shape
    torch.Size([1, 64])
    """

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        d = config.d_model
        self.item_emb = nn.Embedding(config.n_items, d, padding_idx=0)
        self.action_emb = nn.Embedding(config.n_actions, d, padding_idx=0)
        self.time_emb = nn.Embedding(config.n_time_buckets, d, padding_idx=0)
        self.gpt = GPT2Model(_gpt2_config(config))
        for emb in (self.item_emb, self.action_emb, self.time_emb):
            # GPT-2's own init scale; N(0, 1) would drown the position embeddings.
            nn.init.normal_(emb.weight, std=0.02)
            with torch.no_grad():
                emb.weight[0].zero_()
        # Created last, so a model without the head draws the same initial
        # weights as before the head existed and has exactly its parameters.
        self.action_head = nn.Linear(d, config.n_actions) if config.action_head else None

    @property
    def has_action_head(self) -> bool:
        """Whether the model predicts the next action (``config.action_head``)."""
        return self.action_head is not None

    def next_action_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits [..., n_actions] of the NEXT event's action from hidden states [..., d].

        The head reads the hidden state that scores items: position t predicts
        the action of event t + 1, so a user's last hidden state predicts the
        action of their next event.  Indices follow `encoders.vocab.ACTIONS`.
        """
        if self.action_head is None:
            raise ValueError("this model has no next-action head (config.action_head is False)")
        return self.action_head(hidden)

    def forward(self, items: torch.Tensor, actions: torch.Tensor, gaps: torch.Tensor) -> torch.Tensor:
        """Hidden states [B, L, d] (after GPT-2's final layer norm) of right-padded inputs.

        ``items``/``actions`` are vocabulary indices, ``gaps`` the ms since the
        previous event (-1 for none); all int64 [B, L] with L <= max_len.
        """
        if items.shape[1] > self.config.max_len:
            raise ValueError(f"sequence length {items.shape[1]} exceeds max_len={self.config.max_len}")
        x = self._embed(items, actions, gaps)
        # No attention_mask on purpose: right padding + causal attention (module docstring).
        return self.gpt(inputs_embeds=x, use_cache=False).last_hidden_state

    def item_table(self) -> torch.Tensor:
        """Tied item embeddings [n_items, d]; rows 0 (pad) and 1 (unknown) are not items."""
        return self.item_emb.weight

    def user_vectors(
        self, items: torch.Tensor, actions: torch.Tensor, gaps: torch.Tensor, lengths: torch.Tensor
    ) -> torch.Tensor:
        """Interest vectors [B, d]: the hidden state at each sequence's last event."""
        hidden = self.forward(items, actions, gaps)
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        return hidden[rows, lengths.to(hidden.device) - 1]

    # ------------------------------------------------------------ inference with cached keys and values
    def _embed(self, items: torch.Tensor, actions: torch.Tensor, gaps: torch.Tensor) -> torch.Tensor:
        """Each position's input before GPT-2 adds its position: scaled item + action + time gap."""
        x = self.item_emb(items)
        if self.config.input_scale != 1.0:
            x = x * self.config.input_scale
        x = x + self.action_emb(actions)
        return x + self.time_emb(time_buckets(items, gaps, self.config.n_time_buckets))

    def _inputs(self, items: torch.Tensor, actions: torch.Tensor, gaps: torch.Tensor,
                positions: torch.Tensor) -> torch.Tensor:
        return self._embed(items, actions, gaps) + self.gpt.wpe(positions)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """[B, L, d] -> [B, H, L, d/H]."""
        b, length, d = x.shape
        return x.view(b, length, self.config.n_heads, d // self.config.n_heads).transpose(1, 2)

    def _mlp(self, block, x: torch.Tensor) -> torch.Tensor:
        d = x.shape[-1]
        h = F.layer_norm(x, (d,), block.ln_2.weight, block.ln_2.bias, block.ln_2.eps)
        h = F.gelu(block.mlp.c_fc(h), approximate="tanh")  # GPT-2's "gelu_new"
        return x + block.mlp.c_proj(h)

    def _final(self, x: torch.Tensor) -> torch.Tensor:
        ln = self.gpt.ln_f
        return F.layer_norm(x, (x.shape[-1],), ln.weight, ln.bias, ln.eps)

    def encode_cached(self, items: torch.Tensor, actions: torch.Tensor,
                      gaps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden states [B, L, d] (as `forward` gives them, in eval mode) and keys/values
        [n_layers, 2, B, H, L, d/H] of right-padded inputs at positions 0..L-1."""
        b, length = items.shape
        d = self.config.d_model
        x = self._inputs(items, actions, gaps, torch.arange(length, device=items.device).expand(b, length))
        cache = []
        for block in self.gpt.h:
            h = F.layer_norm(x, (d,), block.ln_1.weight, block.ln_1.bias, block.ln_1.eps)
            q, k, v = (self._heads(t) for t in block.attn.c_attn(h).split(d, dim=2))
            cache.append(torch.stack([k, v]))
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + block.attn.c_proj(a.transpose(1, 2).reshape(b, length, d))
            x = self._mlp(block, x)
        return self._final(x), torch.stack(cache)

    def extend(self, items: torch.Tensor, actions: torch.Tensor, gaps: torch.Tensor, past: torch.Tensor,
               past_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden states [B, k, d] of k events appended to each row, and their keys/values [n_layers, 2, B, H, k, d/H].

        ``past`` [n_layers, 2, B, H, P, d/H] holds the keys and values of the
        events before them (row b's first ``past_lengths[b]`` positions; the
        rest is padding), so the new events sit at positions
        ``past_lengths[b]`` onwards.  New events are right-padded like any
        input: a padded one's output is meaningless and attends to nothing a
        real one needs.
        """
        b, k = items.shape
        d, p = self.config.d_model, past.shape[-2]
        lengths = past_lengths.to(items.device)
        positions = lengths[:, None] + torch.arange(k, device=items.device)[None, :]
        x = self._inputs(items, actions, gaps, positions.clamp(max=self.config.max_len - 1))
        keep_past = (torch.arange(p, device=items.device)[None, :] < lengths[:, None])[:, None, None, :]
        causal = torch.ones(k, k, dtype=torch.bool, device=items.device).tril()
        scale = 1.0 / math.sqrt(d // self.config.n_heads)
        cache = []
        for layer, block in enumerate(self.gpt.h):
            h = F.layer_norm(x, (d,), block.ln_1.weight, block.ln_1.bias, block.ln_1.eps)
            q, key, value = (self._heads(t) for t in block.attn.c_attn(h).split(d, dim=2))
            cache.append(torch.stack([key, value]))
            past_k, past_v = past[layer, 0], past[layer, 1]
            scores = torch.cat([(q @ past_k.transpose(-1, -2)).masked_fill(~keep_past, float("-inf")),
                                (q @ key.transpose(-1, -2)).masked_fill(~causal, float("-inf"))], dim=-1)
            weights = torch.softmax(scores * scale, dim=-1)
            a = weights[..., :p] @ past_v + weights[..., p:] @ value
            x = x + block.attn.c_proj(a.transpose(1, 2).reshape(b, k, d))
            x = self._mlp(block, x)
        return self._final(x), torch.stack(cache)
