"""Running models on users' files: `glmha-restore` (whole images or seamless tiles, any precision and device)."""
