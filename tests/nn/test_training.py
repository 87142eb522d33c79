import numpy as np

from matryoshka_adaptor.nn.module import AdaptorNet
from matryoshka_adaptor.nn.training import LossWeights, Trainer


def make_trainer(positives, hard=None, max_positives=2, random_negatives=3):
    t = Trainer(AdaptorNet(8, 8), (4, 8), LossWeights(), max_positives=max_positives,
                random_negatives=random_negatives, progress=False)
    t._corpus = t._t(np.eye(50, 8, dtype=np.float32) + 0.1)
    t._positives = positives
    t._hard = hard
    return t


def test_pool_has_sampled_positives_random_and_hard_negatives_with_true_grades():
    positives = [[(1, 2.0), (2, 1.0), (3, 1.0)], [(2, 1.0)]]  # doc 2 is relevant to both queries
    hard = np.array([[10, 11], [12, 2]])
    t = make_trainer(positives, hard)
    pool, grades, as_j = t._supervised_pool(np.array([0, 1]))
    assert {10, 11, 12, 2}.issubset(pool)
    col = {r: j for j, r in enumerate(pool)}
    assert as_j[0].sum() == 2 and as_j[1].sum() == 1  # at most max_positives act as j
    assert as_j[1, col[2]] and grades[1, col[2]] == 1.0
    for r, g in positives[0]:  # a judged doc in the pool keeps its grade, sampled or not
        if r in col:
            assert grades[0, col[r]] == g
    assert grades[0, col[10]] == 0 and grades[1, col[12]] == 0


def test_pool_without_hard_negatives():
    t = make_trainer([[(5, 1.0)]], None, random_negatives=4)
    pool, grades, as_j = t._supervised_pool(np.array([0]))
    assert 5 in pool and len(pool) <= 5 and as_j.sum() == 1
