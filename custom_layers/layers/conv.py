"""Placeholder: being written."""
ConvBlock = None
conv_output_size = None
