"""Placeholder: being written."""
CachedMultiHeadAttention = None
