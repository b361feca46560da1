"""segkit models: ``UNet``, ``UNetPlusPlus``, ``DeepLabV3``, ``DeepLabV3Plus``, ``LRASPP``, ``FPN``, ``PSPNet`` built
from encoders (segkit's, torchvision's, timm's), decoders and layers."""
from segkit.models.architectures import FPN, LRASPP, DeepLabV3, DeepLabV3Plus, PSPNet, UNet, UNetPlusPlus
from segkit.models.encoders import (
    ENCODERS,
    ResNetEncoder,
    TimmEncoder,
    TorchvisionEncoder,
    UNetEncoder,
    build_encoder,
)
from segkit.models.segmenter import FCNHead, Segmenter

ARCHITECTURES = {"unet": UNet, "unetplusplus": UNetPlusPlus, "deeplabv3": DeepLabV3, "deeplabv3plus": DeepLabV3Plus,
                 "lraspp": LRASPP, "fpn": FPN, "pspnet": PSPNet}

__all__ = ["ARCHITECTURES", "DeepLabV3", "DeepLabV3Plus", "FPN", "LRASPP", "PSPNet", "UNet", "UNetPlusPlus",
           "ENCODERS", "ResNetEncoder", "TimmEncoder", "TorchvisionEncoder", "UNetEncoder", "build_encoder", "FCNHead",
           "Segmenter"]
