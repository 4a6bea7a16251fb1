"""Placeholder: being written."""
PReLU = None
