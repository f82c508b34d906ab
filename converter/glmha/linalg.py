"""Small linear-algebra steps shared by the initialisers of every attention kind (float64, CPU)."""

from __future__ import annotations

import torch

REFIT_RIDGE = 1e-3  # ridge strength, relative to the mean diagonal of each normal matrix


def rank_one(operator: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Best rank-1 factors of a (C, k) channel operator: a row (C,) and a filter (k,), equal norms."""
    u, s, vh = torch.linalg.svd(operator.double(), full_matrices=False)
    scale = s[0].sqrt()
    return u[:, 0] * scale, vh[0] * scale


def spd_solve(matrix: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """Solve batched symmetric positive definite systems (ridge normal equations) by Cholesky, one matrix at
    a time (batched LU solves failed inside some processes with MKL); NaN where a matrix is not SPD."""
    flat_matrix = matrix.reshape(-1, *matrix.shape[-2:])
    flat_rhs = rhs.reshape(-1, *rhs.shape[-2:])
    solved = []
    for a, b in zip(flat_matrix, flat_rhs, strict=True):
        factor, info = torch.linalg.cholesky_ex(a)
        solved.append(torch.cholesky_solve(b, factor) if info == 0 else torch.full_like(b, float("nan")))
    return torch.stack(solved).reshape(rhs.shape)


def value_targets(attention: torch.Tensor, attention_kept: torch.Tensor, values: torch.Tensor,
                  values_kept: torch.Tensor) -> torch.Tensor:
    """V* = argmin ||P_S V' - P V||^2 + mu ||V' - V_S||^2 per image and head (float64):
    P (b, heads, d, d), P_S (b, heads, d, d'), V (b, heads, d, N), V_S (b, heads, d', N) -> (b, heads, d', N)."""
    normal = attention_kept.transpose(-2, -1) @ attention_kept  # (b, heads, d', d')
    mu = REFIT_RIDGE * normal.diagonal(dim1=-2, dim2=-1).mean(-1, keepdim=True).clamp_min(1e-12)  # (b, heads, 1)
    eye = torch.eye(normal.shape[-1], dtype=normal.dtype)
    rhs = attention_kept.transpose(-2, -1) @ (attention @ values) + mu[..., None] * values_kept
    return spd_solve(normal + mu[..., None] * eye, rhs)


def ridge_solve(normal: torch.Tensor, rhs: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """argmin x^T N x - 2 b^T x + mu |x - x0|^2 for batches of normal matrices N (..., k, k), right-hand sides
    b (..., k) and starting points x0 (..., k), mu relative to N's mean diagonal: (..., k), NaN where N fails."""
    mu = REFIT_RIDGE * normal.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(1e-12)  # (...,)
    eye = torch.eye(normal.shape[-1], dtype=normal.dtype)
    lifted = (rhs + mu[..., None] * start).unsqueeze(-1)  # (..., k, 1)
    return spd_solve(normal + mu[..., None, None] * eye, lifted).squeeze(-1)
