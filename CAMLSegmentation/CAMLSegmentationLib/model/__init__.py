"""The CAML model: the network (two sub-models and the cross-model attention), its losses and the
OCC memory bank, the inference settings stored with the weights, checkpoints and the model catalog."""
