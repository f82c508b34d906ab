"""Slim safetensors export of a converted model, and its rebuild from the metadata alone.

`__metadata__` holds JSON strings: format version, family, hyperparameters, GLMHA settings, the
per-layer C', the plan, the source checkpoint's SHA-256 and the glmha version. Only real tensors
are stored, no pickles; the file is written to a temporary name and renamed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

import torch

from glmha.archs import FAMILIES, RestorationModel
from glmha.convert.initialise import empty_glmha_like
from glmha.convert.layers import LEGACY_SETTINGS, GLMHALayer, GLMHASettings
from glmha.convert.mutate import ConversionRecord, swap_layers
from glmha.errors import ArchitectureError, GlmhaError
from glmha.io_utils import save_safetensors

FORMAT = "glmha"
FORMAT_VERSION = 2  # 2: calibration forms, grid pooling, gathered MST values, token bias; 1 is still read
READABLE_VERSIONS = (1, 2)


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def export_model(model: RestorationModel, path: str | Path) -> None:
    """Write a converted model (one with `glmha_record`) as safetensors with rebuild metadata."""
    from glmha import __version__

    record: ConversionRecord | None = getattr(model, "glmha_record", None)
    if record is None:
        raise GlmhaError("this model was not converted by glmha; nothing to export")
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "family": model.family,
        "hyperparameters": json.dumps(model.config.to_dict()),
        "glmha": json.dumps(record.settings.to_dict()),
        "layers": json.dumps(record.reduced),
        "init": record.init,
        "plan": json.dumps(record.plan),
        "source_sha256": record.source_sha256,
        "source_file": record.source_file,
        "glmha_version": __version__,
    }
    save_safetensors(dict(model.state_dict()), path, metadata)  # same model and options: same bytes


def is_glmha_export(metadata: Mapping[str, str]) -> bool:
    return metadata.get("format") == FORMAT


def rebuild_model(state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, str],
                  source: str = "file") -> RestorationModel:
    """The converted model described by export metadata, loaded strictly."""
    try:
        version = int(metadata.get("format_version", "0"))
        if version not in READABLE_VERSIONS:
            raise GlmhaError(f"{source}: glmha export format {version} is not supported "
                             f"(this glmha reads formats {', '.join(map(str, READABLE_VERSIONS))})")
        family = metadata["family"]
        if family not in FAMILIES:
            raise ArchitectureError(f"{source}: unknown family '{family}' in the export metadata")
        cls = FAMILIES[family]
        config = cls.config_class.from_dict(json.loads(metadata["hyperparameters"]))
        stored = json.loads(metadata["glmha"])
        if version == 1 and isinstance(stored, dict):  # written before the settings had these fields
            stored = {**LEGACY_SETTINGS, **stored}
        settings = GLMHASettings.from_dict(stored)
        reduced = json.loads(metadata["layers"])
        plan = json.loads(metadata.get("plan", "{}"))
    except (KeyError, json.JSONDecodeError, ValueError) as error:
        raise GlmhaError(f"{source}: damaged glmha metadata ({error})") from None
    with torch.device("meta"):
        model = cls.from_config(config)
        layers = dict(model.csa_layers())
        replacements: dict[str, GLMHALayer] = {}
        for name, channels in reduced.items():
            if name not in layers:
                raise GlmhaError(f"{source}: metadata names layer {name}, which the model does not have")
            replacements[name] = empty_glmha_like(layers[name], int(channels), settings)
    swap_layers(model, replacements)
    expected = model.state_dict()
    if set(expected) != set(state_dict):
        missing = sorted(set(expected) - set(state_dict))[:3]
        unexpected = sorted(set(state_dict) - set(expected))[:3]
        raise GlmhaError(f"{source}: tensors do not match the metadata (missing {missing}, "
                         f"unexpected {unexpected})")
    # fresh (aligned) copies: the convolution and matrix kernels pick code paths by buffer alignment, so a
    # model on safetensors' buffers could round differently from the same model built in memory
    tensors = {k: (v.float() if v.is_floating_point() else v).clone() for k, v in state_dict.items()}
    model.load_state_dict(tensors, strict=True, assign=True)
    model.glmha_record = ConversionRecord(
        settings=settings, reduced={k: int(v) for k, v in reduced.items()},
        init=metadata.get("init", ""), plan=plan, source_sha256=metadata.get("source_sha256", ""),
        source_file=metadata.get("source_file", ""))
    return model.eval()
