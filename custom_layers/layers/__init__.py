"""Custom Keras layers: convolution and pooling blocks, embeddings, attention, Transformers."""

from custom_layers.layers.activation_layers import PReLU
from custom_layers.layers.attention import CachedMultiHeadAttention
from custom_layers.layers.conv import ConvBlock, conv_output_size
from custom_layers.layers.embedding import (
    LearnedPositionEncoding,
    PositionalEmbedding,
    ReversibleEmbedding,
    SinusoidalPositionEncoding,
)
from custom_layers.layers.pooling import DistanceWeightedPooling2D, L2Pooling2D
from custom_layers.layers.transformer import TransformerDecoder, TransformerEncoder

__all__ = [
    "CachedMultiHeadAttention",
    "ConvBlock",
    "DistanceWeightedPooling2D",
    "L2Pooling2D",
    "LearnedPositionEncoding",
    "PReLU",
    "PositionalEmbedding",
    "ReversibleEmbedding",
    "SinusoidalPositionEncoding",
    "TransformerDecoder",
    "TransformerEncoder",
    "conv_output_size",
]
