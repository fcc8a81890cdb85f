"""Which cases each iteration draws: two shuffled streams, labeled and unlabeled."""

from __future__ import annotations

from typing import List, Tuple

import numpy as np


class TwoStreamSampler:
    """Labeled indices come from successive random permutations (every case once per pass);
    unlabeled indices likewise from their own stream. State is plain lists, saved for resume."""

    def __init__(self, num_labeled: int, num_unlabeled: int, rng: np.random.Generator) -> None:
        self.sizes = (num_labeled, num_unlabeled)
        self.rng = rng
        self.queues: List[List[int]] = [[], []]

    def _take(self, stream: int, n: int) -> List[int]:
        out: List[int] = []
        while len(out) < n:
            if not self.queues[stream]:
                self.queues[stream] = [int(i) for i in self.rng.permutation(self.sizes[stream])]
            out.append(self.queues[stream].pop(0))
        return out

    def next(self, n_labeled: int, n_unlabeled: int) -> Tuple[List[int], List[int]]:
        return self._take(0, n_labeled), self._take(1, n_unlabeled)
