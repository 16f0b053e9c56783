"""Evaluation: zero-shot classification, image-text retrieval and the per-language report."""
