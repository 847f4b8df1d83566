"""SASRec-style causal Transformer over a user's recent events.

Each position's input is item + action + time-gap embeddings plus a learned
position embedding, run through causal self-attention blocks of one of three
kinds (`EncoderConfig.block`):

- ``gpt2``: GPT-2's pre-norm block from `transformers` (`GPT2Model`): the
  residual stream is never normalised inside a block, the feed-forward layer
  is 4d wide with GELU.
- ``sasrec``: the block of SASRec (Kang & McAuley 2018) as SASRec+
  (Klenitskiy & Vasilev 2023) trains it (`SASRecBlock`): the query is
  normalised, keys and values are not, the residual runs from the normalised
  query, and the feed-forward layer is d wide with ReLU.  On ML-1M it learns
  more per epoch than GPT-2's block at the same size (README).
- ``gated``: a gated pre-norm block with a SwiGLU feed-forward layer
  (`GatedBlock`), LinkedIn's LiGR layer as eSASRec (Tikhonovich et al. 2025)
  uses it: each sub-layer's output joins the residual stream through a
  sigmoid gate read from that stream.

The item embedding table is tied: it embeds inputs and scores every
catalogue item against a hidden state.

Padding is on the RIGHT: a sequence of n events sits at positions 0..n-1 and
padding follows.  With causal attention a valid position attends only to
itself and earlier positions, all of them real events, so no attention mask
is needed and a user's vector does not depend on how far the batch was
padded.  Inference relies on this to pad users to a few length buckets;
tests/encoders check it.  Keep it that way: a left-padded or masked variant
would make results depend on the batch's padding.

Inference has a second, lean path over the same weights (`encode_cached`,
`extend`): each block written out in a dozen tensor operations, which also
returns each layer's attention keys and values.  With them, events
appended to a sequence are encoded alone, attending to the cached keys and
values of the events before them: the hidden state of a new event is the one
the full forward pass would give (causal attention: earlier positions never
see later ones), at the cost of one position instead of the whole window.
Tests hold both paths to the training forward pass (``allclose``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GPT2Config, GPT2Model

from ..config import EncoderConfig
from ..errors import ConfigError
from ..features import CONTEXT_FEATURES, CONTEXT_SIZES

__all__ = ["GatedBlock", "SASRecBlock", "SequenceEncoder", "resolve_device", "time_buckets"]


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
        attn_pdrop=config.attention_dropout_p,
        bos_token_id=0,
        eos_token_id=0,
        use_cache=False,
    )
    # Scaled-dot-product attention (flash / memory-efficient kernels) where torch has it.
    gpt._attn_implementation = "sdpa"
    return gpt


_CELL = CONTEXT_FEATURES.index("cell")
CONTEXT_DROPOUT = 0.1  # per event and feature, in training: the model also learns "unknown"

# attend(q, k, v) -> attention output, all [B, L, d] (heads not yet split).
Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class SASRecBlock(nn.Module):
    """SASRec's Transformer block, as `antklen/sasrec-bert4rec-recsys23` trains it.

    ``x -> q = LN(x); y = q + Attention(q, x, x); y = LN(y); y + FFN(y)``
    with a d-wide ReLU feed-forward layer, dropout on the attention weights
    (applied by ``attend``) and inside the feed-forward layer.  Its
    parameters start as the reference's do: the attention's input
    projections Xavier-uniform (`nn.MultiheadAttention`'s), every other
    linear layer N(0, 0.02) with zero bias.
    """

    def __init__(self, d_model: int, dropout: float) -> None:
        super().__init__()
        self.ln_query = nn.LayerNorm(d_model, eps=1e-8)
        self.query = nn.Linear(d_model, d_model)
        self.key_value = nn.Linear(d_model, 2 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.ln_ffn = nn.LayerNorm(d_model, eps=1e-8)
        self.ffn_in = nn.Linear(d_model, d_model)
        self.ffn_out = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)
        # Xavier over the [3d, d] matrix nn.MultiheadAttention keeps q, k and v in.
        bound = math.sqrt(6.0 / (4 * d_model))
        for layer in (self.query, self.key_value):
            nn.init.uniform_(layer.weight, -bound, bound)
        for layer in (self.out, self.ffn_in, self.ffn_out):
            nn.init.normal_(layer.weight, std=0.02)
        for layer in (self.query, self.key_value, self.out, self.ffn_in, self.ffn_out):
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, attend: Attend) -> torch.Tensor:
        query = self.ln_query(x)
        key, value = self.key_value(x).chunk(2, dim=-1)
        x = self.ln_ffn(query + self.out(attend(self.query(query), key, value)))
        return x + self.dropout(self.ffn_out(F.relu(self.dropout(self.ffn_in(x)))))


class GatedBlock(nn.Module):
    """A gated pre-norm block: LiGR (Borisyuk et al. 2025) as eSASRec trains it.

    ``h = LN(x); x = x + sigmoid(G1 x) * Attention(h, h, h);
    h = LN(x); x + sigmoid(G2 x) * SwiGLU(h)``, with dropout on both
    sub-layers' outputs and on the attention weights (``attend``).  The
    SwiGLU layer is ``FFN_WIDTH`` x d wide, without biases (RecTools'
    `LiGRLayer` defaults).  Pre-norm keeps the residual stream unnormalised,
    so deeper stacks stay trainable; the gates let a position keep its input
    where attending would not help.  Initialised as `SASRecBlock`: attention
    projections Xavier-uniform, the other weights N(0, 0.02); the gates start
    at sigmoid(0) = 0.5.
    """

    FFN_WIDTH = 4

    def __init__(self, d_model: int, dropout: float) -> None:
        super().__init__()
        inner = self.FFN_WIDTH * d_model
        self.ln_attention = nn.LayerNorm(d_model, eps=1e-8)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.gate_attention = nn.Linear(d_model, d_model)
        self.ln_ffn = nn.LayerNorm(d_model, eps=1e-8)
        self.ffn_gate_up = nn.Linear(d_model, 2 * inner, bias=False)
        self.ffn_down = nn.Linear(inner, d_model, bias=False)
        self.gate_ffn = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)
        nn.init.uniform_(self.qkv.weight, -math.sqrt(6.0 / (4 * d_model)), math.sqrt(6.0 / (4 * d_model)))
        for layer in (self.out, self.gate_attention, self.ffn_gate_up, self.ffn_down, self.gate_ffn):
            nn.init.normal_(layer.weight, std=0.02)
        for layer in (self.qkv, self.out, self.gate_attention, self.gate_ffn):
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, attend: Attend) -> torch.Tensor:
        attended = self.out(attend(*self.qkv(self.ln_attention(x)).chunk(3, dim=-1)))
        x = x + torch.sigmoid(self.gate_attention(x)) * self.dropout(attended)
        gate, up = self.ffn_gate_up(self.ln_ffn(x)).chunk(2, dim=-1)
        return x + torch.sigmoid(self.gate_ffn(x)) * self.dropout(self.ffn_down(F.silu(gate) * up))


_BLOCK_CLASSES = {"sasrec": SASRecBlock, "gated": GatedBlock}


def _gpt2_block(block, x: torch.Tensor, attend: Attend) -> torch.Tensor:
    """GPT-2's block (a `transformers` GPT2Block's weights) in eval mode: no dropout."""
    d = x.shape[-1]
    h = F.layer_norm(x, (d,), block.ln_1.weight, block.ln_1.bias, block.ln_1.eps)
    x = x + block.attn.c_proj(attend(*block.attn.c_attn(h).split(d, dim=2)))
    h = F.layer_norm(x, (d,), block.ln_2.weight, block.ln_2.bias, block.ln_2.eps)
    return x + block.mlp.c_proj(F.gelu(block.mlp.c_fc(h), approximate="tanh"))  # GPT-2's "gelu_new"


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
        if config.block == "gpt2":
            # Keeps the attribute names (and so the weight names) of every checkpoint before "sasrec".
            self.gpt = GPT2Model(_gpt2_config(config))
        else:
            self.pos_emb = nn.Embedding(config.max_len, d)
            self.emb_dropout = nn.Dropout(config.dropout)
            block = _BLOCK_CLASSES[config.block]
            self.blocks = nn.ModuleList(block(d, config.dropout) for _ in range(config.n_layers))
            self.ln_final = nn.LayerNorm(d, eps=1e-8)
            nn.init.normal_(self.pos_emb.weight, std=0.02)
        for emb in (self.item_emb, self.action_emb, self.time_emb):
            # GPT-2's own init scale; N(0, 1) would drown the position embeddings.
            nn.init.normal_(emb.weight, std=0.02)
            with torch.no_grad():
                emb.weight[0].zero_()
        # Created last, so a model without the head draws the same initial
        # weights as before the head existed and has exactly its parameters.
        self.action_head = nn.Linear(d, config.n_actions) if config.action_head else None
        if config.context:  # after the head, for the same reason
            # Row 0 of each is "unknown": learned, not zero, so that a model with context
            # serves events without it (the worker, until it stores context) as trained to.
            # One table per feature, read or not, so the weights' names never depend on the choice.
            self.context_emb = nn.ModuleList(nn.Embedding(CONTEXT_SIZES[name], d) for name in CONTEXT_FEATURES)
            used = config.context_features or CONTEXT_FEATURES
            unknown = sorted(set(used) - set(CONTEXT_FEATURES))
            if unknown:
                raise ConfigError("values", f"context_features: unknown {unknown}; expected some of {CONTEXT_FEATURES}")
            self.context_used = [i for i, name in enumerate(CONTEXT_FEATURES) if name in used]
            for emb in self.context_emb:
                nn.init.normal_(emb.weight, std=0.02)
            # Each item's place cell (0: none); its embedding joins the item's row of the table.
            self.register_buffer("item_cells", torch.zeros(config.n_items, dtype=torch.long))

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

    def forward(self, items: torch.Tensor, actions: torch.Tensor, gaps: torch.Tensor,
                context: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states [B, L, d] (after the final layer norm) of right-padded inputs.

        ``items``/``actions`` are vocabulary indices, ``gaps`` the ms since the
        previous event (-1 for none); all int64 [B, L] with L <= max_len.
        ``context`` [B, L, len(CONTEXT_FEATURES)] are the events' context
        features (`encoders.features.context_columns`); None is "unknown" for
        every event.  A model without context ignores it.
        """
        if items.shape[1] > self.config.max_len:
            raise ValueError(f"sequence length {items.shape[1]} exceeds max_len={self.config.max_len}")
        if self.config.block == "gpt2":
            # No attention_mask on purpose: right padding + causal attention (module docstring).
            x = self._embed(items, actions, gaps, context)
            return self.gpt(inputs_embeds=x, use_cache=False).last_hidden_state
        x = self.emb_dropout(self._inputs(items, actions, gaps, self._positions(items), context))
        # Without dropout on the weights torch takes its fused attention kernel (faster on the CPU).
        dropout = self.config.attention_dropout_p if self.training else 0.0
        hidden, _ = self._run_blocks(x, lambda layer, q, k, v: F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=dropout), keep_cache=False)
        return hidden

    def item_table(self) -> torch.Tensor:
        """Tied item embeddings [n_items, d]; rows 0 (pad) and 1 (unknown) are not items.

        With context, each item's row adds the embedding of its place cell, the
        one its events' cells have: scores can then prefer places near the user.
        """
        if not self.config.context or _CELL not in self.context_used:
            return self.item_emb.weight
        return self.item_emb.weight + self.context_emb[_CELL](self.item_cells)

    def set_item_cells(self, cells: torch.Tensor) -> None:
        """Each item's place cell (`encoders.features.cell_of`; 0: none), [n_items]."""
        if not self.config.context:
            raise ValueError("this model has no context features (config.context is False)")
        self.item_cells.copy_(cells.to(self.item_cells))

    def user_vectors(
        self, items: torch.Tensor, actions: torch.Tensor, gaps: torch.Tensor, lengths: torch.Tensor,
        context: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Interest vectors [B, d]: the hidden state at each sequence's last event."""
        hidden = self.forward(items, actions, gaps, context)
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        return hidden[rows, lengths.to(hidden.device) - 1]

    # ------------------------------------------------------------ inference with cached keys and values
    def _embed(self, items: torch.Tensor, actions: torch.Tensor, gaps: torch.Tensor,
               context: torch.Tensor | None = None) -> torch.Tensor:
        """Each position's input before its position is added: scaled item + action + time gap (+ context)."""
        x = self.item_emb(items)
        if self.config.input_scale != 1.0:
            x = x * self.config.input_scale
        x = x + self.action_emb(actions)
        x = x + self.time_emb(time_buckets(items, gaps, self.config.n_time_buckets))
        return x + self._context(items, context) if self.config.context else x

    def _context(self, items: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        """The sum of the context features' embeddings [B, L, d]; unknown (row 0) where not given."""
        if context is None:
            context = items.new_zeros((*items.shape, len(CONTEXT_FEATURES)))
        elif self.training:  # some events without context, as the worker will see them
            context = context.masked_fill(torch.rand(context.shape, device=context.device) < CONTEXT_DROPOUT, 0)
        return sum(self.context_emb[i](context[..., i]) for i in self.context_used)

    def _positions(self, items: torch.Tensor) -> torch.Tensor:
        b, length = items.shape
        return torch.arange(length, device=items.device).expand(b, length)

    def _inputs(self, items: torch.Tensor, actions: torch.Tensor, gaps: torch.Tensor,
                positions: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        table = self.gpt.wpe if self.config.block == "gpt2" else self.pos_emb
        return self._embed(items, actions, gaps, context) + table(positions)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """[B, L, d] -> [B, H, L, d/H]."""
        b, length, d = x.shape
        return x.view(b, length, self.config.n_heads, d // self.config.n_heads).transpose(1, 2)

    def _run_blocks(self, x: torch.Tensor, attention: Callable[..., torch.Tensor], *,
                    keep_cache: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``x`` [B, L, d] through every block and the final layer norm.

        ``attention(layer, q, k, v)`` attends with heads split ([B, H, L, d/H]).
        Returns the hidden states and, with ``keep_cache``, every layer's keys
        and values [n_layers, 2, B, H, L, d/H].
        """
        cache = []
        gpt2 = self.config.block == "gpt2"
        for layer, block in enumerate(self.gpt.h if gpt2 else self.blocks):
            def attend(q, k, v, layer=layer):
                q, k, v = self._heads(q), self._heads(k), self._heads(v)
                if keep_cache:
                    cache.append(torch.stack([k, v]))
                a = attention(layer, q, k, v)
                return a.transpose(1, 2).reshape(q.shape[0], q.shape[2], -1)

            x = _gpt2_block(block, x, attend) if gpt2 else block(x, attend)
        final = self.gpt.ln_f if gpt2 else self.ln_final
        hidden = F.layer_norm(x, (x.shape[-1],), final.weight, final.bias, final.eps)
        return hidden, torch.stack(cache) if keep_cache else None

    def encode_cached(self, items: torch.Tensor, actions: torch.Tensor, gaps: torch.Tensor,
                      context: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden states [B, L, d] (as `forward` gives them, in eval mode) and keys/values
        [n_layers, 2, B, H, L, d/H] of right-padded inputs at positions 0..L-1."""
        x = self._inputs(items, actions, gaps, self._positions(items), context)
        return self._run_blocks(x, lambda layer, q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True))

    def extend(self, items: torch.Tensor, actions: torch.Tensor, gaps: torch.Tensor, past: torch.Tensor,
               past_lengths: torch.Tensor, context: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden states [B, k, d] of k events appended to each row, and their keys/values [n_layers, 2, B, H, k, d/H].

        ``past`` [n_layers, 2, B, H, P, d/H] holds the keys and values of the
        events before them (row b's first ``past_lengths[b]`` positions; the
        rest is padding), so the new events sit at positions
        ``past_lengths[b]`` onwards.  New events are right-padded like any
        input: a padded one's output is meaningless and attends to nothing a
        real one needs.
        """
        k, p = items.shape[1], past.shape[-2]
        lengths = past_lengths.to(items.device)
        positions = lengths[:, None] + torch.arange(k, device=items.device)[None, :]
        x = self._inputs(items, actions, gaps, positions.clamp(max=self.config.max_len - 1), context)
        keep_past = (torch.arange(p, device=items.device)[None, :] < lengths[:, None])[:, None, None, :]
        causal = torch.ones(k, k, dtype=torch.bool, device=items.device).tril()
        scale = 1.0 / math.sqrt(self.config.d_model // self.config.n_heads)

        def attention(layer, q, key, value):
            past_k, past_v = past[layer, 0], past[layer, 1]
            scores = torch.cat([(q @ past_k.transpose(-1, -2)).masked_fill(~keep_past, float("-inf")),
                                (q @ key.transpose(-1, -2)).masked_fill(~causal, float("-inf"))], dim=-1)
            weights = torch.softmax(scores * scale, dim=-1)
            return weights[..., :p] @ past_v + weights[..., p:] @ value

        return self._run_blocks(x, attention)
