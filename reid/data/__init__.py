"""Datasets, the index, the synthetic worlds, transforms and samplers."""
