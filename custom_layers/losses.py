"""Placeholder: being written."""
MeanSquaredError = None
