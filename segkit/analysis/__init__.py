"""Tools that explain what a segmentation network does: shape arithmetic, receptive fields, upsampler artifacts."""
from segkit.analysis.artifacts import checkerboard_score, model_checkerboard_scores
from segkit.analysis.receptive_field import (empirical_receptive_field, layers_of, model_stages,
                                             receptive_field)
from segkit.analysis.shapes import (
    ShapeError,
    conv_output_size,
    conv_transpose_output_size,
    effective_kernel_size,
    same_padding,
    transpose_output_padding,
)

__all__ = [
    "ShapeError", "conv_output_size", "conv_transpose_output_size", "effective_kernel_size", "same_padding",
    "transpose_output_padding", "receptive_field", "layers_of", "empirical_receptive_field", "model_stages",
    "checkerboard_score", "model_checkerboard_scores",
]
