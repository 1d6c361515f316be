"""docs/scaling.md's reshard protocol, replayed (issue 13): random interleavings of clients
with fresh and stale maps, workers ending jobs, and a reshard from 2 to 3 partitions, over
a model of dedupkit's rule (tests/reshard_model.py). With the protocol no key ever has two
pending jobs; without it, the same interleavings find duplicates."""

from __future__ import annotations

from tests.reshard_model import route, simulate

SEEDS = range(400)


def test_rendezvous_routing_is_stable_and_moves_few_keys() -> None:
    keys = [f"user{i}" for i in range(3000)]
    two, three = ["p0", "p1"], ["p0", "p1", "p2"]
    assert [route(k, two) for k in keys] == [route(k, list(reversed(two))) for k in keys]  # order-free
    moved = [k for k in keys if route(k, two) != route(k, three)]
    assert all(route(k, three) == "p2" for k in moved)  # a key only ever moves to the new partition
    assert 0.25 < len(moved) / len(keys) < 0.42  # about 1/3 of the keys


def test_with_the_protocol_no_key_is_ever_pending_twice() -> None:
    moved_admissions = 0
    for seed in SEEDS:
        world = simulate(seed, protocol=True)
        assert world.duplicates == [], f"seed {seed}: {world.duplicates[:3]}"
        moved_admissions += sum(part == "p2" for _, part, _ in world.jobs.values())
    # The new partition did take admissions: the protocol moves keys, it does not just refuse.
    assert moved_admissions > 100


def test_without_the_protocol_the_same_replays_find_duplicates() -> None:
    bad = [seed for seed in SEEDS if simulate(seed, protocol=False).duplicates]
    assert len(bad) > 10, bad
    world = simulate(bad[0], protocol=False)
    key, jobs = world.duplicates[0]
    # The two jobs of that key are pending on the old and on the new partition.
    assert {world.jobs[j][1] for j in jobs} == {route(key, ["p0", "p1"]), "p2"}
