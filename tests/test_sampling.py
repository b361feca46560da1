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
