"""Near-duplicate search over perceptual hashes, and grouping of duplicate pairs.

Candidate pairs come from banding: a pair within ``t`` differing bits agrees exactly on at least one
of ``t + 1`` bands (pigeonhole), so only pairs sharing a band are compared and the search grows with
the number of images, not its square (unless very many images share a band: then with those).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_BLOCK = 256  # bucket rows compared at a time


def near_pairs(hashes: np.ndarray, max_bits: int) -> list[tuple[int, int, int]]:
    """Pairs (i, j, distance) with i < j whose hashes differ in at most ``max_bits`` bits.

    ``hashes``: (N, W) uint64. Pigeonhole banding: split the bits into ``max_bits + 1`` bands; a pair
    within ``max_bits`` agrees exactly on at least one band, so only pairs sharing a band are compared.
    """
    n = len(hashes)
    if n < 2:
        return []
    bits = np.unpackbits(hashes.view(np.uint8), axis=1)
    bands = np.array_split(np.arange(bits.shape[1]), max_bits + 1)
    found: dict[tuple[int, int], int] = {}
    for band in bands:
        keys = np.packbits(bits[:, band], axis=1)
        _, inverse, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
        order = np.argsort(inverse.ravel(), kind="stable")  # members of a bucket stay in index order
        for members, count in zip(np.split(order, np.cumsum(counts)[:-1]), counts, strict=True):
            if count > 1:
                found.update(_close_pairs(hashes, members, max_bits))
    return [(i, j, d) for (i, j), d in sorted(found.items())]


def _close_pairs(hashes: np.ndarray, members: np.ndarray, max_bits: int) -> dict[tuple[int, int], int]:
    """Pairs of one bucket within ``max_bits``, compared in blocks (a big bucket never becomes a k² list)."""
    sub = hashes[members]
    out: dict[tuple[int, int], int] = {}
    for start in range(0, len(members), _BLOCK):
        distances = np.bitwise_count(sub[start:start + _BLOCK, None, :] ^ sub[None, :, :]).sum(axis=2)
        for a, b in zip(*np.nonzero(distances <= max_bits), strict=True):
            if start + a < b:
                out[(int(members[start + a]), int(members[b]))] = int(distances[a, b])
    return out


def connected_groups(n: int, pairs: Sequence[tuple[int, int]]) -> list[list[int]]:
    """Connected components (size > 1) of the pair graph, each sorted, in order of their first member."""
    parent = list(range(n))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for i, j in pairs:
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    members: dict[int, list[int]] = {}
    for i in range(n):
        members.setdefault(find(i), []).append(i)
    return sorted((m for m in members.values() if len(m) > 1), key=lambda m: m[0])
