"""Placeholder: being written."""
PositionalEmbedding = None
SinusoidalPositionEncoding = None
