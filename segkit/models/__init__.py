"""segkit models: ``UNet``, ``DeepLabV3``, ``DeepLabV3Plus`` built from encoders, decoders and layers."""
from segkit.models.architectures import DeepLabV3, DeepLabV3Plus, UNet
from segkit.models.encoders import ENCODERS, ResNetEncoder, UNetEncoder, build_encoder
from segkit.models.segmenter import FCNHead, Segmenter

ARCHITECTURES = {"unet": UNet, "deeplabv3": DeepLabV3, "deeplabv3plus": DeepLabV3Plus}

__all__ = ["ARCHITECTURES", "DeepLabV3", "DeepLabV3Plus", "UNet", "ENCODERS", "ResNetEncoder", "UNetEncoder",
           "build_encoder", "FCNHead", "Segmenter"]
