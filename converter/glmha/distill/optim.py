"""Trainable parameters, optimizer and learning-rate schedule from the recipe's `train` section."""

from __future__ import annotations

import math

import torch
from torch import nn

from glmha.distill.recipe import TrainSection
from glmha.errors import GlmhaError
from glmha.layers import changed_layers, changed_parameters


def select_trainable(student: nn.Module, which: str) -> list[nn.Parameter]:
    """`glmha`: only what the conversion created or changed (calibration nets, reduced K/V generators; the
    whole layer where a compared method replaced the attention core), every other weight frozen at the
    teacher's value; `all`: the whole student."""
    layers = changed_layers(student)
    if not layers:
        raise GlmhaError("student: has no GLMHA layer (nothing was converted); lower student.energy or "
                         "set student.ratio")
    if which == "all":
        params = list(student.parameters())
    else:
        params = [p for _, layer in layers for p in changed_parameters(layer)]
    chosen = {id(p) for p in params}
    for p in student.parameters():
        p.requires_grad_(id(p) in chosen)
    return params


def build_optimizer(params: list[nn.Parameter], train: TrainSection) -> torch.optim.Optimizer:
    if train.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=train.lr, betas=tuple(train.betas), weight_decay=train.weight_decay)
    if train.optimizer == "adam":
        return torch.optim.Adam(params, lr=train.lr, betas=tuple(train.betas), weight_decay=train.weight_decay)
    return torch.optim.SGD(params, lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay)


def lr_factor(step: int, train: TrainSection) -> float:
    """Multiplier of `train.lr` for the optimizer step that follows `step` completed steps."""
    if step < train.warmup_steps:
        return (step + 1) / train.warmup_steps
    if train.scheduler == "constant":
        return 1.0
    progress = min(1.0, (step - train.warmup_steps) / max(1, train.steps - train.warmup_steps))
    floor = train.min_lr / train.lr
    if train.scheduler == "cosine":
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return floor + (1.0 - floor) * (1.0 - progress)


def build_scheduler(optimizer: torch.optim.Optimizer, train: TrainSection,
                    num_processes: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR over optimizer steps. Accelerate's prepared scheduler steps once per process for
    every optimizer step (its convention for schedules written for one process), so the counter is
    divided by the process count to stay in optimizer steps."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: lr_factor(t // num_processes, train))
