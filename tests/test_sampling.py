"""Samplers: order depends only on (seed, epoch); DDP shards cover the data without duplicates."""
from segkit.data.sampling import SeededSampler, ShardSampler


def test_seeded_sampler_is_a_function_of_seed_and_epoch():
    a, b = SeededSampler(10, seed=3), SeededSampler(10, seed=3)
    a.set_epoch(2)
    b.set_epoch(2)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(3)
    assert list(a) != first
    assert sorted(i for i, _ in first) == list(range(10))


def test_seeded_sampler_ranks_partition_one_permutation():
    full = [i for i, _ in SeededSampler(11, seed=0, rank=0, world_size=1)]
    shards = [list(SeededSampler(11, seed=0, rank=r, world_size=2)) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 5  # equal counts keep DDP in step
    assert sorted(i for s in shards for i, _ in s) == sorted(full[:10])


def test_shard_sampler_has_no_padding():
    shards = [list(ShardSampler(7, rank=r, world_size=2)) for r in (0, 1)]
    assert shards == [[0, 2, 4, 6], [1, 3, 5]]


def _repeat_factors_by_definition(presence, threshold):
    """LVIS repeat-factor sampling written out image by image, class by class."""
    import math

    n_images, n_classes = len(presence), len(presence[0])
    out = []
    for i in range(n_images):
        r = 1.0
        for c in range(n_classes):
            if presence[i][c]:
                f = sum(presence[j][c] for j in range(n_images)) / n_images
                r = max(r, max(1.0, math.sqrt(threshold / f)))
        out.append(r)
    return out


def test_repeat_factors_match_their_definition():
    import numpy as np

    from segkit.data.sampling import repeat_factors

    rng = np.random.default_rng(0)
    for threshold in (0.05, 0.1, 0.5, 1.0):
        presence = rng.random((40, 6)) < np.array([0.9, 0.5, 0.1, 0.03, 0.0, 0.2])
        np.testing.assert_allclose(repeat_factors(presence, threshold),
                                   _repeat_factors_by_definition(presence.tolist(), threshold))
    import pytest

    with pytest.raises(ValueError, match="repeat_threshold"):
        repeat_factors(presence, 0.0)


def test_weighted_sampler_draws_in_proportion_and_is_reproducible():
    import numpy as np

    weights = np.array([1.0, 1.0, 4.0, 2.0])
    counts = np.zeros(4)
    for epoch in range(500):
        s = SeededSampler(4, seed=3, weights=weights)
        s.set_epoch(epoch)
        picks = [i for i, _ in s]
        assert len(picks) == 4
        np.add.at(counts, picks, 1)
        again = SeededSampler(4, seed=3, weights=weights)
        again.set_epoch(epoch)
        assert [i for i, _ in again] == picks
    np.testing.assert_allclose(counts / counts.sum(), weights / weights.sum(), atol=0.02)
    # under DDP the ranks split one draw
    ranks = [SeededSampler(4, seed=3, weights=weights, rank=r, world_size=2) for r in (0, 1)]
    single = SeededSampler(4, seed=3, weights=weights)
    assert sorted(i for r in ranks for i, _ in r) == sorted(i for i, _ in single)


def test_repeat_factor_sampling_in_the_datamodule(tmp_path):
    """data.sampling=repeat_factor: images holding a class found in few training images come up more often."""
    import numpy as np
    from PIL import Image

    from segkit.data import FolderSource, SegmentationDataModule

    for d in ("images", "masks", "splits"):
        (tmp_path / d).mkdir()
    names = []
    for i in range(20):
        mask = np.zeros((16, 16), np.uint8)
        mask[2:6, 2:6] = 1
        if i < 2:
            mask[8:12, 8:12] = 2  # class 2 in 10% of the images
        Image.fromarray(np.full((16, 16, 3), 50 * (i % 5), np.uint8)).save(tmp_path / "images" / f"{i:02d}.png")
        Image.fromarray(mask).save(tmp_path / "masks" / f"{i:02d}.png")
        names.append(f"{i:02d}")
    (tmp_path / "splits" / "train.txt").write_text("\n".join(names))
    (tmp_path / "splits" / "val.txt").write_text("\n".join(names[:2]))

    def rare_share(sampling):
        dm = SegmentationDataModule(FolderSource(str(tmp_path)), num_classes=3, batch_size=4, sampling=sampling,
                                    repeat_threshold=0.5)
        loader = dm.train_dataloader()
        picks = []
        for epoch in range(100):
            loader.sampler.set_epoch(epoch)
            picks += [i for i, _ in loader.sampler]
        return np.isin(picks, [0, 1]).mean()

    assert abs(rare_share("uniform") - 0.1) < 1e-9
    # factor sqrt(0.5 / 0.1) for the two rare images, 1 for the others: share 2 * 2.236 / (2 * 2.236 + 18)
    assert abs(rare_share("repeat_factor") - 2 * 5 ** 0.5 / (2 * 5 ** 0.5 + 18)) < 0.03
    # the factors read the masks alone (never the images) and skip a negative ignore_index: with every image
    # holding ignored pixels (an unmapped value -> -1 through a label map), class 2 must stay rare
    from unittest import mock

    for i, name in enumerate(names):
        mask = np.array(Image.open(tmp_path / "masks" / f"{name}.png"))
        mask[0, :] = 9  # not in the label map
        Image.fromarray(mask).save(tmp_path / "masks" / f"{name}.png")
    source = FolderSource(str(tmp_path))
    source.label_map = {0: 0, 1: 1, 2: 2}
    dm = SegmentationDataModule(source, num_classes=3, ignore_index=-1, batch_size=4, sampling="repeat_factor",
                                repeat_threshold=0.5, cache=False)
    with mock.patch("segkit.data.dataset.read_image", side_effect=AssertionError("image decoded")):
        factors = dm._sample_weights(dm.dataset("train", train=True))
    assert np.allclose(factors, [5 ** 0.5] * 2 + [1.0] * 18)
    import pytest

    with pytest.raises(ValueError, match="data.sampling must be uniform or repeat_factor"):
        SegmentationDataModule(FolderSource(str(tmp_path)), num_classes=3, sampling="balanced")


def test_auto_workers_follow_the_device_and_the_cache(tmp_path):
    """data.num_workers=auto: no worker processes for a CPU run over images held in memory, some when reading
    from disk; a bad value names the key."""
    import os

    import numpy as np
    import pytest
    from PIL import Image

    from segkit.data import FolderSource, SegmentationDataModule

    for d in ("images", "masks", "splits"):
        (tmp_path / d).mkdir()
    for i in range(4):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "images" / f"{i}.png")
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "masks" / f"{i}.png")
    (tmp_path / "splits" / "train.txt").write_text("0\n1\n2\n")
    (tmp_path / "splits" / "val.txt").write_text("3\n")
    cached = SegmentationDataModule(FolderSource(str(tmp_path)), num_classes=2, batch_size=2, num_workers="auto")
    assert cached.train_dataloader().num_workers == 0
    on_disk = SegmentationDataModule(FolderSource(str(tmp_path)), num_classes=2, batch_size=2, num_workers="auto",
                                     cache=False, persistent_workers=True)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    loader = on_disk.train_dataloader()
    assert loader.num_workers == min(4, cores // 2)
    assert loader.persistent_workers == (loader.num_workers > 0)
    # on a GPU: the node's cores are shared by its devices' processes, at most 8 each
    from types import SimpleNamespace
    from unittest import mock

    import torch

    for n_cores, devices, expected in [(16, 1, 8), (16, 4, 4), (4, 1, 4), (2, 8, 1)]:
        gpu_dm = SegmentationDataModule(FolderSource(str(tmp_path)), num_classes=2, batch_size=2, num_workers="auto")
        gpu_dm.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cuda", 0)),
                                         num_devices=devices)
        with mock.patch("os.sched_getaffinity", return_value=set(range(n_cores)), create=True):
            assert gpu_dm.train_dataloader().num_workers == expected, (n_cores, devices)
    with pytest.raises(ValueError, match="data.num_workers must be auto or a number"):
        SegmentationDataModule(FolderSource(str(tmp_path)), num_classes=2, num_workers="many")
