"""Duplicates: exact ones by a hash of the messages, near ones by MinHash/LSH candidates checked
with the exact Jaccard similarity of character 5-grams (what ``clean`` calls for its dedup steps)."""

from __future__ import annotations

import hashlib
import json
import re
import zlib


def text_of(record: dict) -> str:
    """All of a record's text in one string (what dedup and filters look at)."""
    return "\n".join(m["content"] for m in record["messages"])


def fingerprint(record: dict) -> str:
    """Exact-duplicate key: a hash of the messages (after cleaning, so spacing differences are gone)."""
    return hashlib.sha256(json.dumps(record["messages"], ensure_ascii=False).encode()).hexdigest()


def shingles(text: str, n: int = 5) -> set[str]:
    """Overlapping character n-grams of the text, lowercased with punctuation dropped.

    Characters (not words) so that one changed word costs few shingles, and Chinese works too.
    """
    text = " ".join(re.findall(r"\w+", text.casefold()))
    return {text[i:i + n] for i in range(max(1, len(text) - n + 1))}


def jaccard(a: set, b: set) -> float:
    """Shared shingles / all shingles: 1.0 identical, 0.0 nothing in common."""
    return len(a & b) / len(a | b) if a or b else 1.0


def minhash_candidates(sets: list[set], num_perm: int = 64, bands: int = 16, seed: int = 0) -> set[tuple[int, int]]:
    """Pairs (i, j) likely to be similar, without comparing every pair: MinHash + LSH banding.

    Each set gets NUM_PERM "minimum hashes"; two sets agree on one with probability equal to their
    Jaccard similarity. Cut the signature into BANDS bands: pairs agreeing on a whole band land in
    the same bucket and become candidates (with 16 bands of 4, pairs above ~0.5 almost always do).
    This is how corpus-scale pipelines find near duplicates among millions of documents.
    """
    import numpy as np

    prime = (1 << 31) - 1
    rng = np.random.default_rng(seed)
    a = rng.integers(1, prime, num_perm, dtype=np.uint64)
    b = rng.integers(0, prime, num_perm, dtype=np.uint64)
    rows = num_perm // bands
    buckets: dict[tuple, list[int]] = {}
    for index, items in enumerate(sets):
        hashes = np.array([zlib.crc32(s.encode()) for s in items] or [0], dtype=np.uint64)
        signature = ((hashes[:, None] * a + b) % prime).min(axis=0)
        for band in range(bands):
            key = (band, signature[band * rows:(band + 1) * rows].tobytes())
            buckets.setdefault(key, []).append(index)
    pairs = set()
    for members in buckets.values():
        for x in range(len(members)):
            for y in range(x + 1, len(members)):
                pairs.add((members[x], members[y]))
    return pairs


def near_duplicates(records: list[dict], threshold: float = 0.8) -> list[tuple[int, int, float]]:
    """(kept index, duplicate index, Jaccard) for every record at least THRESHOLD similar to an
    earlier kept one. Candidates come from MinHash/LSH; each is then checked with the exact Jaccard."""
    sets = [shingles(text_of(r)) for r in records]
    candidates = sorted(minhash_candidates(sets), key=lambda p: (p[1], p[0]))
    duplicates, removed = [], set()
    for i, j in candidates:
        if i in removed or j in removed:
            continue
        score = jaccard(sets[i], sets[j])
        if score >= threshold:
            duplicates.append((i, j, score))
            removed.add(j)
    return duplicates
