"""English -> Spanish Transformer translator: data, model, training, decoding, evaluation, export.

Start with `python -m apps.translator --help` (or the `translator` command).
"""
