"""Compare GLMHA with baselines built from the same teacher at equal MACs (glmha-compare)."""
