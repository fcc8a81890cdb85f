"""Reading and writing: images and masks, checkpoints, the model catalog, atomic outputs, and the
synthetic phantom and PNG snapshot used by the demo and the README picture."""
