"""Where images come from (TFDS, digits, folders) and how they reach a step (tf.data, or batches made on the device); every example carries its id."""
