"""Decoders take the encoder's declared channels and reductions; ``forward(features, input_size)``."""
from segkit.models.decoders.deeplab import DeepLabV3Decoder, DeepLabV3PlusDecoder
from segkit.models.decoders.fpn import FPNDecoder
from segkit.models.decoders.lraspp import LRASPPDecoder
from segkit.models.decoders.pspnet import PSPDecoder, PyramidPooling
from segkit.models.decoders.unet import UNetDecoder
from segkit.models.decoders.unetplusplus import UNetPlusPlusDecoder

__all__ = ["DeepLabV3Decoder", "DeepLabV3PlusDecoder", "FPNDecoder", "LRASPPDecoder", "PSPDecoder", "PyramidPooling",
           "UNetDecoder", "UNetPlusPlusDecoder"]
