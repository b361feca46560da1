"""Decoders take the encoder's declared channels and reductions; ``forward(features, input_size)``."""
from segkit.models.decoders.deeplab import DeepLabV3Decoder, DeepLabV3PlusDecoder
from segkit.models.decoders.unet import UNetDecoder

__all__ = ["DeepLabV3Decoder", "DeepLabV3PlusDecoder", "UNetDecoder"]
