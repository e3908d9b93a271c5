"""``otcfm.train.datasets.stream``: per-purpose generators derived from the run seed.

Oracle: the seed is the polynomial hash (base 1,000,003, modulo 2^61 - 1) of the bytes of the
whole key ``"seed/label/..."``, computed here from scratch; the cached prefix must not change
it (runs recorded before the cache keep their batches).
"""

from __future__ import annotations

import torch

from otcfm.train.datasets import stream


def full_key_seed(seed: int, *labels: str) -> int:
    digest = 0
    for byte in "/".join((str(seed), *labels)).encode():
        digest = (digest * 1_000_003 + byte) % (2**61 - 1)
    return digest


def test_seed_is_the_hash_of_the_whole_key():
    cases = [
        (42, ()),
        (42, ("val",)),
        (0, ("step", "0", "0")),
        (42, ("step", "3", "123456")),
        (7, ("couple", "0", "99")),
        (123456789, ("source", "train")),
        (5, ("é", "ü")),  # multi-byte UTF-8
    ]
    for seed, labels in cases:
        assert stream(seed, *labels).initial_seed() == full_key_seed(seed, *labels), labels


def test_same_key_same_draws_and_keys_differ():
    for step in range(50):  # many keys through one cached prefix
        a = torch.rand(4, generator=stream(42, "step", "0", str(step)))
        b = torch.rand(4, generator=stream(42, "step", "0", str(step)))
        assert torch.equal(a, b)
    seeds = {stream(42, "step", "0", str(step)).initial_seed() for step in range(1000)}
    assert len(seeds) == 1000
    rank0, rank1 = stream(42, "step", "0", "1"), stream(42, "step", "1", "0")
    assert rank0.initial_seed() != rank1.initial_seed()
    assert stream(42, "a/b").initial_seed() == stream(42, "a", "b").initial_seed()  # by design


def test_each_call_is_a_fresh_generator():
    g1 = stream(3, "x")
    first = torch.rand(3, generator=g1)
    g2 = stream(3, "x")
    assert g2 is not g1
    assert torch.equal(torch.rand(3, generator=g2), first)
