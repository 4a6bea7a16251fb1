"""Placeholder: being written."""
MaskedAccuracy = None
