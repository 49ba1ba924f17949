"""The method itself, in Keras alone and without I/O: the training step, the losses, relabelling, the `LabelRefinery` callback and the networks."""
