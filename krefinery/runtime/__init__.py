"""This machine and its devices: precision, XLA and determinism per machine kind, and training on several devices."""
