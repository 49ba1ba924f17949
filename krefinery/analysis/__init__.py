"""Figures computed from labels and results: label statistics, under-fitting, and the statistics of a study."""
