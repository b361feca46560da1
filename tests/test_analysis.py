"""Receptive fields, checkerboard scores, start-up shape check."""
import pytest
import torch
from torch import nn

from segkit.analysis import (ShapeError, checkerboard_score, empirical_receptive_field, layers_of, model_stages,
                             receptive_field)
from segkit.models import DeepLabV3Plus, UNet
from segkit.models.layers import ConvNormAct, ConvTransposeUpsample, PixelShuffleUpsample, ResizeConvUpsample


def test_stacked_dilated_convs_rf_15():
    assert receptive_field([(3, 1, 1), (3, 1, 2), (3, 1, 4)]) == (15, 1)
    assert receptive_field([(7, 2, 1), (3, 2, 1), (3, 1, 1)]) == (7 + 2 * 2 + 2 * 4, 4)


@pytest.mark.parametrize("spec", [[(3, 1, 1), (3, 1, 2), (3, 1, 4)], [(3, 2, 1), (3, 1, 2), (5, 1, 1)],
                                  [(5, 1, 3), (3, 2, 1), (3, 1, 1)]])
def test_empirical_rf_matches_theory_for_a_stack(spec):
    torch.manual_seed(0)
    stack = nn.Sequential(*[ConvNormAct(16 if i else 3, 16, k, stride=s, dilation=d, padding=d * (k - 1) // 2)
                            for i, (k, s, d) in enumerate(spec)])
    theory, _ = receptive_field(layers_of(stack))
    measured = empirical_receptive_field(stack, {"stack": stack}, (65, 65), in_channels=3)["stack"]
    assert measured["height"] == measured["width"] == theory


def test_model_stage_rfs_grow_and_aspp_rates_show():
    torch.manual_seed(0)
    net = DeepLabV3Plus("unet", num_classes=2, output_stride=16, rates=[1, 2], aspp_channels=16,
                        encoder_kwargs={"base_channels": 8, "depth": 5})
    stages = model_stages(net)
    assert list(stages)[:5] == [f"encoder.stage{i}" for i in range(5)] and "aspp.pool" in stages
    rf = empirical_receptive_field(net, stages, (257, 257), draws=2)
    heights = [rf[f"encoder.stage{i}"]["height"] for i in range(5)]
    assert heights == sorted(heights) and len(set(heights)) == 5
    assert heights[0] == 5  # two 3x3 convs
    # each ASPP 3x3 branch adds 2 * rate * 16 (its dilated kernel at stride 16) to the encoder's field
    assert rf["aspp.rate1"]["height"] == heights[-1] + 2 * 16
    assert rf["aspp.rate2"]["height"] == heights[-1] + 4 * 16
    assert rf["aspp.1x1"]["height"] == heights[-1] and rf["aspp.pool"]["height"] == 257


def test_checkerboard_scores_rank_upsamplers():
    torch.manual_seed(0)
    overlapping = ConvTransposeUpsample(8, 8, 2)  # kernel 3, stride 2: uneven overlap
    assert checkerboard_score(overlapping) > 0.05
    assert checkerboard_score(ResizeConvUpsample(8, 8, 2)) < 1e-6
    assert checkerboard_score(PixelShuffleUpsample(8, 8, 2)) < 1e-6  # ICNR
    assert checkerboard_score(PixelShuffleUpsample(8, 8, 2, icnr=False)) > 0.05
    smooth = ConvTransposeUpsample(8, 8, 2, kernel_size=4, padding=1, bilinear_init=True)
    assert checkerboard_score(smooth) < 1e-6


def test_startup_dry_run_names_layer_and_fix(tmp_path, shared_data_dir):
    from conftest import TINY_DATA, compose_cfg
    from segkit.pipeline import train

    cfg = compose_cfg("train", [*TINY_DATA, "model/upsampler=conv_transpose", "model.upsampler.kernel_size=2",
                                "model.upsampler.padding=0",
                                "data.crop_size=60"], tmp_path, shared_data_dir)
    with pytest.raises(ShapeError, match=r"ConvTranspose2d\(kernel 2, stride 2, padding 0.*nearest: \[64, 64\]"):
        train(cfg)
