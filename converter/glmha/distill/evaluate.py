"""Validation: PSNR/SSIM of a model's output against ground truth and against the teacher's output.

Whole images are padded (reflect) to the model's size multiple and the output is cropped back, as
the official test scripts do; outputs are clamped to [0, 1] before scoring (images are saved that
way, and the published figures are measured on saved images). The teacher's outputs do not change,
so they are computed once per process and cached in host memory.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from glmha.restore.tiling import crop_to, pad_to_multiple

LOWER_IS_BETTER = frozenset({"mrae", "rmse", "sam"})


@dataclass(frozen=True)
class Scores:
    """Means over the validation images, keyed "<metric>_gt" / "<metric>_teacher"; None where there is
    nothing to compare with (no ground truth, or the teacher against itself)."""

    values: dict[str, float | None]
    images: int
    nonfinite: int = 0  # images on which the scored model's output held NaN or Inf (not saved in JSON)

    def reference(self, metric: str) -> str:
        """"gt" when `metric` was measured against ground truth, else "teacher"."""
        return "gt" if self.values.get(f"{metric}_gt") is not None else "teacher"

    def selection_key(self, metric: str) -> float:
        """`metric` against ground truth (else against the teacher), oriented so that larger is better;
        -inf when it is missing or NaN, so a broken evaluation never becomes the best student."""
        value = self.values.get(f"{metric}_{self.reference(metric)}")
        if value is None or math.isnan(value):
            return -math.inf
        return -value if metric in LOWER_IS_BETTER else value

    def to_json(self) -> dict[str, float | int | str | None]:
        return {**{k: json_number(v) for k, v in self.values.items()}, "images": self.images}

    @classmethod
    def from_json(cls, data: dict) -> Scores:
        values = {k: (float(v) if isinstance(v, str) else v) for k, v in data.items()
                  if k not in ("images", "step")}
        return cls(values, images=int(data["images"]))

    def log_values(self) -> dict[str, float]:
        return {f"val_{k}": v for k, v in self.values.items() if v is not None}


def json_number(value: float | int | None) -> float | int | str | None:
    """JSON has no infinity: +inf (identical images) is written as the string "inf"."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def metric_functions(names: tuple[str, ...], spectral: bool) -> dict[str, Callable]:
    """Per-image metric functions (pred, reference) -> (b,) float64."""
    from glmha import metrics as image
    from glmha.spectral import metrics as spectra

    table = {"ssim": image.ssim_per_image, "mrae": spectra.mrae_per_image, "rmse": spectra.rmse_per_image,
             "sam": spectra.sam_per_image,
             "psnr": spectra.psnr_per_image if spectral else image.psnr_per_image}
    return {name: table[name] for name in names}


class Evaluator:
    """Scores models on a prepared validation loader (batch size 1, whole images).

    Images: outputs padded to the model's multiple, cropped back and clamped to [0, 1]. Spectra: the
    raw output (MRAE and RMSE see it unclamped, PSNR clamps both sides, as the official code does).
    `border` leaves pixels out on each side when scoring (NTIRE 2022 scores the central region)."""

    def __init__(self, accelerator, loader, teacher: torch.nn.Module, *, multiple: int, metrics: tuple[str, ...],
                 spectral: bool, border: int = 0) -> None:
        self.accelerator = accelerator
        self.loader = loader
        self.teacher = teacher
        self.multiple = multiple
        self.metrics = tuple(metrics)
        self.functions = metric_functions(self.metrics, spectral)
        self.spectral = spectral
        self.border = border
        self._teacher_outputs: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # index -> (output, flag)

    @torch.no_grad()
    def _outputs(self, model: torch.nn.Module,
                 batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(the output as scored, (b,) float64 1.0 where the raw output held NaN or Inf). The flag is
        taken before clamping, which would turn +Inf into a plausible white image."""
        inputs = batch["input"]
        extra = (batch["mask"],) if "mask" in batch else ()
        padded, size = pad_to_multiple(inputs, self.multiple) if not extra else (inputs, inputs.shape[-2:])
        with self.accelerator.autocast():
            out = model(padded, *extra)
        out = crop_to(out.float(), tuple(size))
        broken = (~torch.isfinite(out)).flatten(1).any(dim=1).to(torch.float64)  # (b,)
        return (out if self.spectral else out.clamp(0.0, 1.0)), broken

    def _scored(self, x: torch.Tensor) -> torch.Tensor:
        if self.border == 0:
            return x
        from glmha.spectral.metrics import central_crop

        return central_crop(x, self.border)

    def _per_image(self, pred: torch.Tensor, reference: torch.Tensor | None) -> list[torch.Tensor]:
        nan = torch.full((pred.shape[0],), math.nan, dtype=torch.float64, device=pred.device)
        if reference is None:
            return [nan for _ in self.metrics]
        pred, reference = self._scored(pred), self._scored(reference)
        return [fn(pred, reference).to(pred.device) for fn in self.functions.values()]

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module | None) -> Scores:
        """Scores of `model`; `model=None` scores the teacher itself against ground truth."""
        rows = [self._row(model, batch) for batch in self.loader]  # (b, 2 * metrics + 1) each
        width = 2 * len(self.metrics) + 1
        local = torch.cat(rows) if rows else torch.empty(0, width, dtype=torch.float64,
                                                         device=self.accelerator.device)
        everything = self.accelerator.gather_for_metrics(local)  # (images, 2 * metrics + 1)
        names = [f"{m}_gt" for m in self.metrics] + [f"{m}_teacher" for m in self.metrics]
        values = {name: _mean(everything[:, i]) for i, name in enumerate(names)}
        return Scores(values, images=int(everything.shape[0]), nonfinite=int(everything[:, -1].sum()))

    def _row(self, model: torch.nn.Module | None, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(b, 2 * metrics + 1): the scores against ground truth, against the teacher, and the flag of
        a non-finite output of the model scored (the teacher's own when `model` is None)."""
        index = int(batch["index"][0])
        cached = self._teacher_outputs.get(index)
        if cached is None:
            teacher_out, teacher_broken = self._outputs(self.teacher, batch)
            self._teacher_outputs[index] = (teacher_out.cpu(), teacher_broken.cpu())  # host memory
        else:
            teacher_out, teacher_broken = (x.to(batch["input"].device) for x in cached)
        pred, broken = (teacher_out, teacher_broken) if model is None else self._outputs(model, batch)
        values = self._per_image(pred, batch.get("target"))
        values += self._per_image(pred, None if model is None else teacher_out)
        return torch.stack([*values, broken.to(pred.device)], dim=1)


def _mean(column: torch.Tensor) -> float | None:
    if column.numel() == 0 or bool(torch.isnan(column).all()):
        return None
    return float(column.mean())
