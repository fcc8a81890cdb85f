"""Semi-supervised training: case sources, split, loading and augmentation, presets, the CAML
objective, sampler, batches, validation, rank plumbing and the trainer that runs them."""
