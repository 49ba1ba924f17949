"""Label Refinery for Keras: train, relabel with the model's softmax, train afresh, repeat."""

__version__ = "0.1.0"
