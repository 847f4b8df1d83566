"""Every option of a training run as one typed, frozen value: `TrainConfig`.

`encoders.training.train.train` and `encoders.training.finetune.finetune`
read their options from a `TrainConfig` instead of loose keywords or a
string-keyed dict, so that a misspelt option or an impossible value fails
when the config is built (before any data is loaded), with a message naming
the option, not silently or deep inside torch.  The model's dimensions
(``d_model`` ... ``attention_dropout``) are options here and go on to the model's own
`encoders.config.EncoderConfig` (`TrainConfig.encoder_config`), which is what
a checkpoint stores as config.json.

>>> config = TrainConfig(epochs=3, progress=False)
>>> config.replace(lr=3e-4).lr
0.0003
>>> TrainConfig.from_dict({"epoch": 3})  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
encoders.errors.ConfigError: training config dict: unknown keys ['epoch'] (did you mean 'epochs'?); ...
>>> TrainConfig(loss="soft")
Traceback (most recent call last):
...
encoders.errors.ConfigError: training config values: loss='soft' must be one of ('auto', 'full', 'sampled')

No torch here: the CLI and the benchmarks can build and check a config
without loading it.
"""

# The field annotations stay strings (PEP 563): `_check_type` reads them to check each value's type.
from __future__ import annotations

import difflib
import numbers
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from dataclasses import replace as _replace
from typing import Any

from ..config import BLOCKS, EncoderConfig
from ..errors import ConfigError
from ..features import CONTEXT_FEATURES, CONTEXT_SWITCHES, named_context_features
from ..protocols import PROTOCOLS

__all__ = ["BATCHINGS", "FULL_SOFTMAX_MAX_ITEMS", "ITEM_INITS", "LOSSES", "LOSS_PRECISIONS", "LR_SCHEDULES",
           "TrainConfig"]

LOSSES = ("auto", "full", "sampled")
LOSS_PRECISIONS = ("auto", "fp32", "bf16")
BATCHINGS = ("random", "length")
LR_SCHEDULES = ("constant", "cosine")
ITEM_INITS = ("random", "text")  # how the item table starts (encoders.training.text_init)
# Above this many items "auto" samples: a full softmax costs N x n_items x d per batch.
FULL_SOFTMAX_MAX_ITEMS = 50_000

_WHAT = "training config"
# Options a checkpoint records as ``train_args`` (metadata.json and report.json), in that order.  The
# model's dimensions are in its config.json and the resolved protocol in ``extra["protocol"]``;
# ``progress`` and ``text_fusion`` change nothing in the weights (the fusion has its own report entry).
_RECORDED = ("epochs", "batch_size", "batching", "lr", "weight_decay", "loss", "negatives", "all_windows", "refit",
             "seed", "patience", "eval_every", "max_seconds", "device", "action_weight", "history", "loss_precision",
             "lr_schedule", "ema_epochs", "item_init")
# What a fine-tune keeps of its parent's recorded options: how the model learns, not the schedule.
_INHERITED = ("loss", "negatives", "all_windows", "weight_decay", "action_weight", "ema_epochs")


@dataclass(frozen=True)
class TrainConfig:
    """The options of `encoders.training.train.train`, checked when built.

    A bad value raises `encoders.errors.ConfigError` naming the option and
    the value; `from_dict` and `replace` also reject unknown keys.  The
    defaults are `train`'s, small and quick (the tests' and benches'); the
    ``interest-updater train`` command has its own, SASRec+'s recipe: 1 head,
    dropout 0.1, inputs x sqrt(d_model), the ``sasrec`` block, 200 epochs,
    patience 10, every window, refit, and max_len from the data
    (`streams.cli.offline.train_config` builds them from its flags).

    >>> TrainConfig(d_model=32, n_heads=4).encoder_config(n_items=10).d_model
    32
    """

    # The model (`EncoderConfig`).
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 2
    max_len: int = 200  # events per training window and per user the model reads
    dropout: float = 0.2
    attention_dropout: float | None = None  # on the attention weights; None: ``dropout``
    input_scale: float = 1.0  # item embeddings of the inputs times this (SASRec: sqrt(d_model))
    block: str = "gpt2"  # the Transformer block, one of encoders.config.BLOCKS
    # How the item table starts: "random", or "text": from the items' embedded texts (encoders.training.text_init;
    # leave-one-out data whose items have titles or text events).
    item_init: str = "random"
    # Context features (and item place cells): "on", "off", "auto" (when the clicks have any), or some of
    # CONTEXT_FEATURES by name, comma-separated ("hour_of_week,cell"): those on, the others left unknown.
    context: str = "auto"
    # The optimisation.
    epochs: int = 50  # most epochs; validation stops earlier
    batch_size: int = 128
    batching: str = "random"  # one of BATCHINGS: "random" (SASRec's) or "length" (similar lengths: faster epochs)
    lr: float = 1e-3
    lr_schedule: str = "constant"  # one of LR_SCHEDULES: "cosine" anneals to 0 by the last epoch or max_seconds
    weight_decay: float = 0.0  # AdamW's
    # The weights that validation, early stopping and the checkpoint read: a moving average of the trained ones
    # over about this many epochs (encoders.training.loop._WeightAverage); 0: the trained weights themselves.
    ema_epochs: float = 0.0
    loss: str = "auto"  # one of LOSSES: "auto" is "full" up to FULL_SOFTMAX_MAX_ITEMS items, else "sampled"
    negatives: int = 256  # sampled negatives per batch when the loss samples
    loss_precision: str = "auto"  # the full softmax's matrix products: LOSS_PRECISIONS ("auto": bf16 where native)
    all_windows: bool = False  # every max_len window of long histories, not only the newest
    refit: bool = False  # retrain on training + validation targets for the chosen epoch count
    protocol: str = "auto"  # "auto" or one of encoders.protocols.PROTOCOLS
    history: str = "auto"  # rank items the user already has? "exclude", "keep", "auto": the protocol's rule
    device: str = "auto"  # "auto" (CUDA when present), "cpu", "cuda", "cuda:1", ...
    seed: int = 0
    # Early stopping on validation NDCG@10.
    patience: int = 5  # evaluations without improvement before stopping
    eval_every: int = 1  # validate every N epochs (and always at the last)
    max_seconds: float | None = None  # also stop at the first epoch end past this wall time
    progress: bool = True  # a tqdm bar
    # What else is trained.
    action_weight: float = 0.2  # weight of the next-action loss; 0: no next-action head
    text_fusion: bool = False  # then a text projection and gate on the frozen encoder

    def __post_init__(self) -> None:
        for f in fields(self):
            _check_type(f.name, getattr(self, f.name), f.type)
        for name in ("d_model", "n_layers", "n_heads", "max_len", "epochs", "batch_size", "negatives",
                     "patience", "eval_every"):
            _require(getattr(self, name) >= 1, name, getattr(self, name), "must be >= 1")
        _require(self.d_model % self.n_heads == 0, "d_model", self.d_model,
                 f"is not divisible by n_heads={self.n_heads}")
        _require(0.0 <= self.dropout < 1.0, "dropout", self.dropout, "must be in [0, 1)")
        _require(self.attention_dropout is None or 0.0 <= self.attention_dropout < 1.0, "attention_dropout",
                 self.attention_dropout, "must be in [0, 1) (or None: dropout)")
        _require(self.input_scale > 0, "input_scale", self.input_scale, "must be > 0")
        _require(self.block in BLOCKS, "block", self.block, f"must be one of {BLOCKS}")
        _require(self.context in CONTEXT_SWITCHES or self.context_features is not None, "context", self.context,
                 f"must be 'auto', 'on', 'off' or some of {', '.join(CONTEXT_FEATURES)}, comma-separated")
        _require(self.history in ("auto", "exclude", "keep"), "history", self.history,
                 "must be 'auto', 'exclude' or 'keep'")
        _require(self.lr > 0, "lr", self.lr, "must be > 0")
        _require(self.weight_decay >= 0, "weight_decay", self.weight_decay, "must be >= 0")
        _require(self.ema_epochs >= 0, "ema_epochs", self.ema_epochs, "must be >= 0 (0: no average)")
        _require(self.lr_schedule in LR_SCHEDULES, "lr_schedule", self.lr_schedule, f"must be one of {LR_SCHEDULES}")
        _require(self.item_init in ITEM_INITS, "item_init", self.item_init, f"must be one of {ITEM_INITS}")
        _require(self.batching in BATCHINGS, "batching", self.batching, f"must be one of {BATCHINGS}")
        _require(self.loss in LOSSES, "loss", self.loss, f"must be one of {LOSSES}")
        _require(self.loss_precision in LOSS_PRECISIONS, "loss_precision", self.loss_precision,
                 f"must be one of {LOSS_PRECISIONS}")
        _require(self.protocol == "auto" or self.protocol in PROTOCOLS, "protocol", self.protocol,
                 f"must be 'auto' or one of {PROTOCOLS}")
        _require(bool(self.device.strip()), "device", self.device, "must name a device (auto, cpu, cuda, cuda:1 ...)")
        # numpy's generators (the batch order) take no negative seed.
        _require(self.seed >= 0, "seed", self.seed, "must be >= 0")
        _require(self.max_seconds is None or self.max_seconds > 0, "max_seconds", self.max_seconds,
                 "must be > 0 (or None: no limit)")
        _require(self.action_weight >= 0, "action_weight", self.action_weight, "must be >= 0")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "dict", *,
                  base: TrainConfig | None = None) -> TrainConfig:
        """``base`` (the defaults when None) with the options in ``d``; an unknown key is an error.

        ``source`` names where ``d`` came from in error messages.

        >>> TrainConfig.from_dict({"d_model": 128, "n_layers": 4}).n_layers
        4
        """
        if not isinstance(d, Mapping):
            raise ConfigError(source, f"expected a mapping of options, got {type(d).__name__}", what=_WHAT)
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(known), key=str)
        if unknown:
            hints = [m for k in unknown for m in difflib.get_close_matches(str(k), known, n=1)]
            hint = f" (did you mean {', '.join(repr(h) for h in hints)}?)" if hints else ""
            raise ConfigError(source, f"unknown keys {unknown}{hint}; expected a subset of {sorted(known)}",
                              what=_WHAT)
        try:
            return _replace(base, **d) if base is not None else cls(**d)
        except ConfigError as exc:  # name where the bad value came from
            raise ConfigError(source, exc.problem, what=_WHAT) from None

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes``; unknown options and bad values are errors.

        >>> TrainConfig().replace(epochs=10, patience=3).epochs
        10
        """
        return TrainConfig.from_dict(changes, "replace()", base=self)

    def to_dict(self) -> dict[str, Any]:
        """Every option, as plain JSON-able values (`from_dict` reads it back)."""
        return asdict(self)

    @property
    def context_features(self) -> tuple[str, ...] | None:
        """The features ``context`` names (`encoders.features.named_context_features`); None for auto, on, off."""
        return named_context_features(self.context)

    def encoder_config(self, n_items: int, *, action_head: bool = False, context: bool = False) -> EncoderConfig:
        """The model's shape: these dimensions over a vocabulary of ``n_items`` (padding and unknown included).

        ``action_head`` and ``context`` are what the data allows (`train` decides).
        """
        return EncoderConfig(n_items, self.d_model, self.n_layers, self.n_heads, self.max_len, self.dropout,
                             action_head=action_head, input_scale=self.input_scale, block=self.block,
                             context=context, context_features=self.context_features if context else None,
                             attention_dropout=self.attention_dropout)

    def negatives_for(self, n_items: int) -> int | None:
        """None for a full softmax over ``n_items``, else the number of sampled negatives per batch.

        >>> TrainConfig().negatives_for(1_000), TrainConfig().negatives_for(100_000)
        (None, 256)
        """
        if self.loss == "full" or (self.loss == "auto" and n_items <= FULL_SOFTMAX_MAX_ITEMS):
            return None
        return self.negatives

    def record(self, *, n_items: int, device: str, action_head: bool, loss_precision: str) -> dict[str, Any]:
        """The options as a checkpoint records them: ``train_args`` in metadata.json and report.json.

        Values as they were in effect: ``negatives`` None for a full softmax
        over ``n_items``, ``device`` resolved (``"cpu"``, ``"cuda"``, not
        ``"auto"``), ``loss_precision`` resolved (``"fp32"`` or ``"bf16"``),
        ``action_weight`` 0.0 for a model without a next-action head.
        """
        effective = {"negatives": self.negatives_for(n_items), "device": device, "loss_precision": loss_precision,
                     "action_weight": self.action_weight if action_head else 0.0}
        return {name: effective.get(name, getattr(self, name)) for name in _RECORDED}

    @classmethod
    def from_record(cls, encoder: EncoderConfig, train_args: Mapping[str, Any],
                    protocol: str = "auto") -> TrainConfig:
        """The config a checkpoint was trained with, as far as training on from it needs.

        The model's dimensions come from its ``encoder`` config; the loss,
        negatives, windows, weight decay and action weight from its recorded
        ``train_args`` (a missing one takes the default); ``protocol`` from
        its metadata.  The schedule (epochs, lr, batch size, patience, seed,
        device ...) is left at the defaults: a fine-tune sets its own.  Other
        recorded keys (``finetuned_from`` ...) are not options and are ignored.
        """
        inherited = {k: train_args[k] for k in _INHERITED if train_args.get(k) is not None}  # None: a full softmax
        return cls.from_dict({"d_model": encoder.d_model, "n_layers": encoder.n_layers, "n_heads": encoder.n_heads,
                              "max_len": encoder.max_len, "dropout": encoder.dropout,
                              "attention_dropout": encoder.attention_dropout,
                              "input_scale": encoder.input_scale, "block": encoder.block,
                              "context": _context_option(encoder), "protocol": protocol,
                              **inherited}, "checkpoint train_args")


def _context_option(encoder: EncoderConfig) -> str:
    """The ``context`` option that trains ``encoder``'s context features again."""
    if not encoder.context:
        return "off"
    return ",".join(encoder.context_features) if encoder.context_features else "on"


def _require(ok: bool, name: str, value: Any, requirement: str) -> None:
    if not ok:
        raise ConfigError("values", f"{name}={value!r} {requirement}", what=_WHAT)


# Annotation -> accepted types.  bool is an int in Python; a flag where a number belongs is a mistake.
_TYPES = {"int": numbers.Integral, "float": numbers.Real, "bool": bool, "str": str}


def _check_type(name: str, value: Any, annotation: str) -> None:
    kinds = [k.strip() for k in annotation.split("|")]
    if value is None and "None" in kinds:
        return
    base = next(k for k in kinds if k != "None")
    ok = isinstance(value, _TYPES[base]) and (base == "bool" or not isinstance(value, bool))
    if not ok:
        raise ConfigError("values", f"{name}={value!r} must be {'an' if base == 'int' else 'a'} {base}"
                          + (" or None" if "None" in kinds else ""), what=_WHAT)
