import math

import pytest

from matryoshka_adaptor.eval.metrics import evaluate_run


def test_hand_worked_example_with_grades_and_ties():
    qrels = {"q1": {"d1": 2, "d2": 1, "d3": 0}, "q2": {"d5": 1}, "q3": {"d9": 1}}
    run = {
        # ranking d2 (grade 1), d4 (0), d1 (grade 2)
        "q1": {"d1": 0.5, "d2": 0.9, "d4": 0.7},
        # a three-way tie: trec_eval orders ties by doc id descending, so d7, d6, d5
        "q2": {"d6": 0.8, "d7": 0.8, "d5": 0.8},
        # q3 retrieved nothing: every metric is 0 for it
    }
    ndcg_q1 = (1 / math.log2(2) + 2 / math.log2(4)) / (2 / math.log2(2) + 1 / math.log2(3))
    ndcg_q2 = (1 / math.log2(4)) / 1
    m = evaluate_run(qrels, run)
    assert m["ndcg@10"] == pytest.approx((ndcg_q1 + ndcg_q2 + 0) / 3, abs=1e-9)
    assert m["recall@100"] == pytest.approx((1 + 1 + 0) / 3)
    assert m["mrr@10"] == pytest.approx((1 + 1 / 3 + 0) / 3)


def test_mrr_is_cut_at_10():
    qrels = {"q": {"rel": 1}}
    run = {"q": {**{f"x{i:02d}": 1.0 - i / 100 for i in range(10)}, "rel": 0.5}}  # relevant doc at rank 11
    m = evaluate_run(qrels, run)
    assert m["mrr@10"] == 0.0 and m["recall@100"] == 1.0
