"""Offline data: the sample photographs scikit-image ships and synthetic degradations of them."""

from glmha.data.degrade import add_gaussian_noise, seeded_generator
from glmha.data.sample_images import (
    COLOUR_IMAGES,
    GREY_IMAGES,
    SAMPLE_IMAGES,
    TEST_IMAGES,
    TRAIN_IMAGES,
    load_sample,
    test_images,
    train_images,
)

__all__ = [
    "COLOUR_IMAGES", "GREY_IMAGES", "SAMPLE_IMAGES", "TEST_IMAGES", "TRAIN_IMAGES",
    "add_gaussian_noise", "load_sample", "seeded_generator", "test_images", "train_images",
]
