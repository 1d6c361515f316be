"""A model of admissions across partitions during a reshard (docs/scaling.md; issue 13).

Each partition is one RQ deployment with dedupkit's rule, modelled by what the guarantee
needs: a slot per key naming its holder, and per job a state that is *pending* until it
is *over*, never pending again once over (dk_pending keeps a job pending while RQ may
still run it, revivals included). One partition call is atomic (one script); a client's
steps across partitions are not, and the simulator interleaves them with other clients,
workers finishing jobs, cancels, and the operator's reshard.

Routing is rendezvous hashing: a key goes to the partition with the highest
sha1(partition, key); adding a partition moves only the keys it now wins.

``protocol=True`` runs the plan of docs/scaling.md: before a new map is published, the
operator fences every moving key on its old partition (that partition then answers
``moved`` for it, and admits it no more); a client routing a moving key to its new
partition first makes sure the fence is there, then asks the old partition whether it
still holds a pending job for the key (a conflict if so), and only then admits on the new
partition. ``protocol=False`` publishes the new map and lets clients admit wherever their
map says.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field


def route(key: str, partitions: Sequence[str]) -> str:
    """Rendezvous (highest random weight) hashing: stable, and minimal moves on a resize."""
    def weight(p: str) -> bytes:
        return hashlib.sha1(f"{p}\0{key}".encode()).digest()
    return max(partitions, key=weight)


@dataclass
class Partition:
    name: str
    slots: dict[str, int] = field(default_factory=dict)      # key -> holder job
    fenced: set[str] = field(default_factory=set)            # keys this partition may no longer admit

    def admit(self, key: str, job: int, jobs: dict[int, tuple[str, str, bool]]) -> str:
        """The admit script: one atomic step."""
        if key in self.fenced:
            return "moved"
        holder = self.slots.get(key)
        if holder is not None and jobs[holder][2]:
            return "conflict"
        self.slots[key] = job
        jobs[job] = (key, self.name, True)
        return "admitted"

    def pending(self, key: str, jobs: dict[int, tuple[str, str, bool]]) -> bool:
        """The status script: does the key's holder here still hold it?"""
        holder = self.slots.get(key)
        return holder is not None and jobs[holder][2]

    def fence(self, key: str) -> None:
        self.fenced.add(key)


@dataclass
class World:
    partitions: dict[str, Partition]
    maps: list[list[str]]                                     # published maps, by epoch
    jobs: dict[int, tuple[str, str, bool]] = field(default_factory=dict)   # job -> (key, partition, pending)
    next_job: int = 0
    duplicates: list[tuple[str, list[int]]] = field(default_factory=list)

    def new_job(self) -> int:
        self.next_job += 1
        return self.next_job

    def check(self) -> None:
        by_key: dict[str, list[int]] = {}
        for job, (key, _, pending) in self.jobs.items():
            if pending:
                by_key.setdefault(key, []).append(job)
        for key, pending_jobs in by_key.items():
            if len(pending_jobs) > 1:
                self.duplicates.append((key, pending_jobs))


def _client(world: World, key: str, epoch: int, protocol: bool) -> Iterator[str]:
    """One admission request, as a generator: each yield is a point where others may run.
    ``epoch`` is the map the client holds (it may be stale)."""
    while True:
        target = route(key, world.maps[epoch])
        if protocol and epoch > 0:
            old = route(key, world.maps[epoch - 1])
            if old != target:
                # The key moved: its old partition must be fenced, and hold nothing.
                world.partitions[old].fence(key)   # idempotent; the operator did it already
                yield "fenced"
                if world.partitions[old].pending(key, world.jobs):
                    yield "conflict"
                    return
                yield "checked old"
        answer = world.partitions[target].admit(key, world.new_job(), world.jobs)
        if answer == "moved":
            epoch = len(world.maps) - 1    # refresh the map and retry
            yield "moved"
            continue
        yield answer
        return


def simulate(seed: int, *, protocol: bool, keys: int = 6, clients: int = 40, partitions: int = 2) -> World:
    """Replay one random interleaving of ``clients`` admissions, workers ending jobs, and a
    reshard from ``partitions`` to ``partitions + 1`` partitions; return the world (its
    ``duplicates`` list every moment two jobs of one key were pending)."""
    rng = random.Random(seed)
    names = [f"p{i}" for i in range(partitions + 1)]
    world = World({n: Partition(n) for n in names}, [names[:partitions]])
    key_names = [f"k{i}" for i in range(keys)]
    running: list[Iterator[str]] = []
    started = 0
    resharded = False
    while started < clients or running:
        choice = rng.random()
        if not resharded and (choice < 0.05 or started >= clients // 2):
            resharded = True
            new_map = names
            if protocol:
                # Fence every key that moves on its old partition, then publish.
                for key in key_names:
                    old, new = route(key, world.maps[-1]), route(key, new_map)
                    if old != new:
                        world.partitions[old].fence(key)
            world.maps.append(new_map)
        elif started < clients and choice < 0.45:
            # A client with the current map, or (after the reshard) a stale one.
            epoch = len(world.maps) - 1
            if epoch and rng.random() < 0.5:
                epoch -= 1
            running.append(_client(world, rng.choice(key_names), epoch, protocol))
            started += 1
        elif running and choice < 0.85:
            step = rng.choice(running)
            if next(step, None) is None:
                running.remove(step)
            # A finished generator also ends with its last answer: drain it now.
        else:
            pending = [j for j, (_, _, p) in world.jobs.items() if p]
            if pending:
                job = rng.choice(pending)
                key, part, _ = world.jobs[job]
                world.jobs[job] = (key, part, False)   # a worker ended it (or a cancel withdrew it)
        world.check()
    return world
