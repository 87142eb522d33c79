"""Embedding sources (sentence-transformers models, precomputed files) and the on-disk vector cache."""
