"""Validation: PSNR/SSIM of a model's output against ground truth and against the teacher's output.

Whole images are padded (reflect) to the model's size multiple and the output is cropped back, as
the official test scripts do; outputs are clamped to [0, 1] before scoring (images are saved that
way, and the published figures are measured on saved images). The teacher's outputs do not change,
so they are computed once per process and cached in host memory.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from glmha.distill.data import crop_to, pad_to_multiple
from glmha.metrics import psnr_per_image, ssim_per_image


@dataclass(frozen=True)
class Scores:
    """Means over the validation images; None where there is nothing to compare with."""

    psnr_gt: float | None
    ssim_gt: float | None
    psnr_teacher: float | None
    ssim_teacher: float | None
    images: int

    @property
    def key(self) -> float:
        """What selects the best student: PSNR against ground truth, else against the teacher."""
        value = self.psnr_gt if self.psnr_gt is not None else self.psnr_teacher
        return -math.inf if value is None or math.isnan(value) else value

    def to_json(self) -> dict[str, float | int | str | None]:
        return {k: json_number(v) for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, data: dict) -> Scores:
        return cls(**{k: (float(v) if isinstance(v, str) else v) for k, v in data.items()})

    def log_values(self) -> dict[str, float]:
        return {f"val_{k}": v for k, v in asdict(self).items() if k != "images" and v is not None}


def json_number(value: float | int | None) -> float | int | str | None:
    """JSON has no infinity: +inf (identical images) is written as the string "inf"."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class Evaluator:
    """Scores models on a prepared validation loader (batch size 1, whole images)."""

    def __init__(self, accelerator, loader, teacher: torch.nn.Module, *, multiple: int, metrics: tuple[str, ...],
                 has_target: bool) -> None:
        self.accelerator = accelerator
        self.loader = loader
        self.teacher = teacher
        self.multiple = multiple
        self.use_ssim = "ssim" in metrics
        self.has_target = has_target
        self._teacher_outputs: dict[int, torch.Tensor] = {}

    @torch.no_grad()
    def _outputs(self, model: torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        padded, size = pad_to_multiple(inputs, self.multiple)
        with self.accelerator.autocast():
            out = model(padded)
        return crop_to(out.float(), size).clamp(0.0, 1.0)

    def _per_image(self, pred: torch.Tensor, reference: torch.Tensor | None) -> list[torch.Tensor]:
        nan = torch.full((pred.shape[0],), math.nan, dtype=torch.float64, device=pred.device)
        if reference is None:
            return [nan, nan]
        ssim = ssim_per_image(pred, reference) if self.use_ssim else nan
        return [psnr_per_image(pred, reference), ssim]

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module | None) -> Scores:
        """Scores of `model`; `model=None` scores the teacher itself against ground truth."""
        rows = []
        for batch in self.loader:
            index = int(batch["index"][0])
            cached = self._teacher_outputs.get(index)
            if cached is None:
                teacher_out = self._outputs(self.teacher, batch["input"])
                self._teacher_outputs[index] = teacher_out.cpu()  # host memory: val sets can be large
            else:
                teacher_out = cached.to(batch["input"].device)
            pred = teacher_out if model is None else self._outputs(model, batch["input"])
            target = batch.get("target")
            values = self._per_image(pred, target)
            values += self._per_image(pred, None if model is None else teacher_out)
            rows.append(torch.stack(values, dim=1))  # (b, 4)
        local = torch.cat(rows) if rows else torch.empty(0, 4, dtype=torch.float64,
                                                         device=self.accelerator.device)
        everything = self.accelerator.gather_for_metrics(local)  # (images, 4)
        means = [_mean(everything[:, i]) for i in range(4)]
        return Scores(*means, images=int(everything.shape[0]))


def _mean(column: torch.Tensor) -> float | None:
    if column.numel() == 0 or bool(torch.isnan(column).all()):
        return None
    return float(column.mean())
