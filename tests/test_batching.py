"""Content-defined shards and duration-sorted batch packing."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Optional

import pytest

from pipeline.plan.batching import pack_batches, padding_ratio
from pipeline.plan.shards import MAX_SHARD_FACTOR, make_shards


@dataclass
class Item:
    cut_id: str
    duration: Optional[float]
    source: str = ""  # default: a file of its own (one file per cut)
    channel: Optional[int] = None
    start: float = 0.0
    window_index: Optional[int] = None
    member: Optional[str] = None

    def __post_init__(self) -> None:
        self.source = self.source or f"s3://b/{self.cut_id}.wav"


def test_shards_are_consecutive_and_deterministic():
    items = [Item(f"c{i}", 1.0) for i in range(230)]
    shards = list(make_shards(iter(items), 10))
    assert [i.cut_id for s in shards for i in s.items] == [i.cut_id for i in items]
    assert [s.index for s in shards] == list(range(len(shards)))
    assert all(s.shard_id.startswith("shard-") and len(s.shard_id) == 22 for s in shards)
    assert len({s.shard_id for s in shards}) == len(shards)
    assert all(1 <= len(s.items) <= MAX_SHARD_FACTOR * 10 for s in shards)
    assert 10 <= len(shards) <= 46  # about 23 shards of 10 on average
    again = list(make_shards(iter(items), 10))
    assert [s.shard_id for s in again] == [s.shard_id for s in shards]
    assert [s.fingerprint("m", "d") for s in shards] == [s.fingerprint("m", "d") for s in again]


def test_an_inserted_item_changes_only_its_own_shard():
    """Content-defined boundaries: a file added to a prefix renumbers nothing; only the shard
    that receives it gets a new id (every other shard's part is reused by a rerun)."""
    items = [Item(f"audio/{i:05d}.wav", 1.0) for i in range(2000)]
    before = {s.shard_id: [i.cut_id for i in s.items] for s in make_shards(items, 20)}
    grown = items[:777] + [Item("audio/00776b.wav", 1.0)] + items[777:]
    after = {s.shard_id: [i.cut_id for i in s.items] for s in make_shards(grown, 20)}
    new = set(after) - set(before)
    gone = set(before) - set(after)
    # the new item may itself end a shard, or push a shard that was cut at the size limit over it:
    # the change stays local, a few shards between two content boundaries
    assert 1 <= len(new) <= 3 and 1 <= len(gone) <= 2
    assert sorted(i for s in new for i in after[s]) == sorted([i for s in gone for i in before[s]] + ["audio/00776b.wav"])
    # a position-based cut would have renumbered every later shard
    assert set(before) - gone == set(after) - new and len(set(before) - gone) >= len(before) - 2


def test_shard_size_one_gives_one_shard_per_item_and_the_maximum_holds():
    items = [Item(f"c{i}", 1.0) for i in range(7)]
    assert [len(s.items) for s in make_shards(items, 1)] == [1] * 7
    many = [Item(f"c{i}", 1.0) for i in range(5000)]
    sizes = [len(s.items) for s in make_shards(many, 100)]
    assert max(sizes) <= MAX_SHARD_FACTOR * 100 and sum(sizes) == 5000
    assert 60 <= sum(sizes) / len(sizes) <= 160  # mean near the shard size


def test_fingerprint_changes_with_content_and_settings():
    shard = next(make_shards([Item("a", 1.0), Item("b", 2.0)], 5))
    other = next(make_shards([Item("a", 1.0), Item("b", 2.5)], 5))
    assert shard.fingerprint("m") != other.fingerprint("m")
    assert shard.fingerprint("m") != shard.fingerprint("m2")


def test_make_shards_is_lazy():
    """A shard is yielded one item after its end: the next item tells whether its recording goes on."""
    items = [Item(f"c{i}", 1.0) for i in range(100)]
    size = len(next(make_shards(items, 5)).items)

    def stream():
        yield from items[:size + 1]
        raise RuntimeError("read past what the first shard needs")

    first = next(make_shards(stream(), 5))
    assert [i.cut_id for i in first.items] == [i.cut_id for i in items[:size]]


def test_packing_respects_padded_budget_and_keeps_every_item():
    rng = random.Random(0)
    items = [Item(f"c{i}", rng.uniform(0.5, 20.0)) for i in range(300)]
    batches = pack_batches(items, [i.duration for i in items], max_batch_seconds=60.0)
    seen = [i.cut_id for b in batches for i in b.items]
    assert sorted(seen) == sorted(i.cut_id for i in items) and len(seen) == len(set(seen))
    for b in batches:
        assert b.padded_seconds <= 60.0 + 1e-9
        assert b.durations == sorted(b.durations, reverse=True)
    # sorting keeps padding low on uniformly random durations
    assert padding_ratio(batches) < 0.1


def test_oversized_and_unknown_items_get_their_own_batch():
    items = [Item("long", 100.0), Item("unknown", None), Item("a", 5.0), Item("b", 5.0)]
    batches = pack_batches(items, [i.duration for i in items], max_batch_seconds=30.0)
    by_first = {b.items[0].cut_id: b for b in batches}
    assert len(by_first["long"].items) == 1
    assert len(by_first["unknown"].items) == 1
    assert sorted(i.cut_id for i in by_first["a"].items) == ["a", "b"]


def test_max_batch_size_caps_cuts():
    items = [Item(f"c{i}", 1.0) for i in range(10)]
    batches = pack_batches(items, [1.0] * 10, max_batch_seconds=100.0, max_batch_size=4)
    assert sorted(len(b.items) for b in batches) == [2, 4, 4]  # the fewest batches the cap allows


def test_padding_ratio_hand_computed():
    items = [Item("a", 10.0), Item("b", 5.0)]
    batches = pack_batches(items, [10.0, 5.0], max_batch_seconds=20.0, batch_overhead=10.0)
    assert len(batches) == 1  # 20 padded + 10 overhead beats 15 + 2 x 10
    assert padding_ratio(batches) == pytest.approx(1 - 15.0 / 20.0)
    split = pack_batches(items, [10.0, 5.0], max_batch_seconds=20.0, batch_overhead=1.0)
    assert len(split) == 2 and padding_ratio(split) == 0.0  # 15 + 2 x 1 beats 20 + 1


def test_bad_arguments():
    with pytest.raises(ValueError):
        list(make_shards([], 0))
    with pytest.raises(ValueError):
        pack_batches([Item("a", 1.0)], [1.0], max_batch_seconds=0)


def greedy_padded(durations, budget):
    """Independent reference: fill each batch with as many sorted cuts as fit."""
    total, batch = 0.0, []
    for d in sorted(durations, reverse=True):
        if batch and (len(batch) + 1) * batch[0] > budget:
            total += len(batch) * batch[0]
            batch = []
        batch.append(d)
    return total + len(batch) * batch[0]


def brute_force_best(durations, budget, overhead):
    """Exhaustive search over split points of the sorted list (small n only)."""
    import itertools

    d = sorted(durations, reverse=True)
    n = len(d)
    best = float("inf")
    for mask in itertools.product([0, 1], repeat=n - 1):
        bounds = [0] + [i + 1 for i, m in enumerate(mask) if m] + [n]
        cost = 0.0
        for a, b in zip(bounds, bounds[1:]):
            if (b - a) * d[a] > budget and b - a > 1:
                break
            cost += (b - a) * d[a] + overhead
        else:
            best = min(best, cost)
    return best


def test_packing_is_optimal_on_small_problems():
    rng = random.Random(5)
    for _ in range(40):
        durs = [round(rng.uniform(0.5, 12.0), 2) for _ in range(rng.randint(1, 10))]
        items = [Item(f"c{i}", d) for i, d in enumerate(durs)]
        batches = pack_batches(items, durs, max_batch_seconds=30.0, batch_overhead=1.0)
        cost = sum(b.padded_seconds + 1.0 for b in batches)
        assert cost == pytest.approx(brute_force_best(durs, 30.0, 1.0))


def test_packing_beats_greedy_with_a_large_budget():
    rng = random.Random(1)
    durs = [min(20.0, max(1.0, rng.gammavariate(3.0, 2.4))) for _ in range(1000)]
    items = [Item(f"c{i}", d) for i, d in enumerate(durs)]
    for budget in (160.0, 600.0):
        batches = pack_batches(items, durs, max_batch_seconds=budget)
        assert sum(b.padded_seconds for b in batches) < greedy_padded(durs, budget)
        assert all(b.padded_seconds <= budget for b in batches)
    assert padding_ratio(pack_batches(items, durs, max_batch_seconds=160.0)) < 0.03


def test_long_items_count_quadratically():
    """Attention grows with the square of length: past 30 s an item costs L*L/30 padded seconds,
    so a 240 s budget holds 2 cuts of 60 s (not 4), while 30 s windows still fill it 8 at a time."""
    from pipeline.plan.batching import cost_seconds

    assert cost_seconds(20.0) == 20.0 and cost_seconds(30.0) == 30.0 and cost_seconds(60.0) == 120.0
    long = pack_batches(list(range(6)), [60.0] * 6, 240.0)
    assert [len(b.items) for b in long] == [2, 2, 2]
    windows = pack_batches(list(range(16)), [30.0] * 16, 240.0)
    assert [len(b.items) for b in windows] == [8, 8]
    linear = pack_batches(list(range(6)), [60.0] * 6, 240.0, attention_reference=None)
    assert sorted(len(b.items) for b in linear) == [2, 4]
