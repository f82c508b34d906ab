"""`glmha.load`: checkpoint file -> the project's model class, detected, inferred, strictly loaded."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from glmha.archs import FAMILIES, RestorationModel
from glmha.archs.unsupported import recognise_unsupported
from glmha.checkpoint import read_checkpoint
from glmha.errors import ArchitectureError
from glmha.exports import BASELINE_FORMAT, carries_export_fields, is_glmha_export, rebuild_model
from glmha.io_utils import sha256_file
from glmha.record import ModelRecord

MAX_LISTED_KEYS = 3


def load(path: str | Path, *, family: str | None = None) -> RestorationModel:
    """Load an official checkpoint of a supported family as a plain module in eval mode.

    A safetensors file exported by glmha is rebuilt, GLMHA layers included, from its metadata.

    `family` forces a family (a key of glmha.FAMILIES) instead of detecting it.
    """
    checkpoint = read_checkpoint(path)
    if checkpoint.metadata.get("format") == BASELINE_FORMAT:
        raise ArchitectureError(f"{path}: a glmha-compare baseline student ({checkpoint.metadata.get('method')}), "
                                f"kept for inspection; glmha loads originals and glmha exports only")
    if is_glmha_export(checkpoint.metadata) or carries_export_fields(checkpoint.metadata):
        model = rebuild_model(checkpoint.state_dict, checkpoint.metadata, source=str(path))
        if family is not None and family != model.family:
            raise ArchitectureError(f"{path}: a converted {model.family} model, not {family}")
        return model
    model = build_model(checkpoint.state_dict, family=family, source=str(path))
    # provenance that conversions carry into their exports (SHA-256 of the file and its name)
    model.record = ModelRecord(source_sha256=sha256_file(path), source_file=Path(path).name)
    return model


def build_model(
    state_dict: Mapping[str, torch.Tensor], *, family: str | None = None, source: str = "state dict"
) -> RestorationModel:
    """Detect the family of a state dict, infer its hyperparameters and load it strictly."""
    if family is not None and family not in FAMILIES:
        raise ArchitectureError(f"unknown family '{family}'; known: {', '.join(FAMILIES)}")
    candidates = [FAMILIES[family]] if family else list(FAMILIES.values())
    failures = []
    for cls in candidates:
        if family is None and not cls.detect(state_dict):
            failures.append(f"{cls.family} (its key pattern is absent)")
            continue
        try:
            model = instantiate(cls, cls.infer_config(state_dict))
            _check_keys_and_shapes(model, state_dict)
        except ArchitectureError as error:
            failures.append(f"{cls.family} ({error})")
            continue
        except (ValueError, IndexError, TypeError, ZeroDivisionError, RuntimeError) as error:
            # inference reads shapes; a tensor of the wrong rank (a 1-d conv weight, a 0-d temperature) breaks it
            failures.append(f"{cls.family} (unexpected tensor shapes: {_first_line(error)})")
            continue
        # fresh (aligned) float32 copies: kernels pick code paths by buffer alignment, so weights left on a
        # file's buffers could round differently from the same model built in memory
        weights = {k: v.to(torch.float32, copy=True) if v.is_floating_point() else v
                   for k, v in state_dict.items()}
        model.load_state_dict(weights, strict=True, assign=True)
        if not model.csa_layers():
            raise ArchitectureError(
                f"{source}: this {cls.title} model has no channel-wise self-attention layer, "
                "so there is nothing for glmha to convert"
            )
        return model.eval()
    if family is None and (recognised := recognise_unsupported(state_dict)):
        raise ArchitectureError(f"{source}: {recognised}")
    raise ArchitectureError(f"{source}: unknown architecture; tried {'; '.join(failures)}")


def instantiate(cls: type[RestorationModel], config: object) -> RestorationModel:
    """Build on the meta device: no memory or init time is spent on weights about to be replaced."""
    with torch.device("meta"):
        return cls.from_config(config)  # type: ignore[arg-type]


def _check_keys_and_shapes(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s), e.g. {', '.join(missing[:MAX_LISTED_KEYS])}")
        if unexpected:
            parts.append(
                f"{len(unexpected)} unexpected key(s), e.g. {', '.join(unexpected[:MAX_LISTED_KEYS])}"
            )
        raise ArchitectureError("; ".join(parts))
    for key, tensor in expected.items():
        if tuple(state_dict[key].shape) != tuple(tensor.shape):
            raise ArchitectureError(
                f"'{key}' has shape {list(state_dict[key].shape)}, the inferred model needs "
                f"{list(tensor.shape)}"
            )
        if state_dict[key].is_floating_point() != tensor.is_floating_point():
            # loading would fail with a raw error (integer parameters cannot require gradients)
            found = str(state_dict[key].dtype).removeprefix("torch.")
            raise ArchitectureError(
                f"'{key}' has dtype {found}, the model needs "
                f"{'floating point' if tensor.is_floating_point() else str(tensor.dtype).removeprefix('torch.')}"
            )


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__
