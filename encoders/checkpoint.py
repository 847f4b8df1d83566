"""Checkpoint directories: config + weights + vocabulary + metadata.

Layout (all files written together, then moved into place so that a worker
polling for a new model never sees a half-written directory)::

    config.json       EncoderConfig
    model.safetensors SequenceEncoder weights
    vocab.json        ItemVocab (real items in index order)
    metadata.json     CheckpointMetadata (dataset, metrics, created_at, ...)
    fusion.safetensors + fusion.json   optional `encoders.nn.fusion.TextFusion` (weights, dims)
    categories.json   optional item_id -> categories (vocabulary items only)

``model_version`` is the first 12 hex digits of the weights' SHA-256 (with a
fusion: of the weights followed by the fusion weights and dims), so the same
weights always carry the same version and a new fusion gives a new one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file

from .config import EncoderConfig
from .errors import CheckpointError, EncoderError
from .nn.model import SequenceEncoder, resolve_device
from .vocab import ItemVocab

if TYPE_CHECKING:  # imported when a checkpoint has a fusion, in load_fusion
    from .nn.fusion import TextFusion

__all__ = ["CheckpointMetadata", "load_categories", "load_checkpoint", "load_fusion", "read_metadata",
           "save_checkpoint"]

CONFIG, WEIGHTS, VOCAB, METADATA = "config.json", "model.safetensors", "vocab.json", "metadata.json"
FUSION_WEIGHTS, FUSION_DIMS, CATEGORIES = "fusion.safetensors", "fusion.json", "categories.json"


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class CheckpointMetadata:
    """What a checkpoint was trained on and how well it did."""

    dataset: str
    created_at: str = field(default_factory=_now_iso)
    epochs: int = 0
    train_seconds: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    model_version: str = ""  # filled in by save_checkpoint
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "dict") -> CheckpointMetadata:
        """Build from JSON; keys this version does not know are kept in ``extra``.

        Lenient on purpose (unlike EncoderConfig): metadata only describes a
        checkpoint, and a worker must still load one written by a newer trainer.
        """
        if "dataset" not in d:
            raise CheckpointError(source, f"metadata has no 'dataset' key (keys: {sorted(d)})")
        known = {f.name for f in fields(cls)}
        extra = dict(d.get("extra") or {})
        extra.update({k: v for k, v in d.items() if k not in known})
        return cls(**{k: v for k, v in d.items() if k in known and k != "extra"}, extra=extra)


def _weights_version(path: Path, *more: Path) -> str:
    digest = hashlib.sha256(path.read_bytes())
    for extra in more:  # fusion files: a checkpoint without them keeps its old version
        digest.update(extra.read_bytes())
    return digest.hexdigest()[:12]


def _write_extras(tmp: Path, vocab: ItemVocab, fusion: Any, categories: Mapping[str, Any] | None) -> list[Path]:
    """Fusion and categories files; returns the files that enter model_version."""
    if categories is not None:
        kept = {k: list(v) for k, v in sorted(categories.items()) if k in vocab}
        (tmp / CATEGORIES).write_text(json.dumps(kept), encoding="utf-8")
    if fusion is None:
        return []
    state = {k: v.detach().to("cpu").contiguous() for k, v in fusion.state_dict().items()}
    save_file(state, str(tmp / FUSION_WEIGHTS), metadata={"format": "pt"})
    (tmp / FUSION_WEIGHTS).chmod(0o644)
    (tmp / FUSION_DIMS).write_text(json.dumps(fusion.dims(), indent=2, sort_keys=True), encoding="utf-8")
    return [tmp / FUSION_WEIGHTS, tmp / FUSION_DIMS]


def _write_files(tmp: Path, model: SequenceEncoder, vocab: ItemVocab, metadata: CheckpointMetadata,
                 fusion: Any = None, categories: Mapping[str, Any] | None = None) -> None:
    tmp.mkdir(parents=True)
    (tmp / CONFIG).write_text(json.dumps(model.config.to_dict(), indent=2), encoding="utf-8")
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp / WEIGHTS), metadata={"format": "pt"})
    (tmp / WEIGHTS).chmod(0o644)  # safetensors writes 0600; a worker may run as another user
    vocab.save(tmp / VOCAB)
    fusion_files = _write_extras(tmp, vocab, fusion, categories)
    final = replace(metadata, model_version=_weights_version(tmp / WEIGHTS, *fusion_files))
    (tmp / METADATA).write_text(json.dumps(final.to_dict(), indent=2), encoding="utf-8")


def save_checkpoint(
    dir: str | Path,
    model: SequenceEncoder,
    vocab: ItemVocab,
    metadata: CheckpointMetadata | Mapping[str, Any],
    fusion: TextFusion | None = None,
    categories: Mapping[str, tuple[str, ...]] | None = None,
) -> Path:
    """Write a checkpoint directory (replacing one already there) and return its path.

    ``fusion`` (an `encoders.nn.fusion.TextFusion`) and ``categories`` (item_id
    -> categories; items outside ``vocab`` are dropped) are written in the
    same atomic move; the fusion's weights enter ``model_version``.

    >>> save_checkpoint("/tmp/ckpt", model, vocab, CheckpointMetadata("ml-1m"))  # doctest: +SKIP
    """
    if isinstance(metadata, Mapping):
        metadata = CheckpointMetadata.from_dict(metadata)
    if len(vocab) != model.config.n_items:
        raise CheckpointError(dir, f"vocab has {len(vocab)} entries but config.n_items={model.config.n_items}")
    target = Path(dir).resolve()
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    if fusion is not None and fusion.d_model != model.config.d_model:
        raise CheckpointError(dir, f"fusion d_model={fusion.d_model} != config.d_model={model.config.d_model}")
    _write_files(tmp, model, vocab, metadata, fusion, categories)
    # Two renames: the target path holds either the old or the new checkpoint, never a mix.
    if target.exists():
        target.rename(old)
    tmp.rename(target)
    shutil.rmtree(old, ignore_errors=True)
    return target


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(path.parent, f"missing {path.name}") from None
    except ValueError as exc:
        raise CheckpointError(path, f"invalid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise CheckpointError(path, f"expected a JSON object, got {type(data).__name__}")
    return data


def read_metadata(dir: str | Path) -> CheckpointMetadata:
    """Metadata only (cheap): lets a worker see a new model_version before loading weights."""
    path = Path(dir) / METADATA
    return CheckpointMetadata.from_dict(_read_json(path), source=str(path))


def _check_weights(path: Path, model: SequenceEncoder, state: dict[str, torch.Tensor]) -> None:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        problem = f"weights do not match config: missing {missing[:3]}, unexpected {unexpected[:3]}"
        raise CheckpointError(path, problem)
    for key, shape in expected.items():
        if tuple(state[key].shape) != shape:
            raise CheckpointError(path, f"weight {key} has shape {tuple(state[key].shape)}, config implies {shape}")


def load_checkpoint(
    dir: str | Path, device: str | torch.device = "auto"
) -> tuple[SequenceEncoder, ItemVocab, CheckpointMetadata]:
    """Load ``(model in eval mode, vocab, metadata)``, checking that they agree.

    Raises CheckpointError naming the file and the mismatch (vocab size vs
    config.n_items, weight shapes vs config, missing files).

    >>> model, vocab, meta = load_checkpoint("/tmp/ckpt-ml1m", device="cpu")  # doctest: +SKIP
    """
    root = Path(dir)
    if not root.is_dir():
        raise CheckpointError(root, "not a directory")
    try:
        config = EncoderConfig.from_dict(_read_json(root / CONFIG), source=str(root / CONFIG))
    except (EncoderError, TypeError) as exc:  # TypeError: a value of the wrong JSON type
        raise CheckpointError(root / CONFIG, str(exc)) from exc
    vocab = ItemVocab.load(root / VOCAB)
    if len(vocab) != config.n_items:
        raise CheckpointError(root / VOCAB, f"vocabulary size {len(vocab)} != config.n_items {config.n_items}")
    if not (root / WEIGHTS).is_file():
        raise CheckpointError(root, f"missing {WEIGHTS}")
    state = load_file(str(root / WEIGHTS))
    model = SequenceEncoder(config)
    _check_weights(root / WEIGHTS, model, state)
    model.load_state_dict(state)
    return model.to(resolve_device(device)).eval(), vocab, read_metadata(root)


def load_fusion(dir: str | Path, device: str | torch.device = "cpu") -> TextFusion | None:
    """The checkpoint's `encoders.nn.fusion.TextFusion` in eval mode, or None when it has none.

    >>> fusion = load_fusion("/tmp/ckpt-amazon")  # doctest: +SKIP
    """
    from .nn.fusion import TextFusion

    root = Path(dir)
    if not (root / FUSION_WEIGHTS).is_file():
        return None
    dims = _read_json(root / FUSION_DIMS)
    try:
        fusion = TextFusion(**dims)
    except TypeError as exc:
        raise CheckpointError(root / FUSION_DIMS, f"bad fusion dims {dims} ({exc})") from exc
    state = load_file(str(root / FUSION_WEIGHTS))
    expected = {k: tuple(v.shape) for k, v in fusion.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if expected != got:
        raise CheckpointError(root / FUSION_WEIGHTS, f"fusion weights {got} do not match dims {dims}")
    fusion.load_state_dict(state)
    return fusion.to(resolve_device(device)).eval()


def load_categories(dir: str | Path) -> dict[str, tuple[str, ...]]:
    """item_id -> categories saved with the checkpoint; {} when it has none."""
    path = Path(dir) / CATEGORIES
    if not path.is_file():
        return {}
    return {k: tuple(v) for k, v in _read_json(path).items()}
