"""Tools that explain what a segmentation network does: shape arithmetic, receptive fields, upsampler artifacts."""
from segkit.analysis.shapes import (
    ShapeError,
    conv_output_size,
    conv_transpose_output_size,
    effective_kernel_size,
    same_padding,
    transpose_output_padding,
)

__all__ = [
    "ShapeError",
    "conv_output_size",
    "conv_transpose_output_size",
    "effective_kernel_size",
    "same_padding",
    "transpose_output_padding",
]
