"""Spectral reconstruction data: readers, the CASSI forward model, synthetic cubes, metrics."""
