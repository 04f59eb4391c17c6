"""The shared training loop and inference helpers."""
