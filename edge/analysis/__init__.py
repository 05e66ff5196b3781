"""Batch analysis of recordings: the streaming pipeline run over files as fast as possible."""
