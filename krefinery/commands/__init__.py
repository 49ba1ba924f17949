"""The commands run.py dispatches to: train, tune, study and predict, each composed of the layers below."""
