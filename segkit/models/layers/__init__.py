"""Small building blocks: conv blocks, ASPP, upsamplers."""
from segkit.models.layers.aspp import ASPP, ASPPPooling, aspp_rates
from segkit.models.layers.conv import AtrousConv2d, ConvNormAct, DoubleConv, SeparableConvNormAct
from segkit.models.layers.upsample import (
    UPSAMPLERS,
    ConvTransposeUpsample,
    InterpolateUpsample,
    PixelShuffleUpsample,
    ResizeConvUpsample,
    bilinear_kernel,
    upsampler_factory,
)

__all__ = [
    "ASPP", "ASPPPooling", "aspp_rates", "AtrousConv2d", "ConvNormAct", "DoubleConv", "SeparableConvNormAct",
    "UPSAMPLERS",
    "ConvTransposeUpsample", "InterpolateUpsample", "PixelShuffleUpsample", "ResizeConvUpsample",
    "bilinear_kernel", "upsampler_factory",
]
