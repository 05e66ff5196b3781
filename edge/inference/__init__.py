"""Inference stage: ring buffer -> frontend -> model runtime -> detector, one hop at a time."""
