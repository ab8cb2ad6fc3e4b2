"""Sampling semantics (docs/SPEC.md §5), written once in NumPy. Backends implement the same rule in
their framework; this is the definition they are checked against.

A draw with uniform u picks the first token id i (ascending) with u < cdf[i], where cdf is
the cumulative sum of softmax(logits / temperature) over the kept logits. Top-k keeps every
logit >= the k-th largest (ties kept). Temperature 0 means greedy: argmax, lowest id on ties.
If rounding leaves cdf[-1] <= u, the last token with non-zero probability is taken."""
from __future__ import annotations

import numpy as np


def prefix_ids(prefix: np.ndarray, dtype: type = np.int64) -> np.ndarray:
    """A generation prefix as (P,) token ids of `dtype`; ValueError where it is empty (a
    draw needs the logits of at least one token)."""
    ids = np.asarray(prefix, dtype).reshape(-1)  # (P,)
    if ids.size == 0:
        raise ValueError("generate needs a prefix of at least one token")
    return ids


def filtered_probs(logits: np.ndarray, temperature: float, top_k: int) -> np.ndarray:
    """(V,) logits -> (V,) probabilities after top-k and temperature."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    if 0 < top_k < z.shape[-1]:
        kth = np.sort(z)[-top_k]
        z = np.where(z >= kth, z, -np.inf)
    z = z - z.max()
    p = np.exp(z)
    return p / p.sum()


def draw(logits: np.ndarray, temperature: float, top_k: int, u: float) -> int:
    """One token id from (V,) logits with the caller's uniform u in [0, 1)."""
    if temperature == 0:
        return int(np.argmax(logits))
    p = filtered_probs(logits, temperature, top_k)
    cdf = np.cumsum(p)
    i = int(np.searchsorted(cdf, u, side="right"))
    if i >= len(p):  # rounding: u >= cdf[-1]
        i = int(np.nonzero(p)[0][-1])
    return i
