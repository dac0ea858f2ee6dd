"""k-center greedy (Sener & Savarese, ICLR 2018), memory-bounded.

Pick ``budget`` pool points, each the one farthest (Euclidean) from everything chosen so far,
labeled set included: a 2-approximation of the minimax facility location ("core set") problem.
Memory: one min-distance vector of length N and distance blocks of at most
``chunk x chunk`` values; never an N x N (or N x M) matrix. Each greedy step costs O(N D)
through ``|x|^2 - 2 x.c + |c|^2`` (no N x D temporary).
"""

from __future__ import annotations

import numpy as np

__all__ = ["k_center_greedy"]


def _sq_norms(x: np.ndarray, chunk: int) -> np.ndarray:
    out = np.empty(x.shape[0], dtype=np.float64)
    for s in range(0, x.shape[0], chunk):
        part = x[s : s + chunk].astype(np.float64)
        out[s : s + chunk] = np.einsum("ij,ij->i", part, part)
    return out


def k_center_greedy(
    pool: np.ndarray, labeled: np.ndarray | None, budget: int, *, chunk: int = 1024,
    tie_break: np.ndarray | None = None,
) -> list[int]:
    """Indices of ``budget`` rows of ``pool`` chosen by k-center greedy, in picking order.

    Args:
        pool (float ndarray[N, D]): unlabeled embeddings.
        labeled (float ndarray[M, D] or None): embeddings of the labeled set (the initial
            centers). Empty: the first pick is the pool point farthest from the pool's mean.
        budget: b; clipped to N.
        chunk: rows per distance block (one chunk x chunk block of doubles: 8 MB at 1024).
        tie_break (int ndarray[N] or None): among equally far points the one with the lowest
            value goes first (a seeded random permutation, so ties do not favour low indices);
            None: the lowest index.
    """
    pool = np.asarray(pool, dtype=np.float32)
    n = pool.shape[0]
    budget = min(int(budget), n)
    if budget <= 0:
        return []
    pn = _sq_norms(pool, chunk)
    min_d = np.full(n, np.inf, dtype=np.float64)
    if labeled is not None and len(labeled):
        labeled = np.asarray(labeled, dtype=np.float32)
        if labeled.shape[1] != pool.shape[1]:
            raise ValueError(f"labeled embeddings have {labeled.shape[1]} values, the pool's {pool.shape[1]}")
        ln = _sq_norms(labeled, chunk)
        for s in range(0, n, chunk):
            block = pool[s : s + chunk]
            best = min_d[s : s + chunk]
            for t in range(0, labeled.shape[0], chunk):
                # float32 BLAS (the bulk of the time), then doubles: one chunk x chunk block
                d = (block @ labeled[t : t + chunk].T).astype(np.float64)
                d *= -2.0
                d += pn[s : s + chunk, None]
                d += ln[None, t : t + chunk]
                np.minimum(best, d.min(axis=1), out=best)
    first = None
    if labeled is None or not len(labeled):
        mean = _chunked_mean(pool, chunk)
        first = _argmax(pn - 2.0 * _matvec(pool, mean, chunk), tie_break)  # + |mean|^2: same argmax
    chosen: list[int] = []
    for step in range(budget):
        i = first if (step == 0 and first is not None) else _argmax(min_d, tie_break)
        chosen.append(i)
        c = pool[i].astype(np.float64)
        d = pn - 2.0 * _matvec(pool, c, chunk) + pn[i]
        np.minimum(min_d, d, out=min_d)
        min_d[i] = -np.inf  # chosen: never again, even with duplicate embeddings
    return chosen


def _argmax(values: np.ndarray, tie_break: np.ndarray | None) -> int:
    if tie_break is None:
        return int(np.argmax(values))
    best = np.flatnonzero(values == values.max())
    return int(best[np.argmin(tie_break[best])])


def _matvec(x: np.ndarray, v: np.ndarray, chunk: int) -> np.ndarray:
    # float32 BLAS on the stored matrix: no N x D copy per greedy step (only N outputs).
    return (x @ np.asarray(v, dtype=x.dtype)).astype(np.float64)


def _chunked_mean(x: np.ndarray, chunk: int) -> np.ndarray:
    total = np.zeros(x.shape[1], dtype=np.float64)
    for s in range(0, x.shape[0], chunk):
        total += x[s : s + chunk].astype(np.float64).sum(axis=0)
    return total / x.shape[0]
