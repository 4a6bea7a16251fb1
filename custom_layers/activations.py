"""Placeholder: being written."""
relu = None
