"""Placeholder: being written."""
DistanceWeightedPooling2D = None
L2Pooling2D = None
