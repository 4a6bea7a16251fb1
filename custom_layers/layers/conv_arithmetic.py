"""Output-size arithmetic of convolutions and poolings (shared by `conv.py` and `pooling.py`)."""

from __future__ import annotations

from custom_layers._validation import is_int, normalize_padding

__all__ = ["conv_output_size"]


def conv_output_size(input_size, kernel_size, padding=0, stride=1, dilation=1):
    """Length of a convolution's (or a pooling's) output along one spatial axis.

    For an input of size `W`, a kernel of size `F` (dilated to
    `dilation * (F - 1) + 1`), `P` zeros of padding on each side and stride `S`,
    the output has `floor((W - F + 2P) / S) + 1` positions. `padding` may also be
    one of Keras's modes: `"valid"` (no padding, `P = 0`) or `"same"` (Keras pads
    so that the output has `ceil(W / S)` positions).

    Args:
        input_size: positive int, the input length `W`.
        kernel_size: positive int, the kernel (or pooling window) length `F`.
        padding: non-negative int `P` (zeros added on *each* side), `"valid"`
            or `"same"`.
        stride: positive int `S`.
        dilation: positive int, the kernel's dilation rate.

    Returns:
        The output length, a positive int.

    Raises:
        ValueError: if a size, stride or dilation is not a positive int, if
            `padding` is negative or an unknown mode, or if the padded input is
            shorter than the (dilated) kernel, so that there is no output.

    Example:

    >>> conv_output_size(28, 3)                      # 3x3 conv, no padding
    26
    >>> conv_output_size(28, 5, padding=2, stride=2)  # floor((28 - 5 + 4) / 2) + 1
    14
    >>> conv_output_size(28, 3, padding="same", stride=2)
    14

    Reference:
        Dumoulin & Visin, "A guide to convolution arithmetic for deep learning",
        2016 (https://arxiv.org/abs/1603.07285), relationship 6.
    """
    for name, value in (
        ("input_size", input_size),
        ("kernel_size", kernel_size),
        ("stride", stride),
        ("dilation", dilation),
    ):
        if not is_int(value) or value <= 0:
            raise ValueError(f"`{name}` must be a positive integer. Received: {name}={value!r}")
    if isinstance(padding, str):
        if normalize_padding(padding) == "same":
            return -(-input_size // stride)  # ceil(W / S)
        padding = 0
    elif not is_int(padding) or padding < 0:
        raise ValueError(
            '`padding` must be a non-negative integer, "valid" or "same". '
            f"Received: padding={padding!r}"
        )
    effective_kernel = dilation * (kernel_size - 1) + 1
    padded = input_size + 2 * padding
    if padded < effective_kernel:
        raise ValueError(
            f"The padded input ({padded}) is shorter than the dilated kernel "
            f"({effective_kernel}), so the convolution has no output; use a smaller kernel, "
            f"more padding or padding='same'. Received: input_size={input_size}, "
            f"kernel_size={kernel_size}, padding={padding}, dilation={dilation}"
        )
    return (padded - effective_kernel) // stride + 1
