"""Semi-supervised training: case sources and augmentation, presets, the trainer."""
