"""Placeholder: being written."""
TransformerDecoder = None
TransformerEncoder = None
