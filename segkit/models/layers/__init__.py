"""Small building blocks: conv blocks, ASPP, upsamplers."""
from segkit.models.layers.aspp import ASPP, ASPPPooling, aspp_rates
from segkit.models.layers.conv import (
    AtrousConv2d,
    ConvNormAct,
    DoubleConv,
    SeparableConvNormAct,
    init_relu_convs_,
)
from segkit.models.layers.upsample import (
    UPSAMPLERS,
    ConvTransposeUpsample,
    InterpolateUpsample,
    PixelShuffleUpsample,
    ResizeConvUpsample,
    bilinear_kernel,
    is_parameter_free,
    upsampler_factory,
)

__all__ = [
    "ASPP", "ASPPPooling", "aspp_rates", "AtrousConv2d", "ConvNormAct", "DoubleConv", "SeparableConvNormAct",
    "init_relu_convs_",
    "UPSAMPLERS",
    "ConvTransposeUpsample", "InterpolateUpsample", "PixelShuffleUpsample", "ResizeConvUpsample",
    "bilinear_kernel", "is_parameter_free", "upsampler_factory",
]
