"""FolderSource splits: listed splits as listed; the others drawn from the unlisted images, never overlapping."""
import pytest

from segkit.data import DataError, FolderSource

SPLITS = ("train", "val", "test")


def make_folder(root, n=20, lists=None):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    names = [f"img_{i:03d}" for i in range(n)]
    for name in names:
        (root / "images" / f"{name}.png").write_bytes(b"")  # listing only; nothing is decoded
    (root / "splits").mkdir()
    for split, members in (lists or {}).items():
        (root / "splits" / f"{split}.txt").write_text("\n".join(members) + "\n")
    return names


def split_stems(source):
    return {split: [p.stem for p, _ in source.samples(split)] for split in SPLITS}


def assert_partition(splits, names, listed):
    for split, members in listed.items():
        assert splits[split] == members  # listed splits as listed, in file order
    seen = [n for split in SPLITS for n in splits[split]]
    assert len(seen) == len(set(seen)), "a name is in two splits"
    assert set(seen) <= set(names)


@pytest.mark.parametrize("test_ratio", [0.0, 0.25])
def test_only_train_list_draws_val_and_test_from_the_unlisted(tmp_path, test_ratio):
    names = make_folder(tmp_path, 20, {"train": [f"img_{i:03d}" for i in range(0, 20, 2)]})
    splits = split_stems(FolderSource(str(tmp_path), val_ratio=0.1, test_ratio=test_ratio))
    assert_partition(splits, names, {"train": names[0::2]})
    assert set(splits["val"]) | set(splits["test"]) == set(names[1::2])  # all the rest, none of train
    # val:test = 0.1:0.25 of the 10 unlisted images; no test asked -> all 10 to val
    assert (len(splits["val"]), len(splits["test"])) == ((3, 7) if test_ratio else (10, 0))


def test_only_val_list_trains_on_the_rest(tmp_path):
    names = make_folder(tmp_path, 20, {"val": ["img_005", "img_001", "img_017"]})
    splits = split_stems(FolderSource(str(tmp_path), val_ratio=0.5, test_ratio=0.1))
    assert_partition(splits, names, {"val": ["img_005", "img_001", "img_017"]})
    assert len(splits["test"]) == 2 and sorted(splits["train"] + splits["test"] + splits["val"]) == names


def test_train_and_val_lists_test_only_when_asked(tmp_path):
    lists = {"train": [f"img_{i:03d}" for i in range(12)], "val": [f"img_{i:03d}" for i in range(12, 16)]}
    names = make_folder(tmp_path, 20, lists)
    assert split_stems(FolderSource(str(tmp_path)))["test"] == []
    splits = split_stems(FolderSource(str(tmp_path), test_ratio=0.1))
    assert_partition(splits, names, lists)
    assert splits["test"] == names[16:]


def test_no_lists_is_a_seeded_ratio_split(tmp_path):
    names = make_folder(tmp_path, 20)
    splits = split_stems(FolderSource(str(tmp_path), val_ratio=0.2, test_ratio=0.1, seed=3))
    assert_partition(splits, names, {})
    assert [len(splits[s]) for s in SPLITS] == [14, 4, 2]
    assert splits == split_stems(FolderSource(str(tmp_path), val_ratio=0.2, test_ratio=0.1, seed=3))
    assert splits != split_stems(FolderSource(str(tmp_path), val_ratio=0.2, test_ratio=0.1, seed=4))


def test_nothing_left_for_val_names_the_file_to_add(tmp_path):
    names = make_folder(tmp_path, 6, {"train": [f"img_{i:03d}" for i in range(6)]})
    source = FolderSource(str(tmp_path))
    assert [p.stem for p, _ in source.samples("train")] == names
    with pytest.raises(DataError, match=r"no images left for the val split.*add .*splits/val\.txt"):
        source.samples("val")
    assert source.samples("test") == []  # test not asked for: empty, no error
    with pytest.raises(DataError, match=r"splits/test\.txt"):
        FolderSource(str(tmp_path), test_ratio=0.1).samples("test")


def test_other_named_list_and_missing_one(tmp_path):
    make_folder(tmp_path, 4, {"trainval": ["img_000", "img_003"]})
    source = FolderSource(str(tmp_path))
    assert [p.stem for p, _ in source.samples("trainval")] == ["img_000", "img_003"]
    with pytest.raises(DataError, match=r"splits/extra\.txt"):
        source.samples("extra")
