import math

import numpy as np
import pytest
import torch

from matryoshka_adaptor.config import AdaptorConfig
from matryoshka_adaptor.nn import losses
from matryoshka_adaptor.nn.module import AdaptorNet
from matryoshka_adaptor.nn.training import (
    LOSS_TERMS,
    EMAWeights,
    Trainer,
    TrainingData,
    interpolate_weights,
    listwise_pool_mask,
    stage_weights,
    weighted_sum,
)


def config(**changes):
    return AdaptorConfig(progress=False, device="cpu", **changes)


def data_for(corpus, *, queries=None, positives=None, hard=None, n_corpus_anchors=None, nb_idx=None, nb_sims=None,
             anchors=None):
    n = len(corpus)
    anchors = corpus if anchors is None else anchors
    nb_idx = np.zeros((len(anchors), 1), dtype=np.int64) if nb_idx is None else nb_idx
    nb_sims = np.zeros(nb_idx.shape, dtype=np.float32) if nb_sims is None else nb_sims
    return TrainingData(corpus, anchors, nb_idx, nb_sims, n if n_corpus_anchors is None else n_corpus_anchors,
                        queries=queries, positives=positives, hard_negatives=hard)


def make_trainer(positives, hard=None, max_positives=2, random_negatives=3):
    corpus = np.eye(50, 8, dtype=np.float32) + 0.1
    data = data_for(corpus, queries=np.ones((len(positives), 8), np.float32), positives=positives, hard=hard)
    return Trainer(AdaptorNet(8, 8), (4, 8), config(max_positives=max_positives, random_negatives=random_negatives),
                   data)


def test_pool_has_sampled_positives_random_and_hard_negatives_with_true_grades():
    positives = [[(1, 2.0), (2, 1.0), (3, 1.0)], [(2, 1.0)]]  # doc 2 is relevant to both queries
    hard = np.array([[10, 11], [12, 2]])
    t = make_trainer(positives, hard)
    pool, grades, as_j = t.supervised_pool(np.array([0, 1]))
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
    pool, grades, as_j = t.supervised_pool(np.array([0]))
    assert 5 in pool and len(pool) <= 5 and as_j.sum() == 1


def test_listwise_mask_hides_each_anchor_from_itself_wherever_it_appears():
    # anchors: corpus rows 3 and 7, and query anchor 12 (ids >= 10 are queries)
    anchors = torch.tensor([3, 7, 12])
    pool_rows = torch.tensor([7, 1, 3, 3, 5])  # neighbours/random rows; row 3 twice, row 7 once
    mask = listwise_pool_mask(anchors, pool_rows, n_corpus_anchors=10)
    assert mask.shape == (3, 8)
    assert not mask[0, 0] and not mask[0, 5] and not mask[0, 6] and mask[0, 3]  # row 3: itself and 2 copies
    assert not mask[1, 1] and not mask[1, 3] and mask[1, 5]  # row 7: itself and its copy
    assert not mask[2, 2] and mask[2].sum() == 7  # a query anchor only hides its own position


def test_listwise_mask_can_keep_query_anchors_out_of_every_list():
    anchors = torch.tensor([3, 12, 13])  # corpus row 3; query anchors 12 and 13 (ids >= 10)
    pool_rows = torch.tensor([7, 3])
    mask = listwise_pool_mask(anchors, pool_rows, n_corpus_anchors=10, queries_as_candidates=False)
    assert mask[:, 1:3].sum() == 0  # no anchor ranks a query
    assert mask[0].tolist() == [False, False, False, True, False]  # row 3 hides itself and its copy
    assert mask[1].tolist() == [True, False, False, True, True]  # a query anchor ranks documents only
    assert torch.equal(listwise_pool_mask(anchors, pool_rows, 10),
                       listwise_pool_mask(anchors, pool_rows, 10, queries_as_candidates=True))


def test_auto_query_candidates_rank_documents_only_in_unsupervised_fits():
    corpus = np.eye(12, 8, dtype=np.float32) + 0.1
    anchors = np.concatenate([corpus, np.ones((4, 8), np.float32)])  # 12 corpus rows, then 4 query anchors
    nb_idx = np.tile(np.arange(3), (16, 1))

    def batch_mask(qc, *, positives=None):
        data = data_for(corpus, anchors=anchors, n_corpus_anchors=12, nb_idx=nb_idx,
                        queries=None if positives is None else np.ones((1, 8), np.float32), positives=positives)
        t = Trainer(AdaptorNet(8, 8), (4, 8), config(queries_as_candidates=qc), data)
        b = t.unsupervised_batch(torch.arange(16), stage_weights(t.config, 1))
        qc = b.config.queries_as_candidates  # what the listwise term reads
        return qc, listwise_pool_mask(b.anchor_ids, b.pool_rows, b.n_corpus_anchors, queries_as_candidates=qc)

    assert config().queries_as_candidates == "auto"  # the default
    resolved, mask = batch_mask("auto")
    assert resolved is False and mask[:, 12:16].sum() == 0  # no list holds a query anchor
    resolved, mask = batch_mask("auto", positives=[[(0, 1.0)]])
    assert resolved is True and mask[:, 12:16].sum() > 0  # a supervised fit keeps them
    assert batch_mask(True)[0] is True and batch_mask(False, positives=[[(0, 1.0)]])[0] is False


def test_stage_two_listwise_target_can_be_the_adapted_vectors_own_ranking():
    rng = np.random.default_rng(0)
    corpus = rng.standard_normal((30, 8)).astype(np.float32)
    corpus /= np.linalg.norm(corpus, axis=1, keepdims=True)
    nb_idx = np.tile(np.arange(3), (30, 1))
    for target in ("original", "adapted"):
        torch.manual_seed(0)
        net = AdaptorNet(8, 8)
        with torch.no_grad():  # a trained-looking residual, so adapted and original cosines differ
            net.layers[-1].weight.normal_(0, 0.5)
        t = Trainer(net, (4, 8), config(supervised_listwise_target=target), data_for(corpus, nb_idx=nb_idx))
        ids = torch.arange(6)
        stage1 = t.unsupervised_batch(ids, stage_weights(t.config, 1))
        stage2 = t.unsupervised_batch(ids, stage_weights(t.config, 2), stage=2)
        z = torch.nn.functional.normalize(torch.from_numpy(corpus), dim=-1)
        rows = torch.cat([ids, stage1.pool_rows])
        original = z[ids] @ z[rows].T
        torch.testing.assert_close(stage1.target, original)  # stage 1: always the original vectors
        a = torch.nn.functional.normalize(stage2.adapted.detach(), dim=-1)
        adapted = a[:6] @ a.T
        assert not stage2.target.requires_grad
        if target == "original":
            torch.testing.assert_close(stage2.target, z[ids] @ z[torch.cat([ids, stage2.pool_rows])].T)
        else:
            torch.testing.assert_close(stage2.target, adapted)
            assert (stage2.target - z[ids] @ z[torch.cat([ids, stage2.pool_rows])].T).abs().max() > 0.05


@pytest.mark.parametrize("setting, min_validation_queries, expected", [
    ("auto", 20, "original"),  # 40 labelled queries hold out 4, fewer than 20: no holdout
    ("auto", 4, "adapted"),    # a holdout exists: the adapted target, checked by it
    ("original", 4, "original"),
    ("adapted", 20, "adapted"),
])
def test_stage_two_listwise_target_auto_is_adapted_only_with_held_out_queries(setting, min_validation_queries,
                                                                              expected):
    rng = np.random.default_rng(2)
    corpus = rng.standard_normal((30, 8)).astype(np.float32)
    positives = [[(i % 30, 1.0)] for i in range(40)]
    data = data_for(corpus, queries=rng.standard_normal((40, 8)).astype(np.float32), positives=positives,
                    nb_idx=np.tile(np.arange(3), (30, 1)))
    cfg = config(supervised_listwise_target=setting, min_validation_queries=min_validation_queries)
    t = Trainer(AdaptorNet(8, 8), (4, 8), cfg, data)
    assert t.stage_two_listwise_target() == expected
    ids = torch.arange(6)
    assert t.unsupervised_batch(ids, stage_weights(cfg, 2), stage=2).adapted_target == (expected == "adapted")
    assert t.unsupervised_batch(ids, stage_weights(cfg, 1)).adapted_target is False  # stage 1: never


def test_rank_dim_weights_inv_sqrt_weights_the_ranking_term_by_dim():
    rng = np.random.default_rng(1)
    corpus = rng.standard_normal((40, 8)).astype(np.float32)
    queries = rng.standard_normal((3, 8)).astype(np.float32)
    positives = [[(0, 1.0)], [(5, 2.0), (6, 1.0)], [(9, 1.0)]]
    rank = next(t for t in LOSS_TERMS if t.name == "rank")
    values = {}
    for scheme in ("uniform", "inv_sqrt"):
        torch.manual_seed(0)
        t = Trainer(AdaptorNet(8, 8), (2, 4, 8), config(rank_dim_weights=scheme, random_negatives=5),
                    data_for(corpus, queries=queries, positives=positives))
        t.rng = np.random.default_rng(0)
        b = t.supervised_batch(np.arange(3))
        values[scheme] = rank.fn(b).item()
        single = [losses.ranking_loss(b.queries, b.docs, b.grades, (m,), scale=b.config.rank_scale,
                                      positive_mask=b.as_positive).item() for m in b.dims]
        w = [1.0] * 3 if scheme == "uniform" else losses.inverse_sqrt_dim_weights(b.dims)
        assert values[scheme] == pytest.approx(float(np.dot(w, single)) / 3, rel=1e-5)
    assert config().rank_dim_weights == "uniform"  # the default
    assert values["uniform"] != pytest.approx(values["inv_sqrt"], rel=1e-3)


def test_anchor_sampler_keeps_the_query_share():
    corpus = np.ones((100, 8), np.float32)
    t = Trainer(AdaptorNet(8, 8), (4, 8), config(), data_for(corpus, n_corpus_anchors=90))
    ids = np.arange(100)  # 90 corpus anchors, 10 queries: a 10 % natural share
    draws = torch.cat([t._anchor_sampler(ids, 40, 0.25)() for _ in range(20)])
    assert (draws >= 90).sum().item() == 20 * 10  # exactly a quarter of every batch
    # below the natural share: uniform draws
    draws = torch.cat([t._anchor_sampler(ids, 40, 0.05)() for _ in range(50)])
    assert 0.05 < (draws >= 90).float().mean().item() < 0.2


def test_ema_weights_average_and_swap_back():
    net = AdaptorNet(4, 4)
    ema = EMAWeights(net, decay=0.5)
    start = net.layers[0].weight.detach().clone()
    with torch.no_grad():
        net.layers[0].weight.add_(1.0)
    ema.update()
    raw = net.layers[0].weight.detach().clone()
    with ema.swapped_in():
        assert torch.allclose(net.layers[0].weight, start + 0.5)
    assert torch.equal(net.layers[0].weight, raw)
    ema.copy_to_model()
    assert torch.allclose(net.layers[0].weight, start + 0.5)


def test_adapted_negatives_are_the_top_docs_by_mean_prefix_cosine():
    rng = np.random.default_rng(0)
    corpus = rng.standard_normal((40, 8)).astype(np.float32)
    queries = rng.standard_normal((5, 8)).astype(np.float32)
    data = data_for(corpus, queries=queries, positives=[[] for _ in queries])
    t = Trainer(AdaptorNet(8, 8), (2, 4, 8), config(), data)  # untrained: identity map
    got = t.mine_adapted_negatives(3, chunk=2)

    def unit(x):
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    mean_cos = np.mean([unit(queries[:, :m]) @ unit(corpus[:, :m]).T for m in (2, 4, 8)], axis=0)
    expected = np.argsort(-mean_cos, axis=1)[:, :3]
    assert np.array_equal(np.sort(got, 1), np.sort(expected, 1))


def test_remining_adapted_negatives_does_not_freeze_the_learned_rotation():
    # Re-mining runs a no-grad pass; inside the step's parametrisation cache it would leave the
    # rotation cached without its graph. Mining before every step must still let the rotation learn.
    rng = np.random.default_rng(0)
    corpus = rng.standard_normal((60, 8)).astype(np.float32)
    corpus /= np.linalg.norm(corpus, axis=1, keepdims=True)
    queries = corpus[:12] + 0.3 * rng.standard_normal((12, 8)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    net = AdaptorNet(8, 8, learn_rotation=True)
    start = net.rot.weight.detach().clone()
    cfg = config(topk_weight=0, alpha=0, supervised_beta=0, listwise_weight=0, gamma=1, dynamic_negatives=4,
                 eval_every=1, validation_fraction=0.0, batch_size=8, supervised_steps=3)
    t = Trainer(net, (2, 8), cfg, data_for(corpus, queries=queries, positives=[[(i, 1.0)] for i in range(12)]))
    t.fit_supervised()
    assert t._dynamic_hard is not None and t._dynamic_hard.shape == (12, 4)
    assert not torch.allclose(net.rot.weight, start)


def test_listwise_negatives_widen_the_pool():
    rng = np.random.default_rng(1)
    corpus = rng.standard_normal((30, 8)).astype(np.float32)
    corpus /= np.linalg.norm(corpus, axis=1, keepdims=True)
    nb_idx = np.stack([(np.arange(30) + 1) % 30, (np.arange(30) + 2) % 30], 1)
    nb_sims = np.einsum("nd,nkd->nk", corpus, corpus[nb_idx]).astype(np.float32)
    values = []
    for extra in (0, 20):
        torch.manual_seed(0)  # the same network both times: only the pool differs
        net = AdaptorNet(8, 8)
        with torch.no_grad():
            net.layers[-1].weight.normal_(0, 0.3)  # a non-identity map, so prefix rankings differ
        cfg = config(topk_weight=0, alpha=0, beta=0, listwise_weight=1, listwise_negatives=extra)
        t = Trainer(net, (2, 8), cfg, data_for(corpus, nb_idx=nb_idx, nb_sims=nb_sims))
        weights = stage_weights(cfg, 1)
        loss, parts = weighted_sum(LOSS_TERMS[:4], weights, t.unsupervised_batch(torch.arange(4), weights))
        loss.backward()
        values.append(parts["listwise"].item())
    assert values[0] != values[1] and all(np.isfinite(values))


def _labelled_problem(n_queries=30, seed=0):
    rng = np.random.default_rng(seed)
    corpus = rng.standard_normal((80, 8)).astype(np.float32)
    corpus /= np.linalg.norm(corpus, axis=1, keepdims=True)
    queries = corpus[:n_queries] + 0.5 * rng.standard_normal((n_queries, 8)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    return data_for(corpus, queries=queries, positives=[[(i, 1.0)] for i in range(n_queries)])


def _params(net):
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def test_supervised_steps_per_query_caps_stage_two():
    cfg = config(supervised_steps=50, supervised_steps_per_query=0.5, validation_fraction=0.0, batch_size=8,
                 dynamic_negatives=0)
    state = Trainer(AdaptorNet(8, 8), (2, 8), cfg, _labelled_problem(12)).fit_supervised()
    assert state.steps_run == 6  # ceil(0.5 x 12 training queries), below supervised_steps
    cfg = cfg.replace(supervised_steps_per_query=10.0)
    assert Trainer(AdaptorNet(8, 8), (2, 8), cfg, _labelled_problem(12)).fit_supervised().steps_run == 50


def test_supervised_shrink_interpolates_between_the_stage_one_and_stage_two_weights():
    results = {}
    for shrink in (0.0, 0.5, 1.0):
        torch.manual_seed(0)
        net = AdaptorNet(8, 8, learn_rotation=True)
        start = _params(net)
        cfg = config(supervised_steps=20, supervised_shrink=shrink, validation_fraction=0.0, batch_size=8,
                     dynamic_negatives=0, seed=0)
        state = Trainer(net, (2, 8), cfg, _labelled_problem(12)).fit_supervised()
        assert state.shrink == shrink
        results[shrink] = _params(net)
    trained = results[1.0]
    assert any(not torch.equal(start[k], trained[k]) for k in start)
    for k in start:  # the same seed trains the same theta2; the kept weights are on the line to it
        assert torch.equal(results[0.0][k], start[k])
        assert torch.allclose(results[0.5][k], 0.5 * (start[k] + trained[k]), atol=1e-6)


def test_interpolate_weights_returns_its_ends_exactly():
    torch.manual_seed(0)
    start = {"w": torch.randn(50, 50), "steps": torch.tensor(3)}
    end = {"w": 100 * torch.randn(50, 50), "steps": torch.tensor(7)}
    assert not torch.equal(start["w"] + 1.0 * (end["w"] - start["w"]), end["w"])  # what the formula alone gives
    one, zero = interpolate_weights(start, end, 1.0), interpolate_weights(start, end, 0.0)
    assert torch.equal(one["w"], end["w"]) and torch.equal(zero["w"], start["w"])
    assert one["w"] is not end["w"] and zero["w"] is not start["w"]  # copies: loading them cannot alias
    assert int(zero["steps"]) == int(one["steps"]) == 7  # non-float entries always come from ``end``
    half = interpolate_weights(start, end, 0.5)
    assert torch.allclose(half["w"], (start["w"] + end["w"]) / 2)


def test_validated_shrink_keeps_the_grid_value_with_the_best_held_out_score():
    torch.manual_seed(0)
    net = AdaptorNet(8, 8)
    cfg = config(supervised_steps=60, supervised_shrink="validated", validation_fraction=0.3, batch_size=8,
                 dynamic_negatives=0, eval_every=10, lr=1e-2, supervised_beta=0, listwise_weight=0,
                 min_validation_queries=1)
    t = Trainer(net, (2, 8), cfg, _labelled_problem(30))
    seen = []
    original = t.query_ndcg
    t.query_ndcg = lambda q, k=10: seen.append(original(q, k)) or seen[-1]
    state = t.fit_supervised()
    grid_scores = seen[-len(Trainer.SHRINK_GRID):]  # the last validations are the grid's, in order
    best = max(zip(grid_scores, Trainer.SHRINK_GRID))[1]
    assert state.shrink == best and state.shrink in Trainer.SHRINK_GRID
    assert len(set(grid_scores)) > 1  # the grid was really scored (the points differ)


def test_auto_shrink_halves_stage_two_unless_held_out_queries_show_the_full_stage_is_better():
    def fit(shrink, min_val, z=None):
        torch.manual_seed(0)
        net = AdaptorNet(8, 8, learn_rotation=True)
        start = _params(net)
        cfg = config(supervised_steps=20, supervised_shrink=shrink, validation_fraction=0.2, batch_size=8,
                     min_validation_queries=min_val, dynamic_negatives=0, eval_every=5, lr=1e-2, seed=0)
        trainer = Trainer(net, (2, 8), cfg, _labelled_problem(20))
        if z is not None:
            trainer.EVIDENCE_Z = z
        state = trainer.fit_supervised()
        return state, start, _params(net), trainer

    assert config().supervised_shrink == "auto"  # the default
    # 4 of 20 would be held out: below 10 none is, and "auto" keeps the half-way weights
    plain, start, trained, _ = fit(1.0, 10)
    state, _, kept, _ = fit("auto", 10)
    assert state.shrink == 0.5 and state.shrink_evidence is None
    assert any(not torch.equal(start[k], trained[k]) for k in start)
    for k in start:
        assert torch.allclose(kept[k], start[k] + 0.5 * (trained[k] - start[k]), atol=1e-6)

    # With 4 held out: the evidence is the paired gain per held-out query of the (early-stopped)
    # stage 2 over the half-way weights; the full stage is kept only beyond EVIDENCE_Z standard errors.
    _, start, trained, _ = fit(1.0, 1)
    state, _, kept, trainer = fit("auto", 1)
    val_q = trainer.labelled_split()[1]
    per_query = []
    for weights in (trained, {k: start[k] + 0.5 * (trained[k] - start[k]) for k in start}):
        trainer.net.load_state_dict({**trainer.net.state_dict(), **weights})
        trainer.query_ndcg(val_q)
        per_query.append(trainer.last_val_by_query)
    gain = per_query[0] - per_query[1]
    assert len(gain) == 4 and state.shrink_evidence["held_out_queries"] == 4
    assert np.isclose(state.shrink_evidence["gain"], gain.mean(), atol=1e-6)
    assert np.isclose(state.shrink_evidence["standard_error"], gain.std(ddof=1) / 2, atol=1e-6)
    assert state.shrink == (1.0 if gain.mean() > Trainer.EVIDENCE_Z * gain.std(ddof=1) / 2 else 0.5)
    # both outcomes: the trained weights exactly, or the half-way ones
    state, _, kept, _ = fit("auto", 1, z=-math.inf)
    assert state.shrink == 1.0 and all(torch.equal(kept[k], trained[k]) for k in trained)
    state, _, kept, _ = fit("auto", 1, z=math.inf)
    assert state.shrink == 0.5
    for k in start:
        assert torch.allclose(kept[k], start[k] + 0.5 * (trained[k] - start[k]), atol=1e-6)


def _gamma_fit(gamma, *, min_validation_queries=1):
    torch.manual_seed(0)
    net = AdaptorNet(8, 8, learn_rotation=True)
    cfg = config(supervised_steps=12, gamma=gamma, validation_fraction=0.2, batch_size=8, eval_every=4,
                 min_validation_queries=min_validation_queries, dynamic_negatives=2, lr=1e-2, seed=0)
    trainer = Trainer(net, (2, 8), cfg, _labelled_problem(20))
    state = trainer.fit_supervised()
    return state, _params(net), trainer


def test_validated_gamma_keeps_the_plain_fit_of_the_weight_better_on_held_out_queries():
    from matryoshka_adaptor.config import GAMMA_CANDIDATES

    plain = {g: _gamma_fit(g) for g in GAMMA_CANDIDATES}
    held_out = {}
    for g, (_, weights, trainer) in plain.items():
        trainer.net.load_state_dict(weights)
        held_out[g] = trainer.query_ndcg(trainer.labelled_split()[1])
    assert any(not torch.equal(plain[1.0][1][k], plain[2.0][1][k]) for k in plain[1.0][1])
    state, kept, trainer = _gamma_fit("validated")
    best = max(GAMMA_CANDIDATES, key=lambda g: held_out[g])  # max keeps the first of equal scores
    # each candidate ran as the plain fit with its weight: same start, same random streams
    assert state.gamma_choice["val_ndcg@10_by_gamma"] == {str(g): held_out[g] for g in GAMMA_CANDIDATES}
    assert state.gamma_choice["kept"] == best == trainer.config.gamma
    assert state.gamma_choice["held_out_queries"] == 4
    assert all(torch.equal(plain[best][1][k], v) for k, v in kept.items())
    assert state.best_step == plain[best][0].best_step


def test_validated_gamma_without_held_out_queries_is_the_plain_fit_with_the_first_weight():
    _, plain, _ = _gamma_fit(1.0, min_validation_queries=10)
    state, kept, trainer = _gamma_fit("validated", min_validation_queries=10)
    assert state.gamma_choice is None and trainer.config.gamma == 1.0
    assert all(torch.equal(plain[k], v) for k, v in kept.items())


def test_shrink_and_step_cap_are_validated_parameters():
    import pytest

    from matryoshka_adaptor.errors import InputError

    with pytest.raises(InputError, match="supervised_shrink=1.5 is not valid"):
        config(supervised_shrink=1.5)
    with pytest.raises(InputError, match="supervised_steps_per_query=0 is not valid"):
        config(supervised_steps_per_query=0)
    with pytest.raises(InputError, match="supervised_shrink='best' is not valid"):
        config(supervised_shrink="best")
    assert config(supervised_shrink="validated").supervised_shrink == "validated"
    assert config(supervised_shrink="auto").supervised_shrink == "auto"
    assert config(supervised_shrink=1).supervised_shrink == 1.0
    with pytest.raises(InputError, match="gamma='best' is not valid"):
        config(gamma="best")
    assert config(gamma="validated").gamma == "validated" and config(gamma=2).gamma == 2.0


def test_validated_shrink_is_reachable_from_the_estimator():
    # None means "unset" for an estimator parameter, so the validated shrink needs its own value.
    from matryoshka_adaptor import MatryoshkaAdaptor

    assert MatryoshkaAdaptor(supervised_shrink="validated").resolved_settings().supervised_shrink == "validated"


def test_by_default_fewer_than_twenty_held_out_queries_are_not_kept_back():
    # 10 held-out queries (100 labels) chose stage 2's step by noise on NFCorpus and SciFact dev
    corpus = np.eye(250, 8, dtype=np.float32) + 0.1

    def held_out(n_labelled):
        data = data_for(corpus, queries=np.ones((n_labelled, 8), np.float32),
                        positives=[[(i, 1.0)] for i in range(n_labelled)])
        return len(Trainer(AdaptorNet(8, 8), (4, 8), config(), data).labelled_split()[1])

    assert (held_out(100), held_out(190), held_out(200), held_out(250)) == (0, 0, 20, 25)


def _grouped_split(groups, n_labelled=None, **changes):
    n = len(groups)
    corpus = np.eye(max(n, 8), 8, dtype=np.float32) + 0.1
    positives = [[(i, 1.0)] if n_labelled is None or i < n_labelled else [] for i in range(n)]
    data = data_for(corpus, queries=np.ones((n, 8), np.float32), positives=positives)
    data.query_groups = np.asarray(groups)
    return Trainer(AdaptorNet(8, 8), (4, 8), config(**changes), data).labelled_split()


def test_query_groups_hold_out_whole_groups_of_about_the_usual_share():
    groups = np.repeat(np.arange(25), 12)  # 300 queries in 25 topics of 12
    train_q, val_q = _grouped_split(groups, seed=3)
    assert len(val_q) == 36  # the 30 a random split holds out, reached by whole groups (3 x 12)
    assert set(groups[val_q]).isdisjoint(groups[train_q])
    assert sorted(np.concatenate([train_q, val_q]).tolist()) == list(range(300))
    other_seed = _grouped_split(groups, seed=4)[1]
    assert set(groups[other_seed]) != set(groups[val_q])  # the groups held out follow the fit's seed


def test_query_groups_keep_one_group_training_and_respect_the_minimum_and_cap():
    assert len(_grouped_split(np.zeros(300, int))[1]) == 0  # one topic: nothing to hold out
    two = _grouped_split(np.repeat([0, 1], 150), min_validation_queries=20)
    assert len(two[1]) == 150 and len(two[0]) == 150  # one of the two held out, one trains
    assert len(_grouped_split(np.repeat([0, 1], 150), max_validation_queries=100)[1]) == 0  # over the cap
    # a group of unlabelled queries is never held out: only labelled ones are split
    train_q, val_q = _grouped_split(np.repeat(np.arange(25), 12), n_labelled=240)
    assert val_q.max() < 240 and len(np.intersect1d(train_q, np.arange(240, 300))) == 0


def test_too_small_a_holdout_is_not_kept_back_and_stage_two_runs_all_steps():
    seen = []
    for min_val in (1, 5):
        cfg = config(supervised_steps=20, validation_fraction=0.1, min_validation_queries=min_val, batch_size=8,
                     dynamic_negatives=0, eval_every=5, patience=1)
        t = Trainer(AdaptorNet(8, 8), (2, 8), cfg, _labelled_problem(30))
        calls = []
        original = t.query_ndcg
        t.query_ndcg = lambda q, k=10: calls.append(len(q)) or original(q, k)
        state = t.fit_supervised()
        seen.append((calls, state.steps_run))
    assert seen[0][0] and set(seen[0][0]) == {3}  # 10 % of 30 queries held out and validated on
    assert seen[1] == ([], 20)  # 3 < 5: no holdout, no validation, every step run


def _with_query_anchors(data):
    """The same problem with every query also an (unlabelled) anchor after the corpus rows."""
    rng = np.random.default_rng(1)
    anchors = np.concatenate([data.corpus, data.queries])
    nb_idx = rng.integers(0, len(data.corpus), (len(anchors), 3))
    nb_sims = np.sort(rng.random((len(anchors), 3)).astype(np.float32), axis=1)[:, ::-1].copy()
    return data_for(data.corpus, queries=data.queries, positives=data.positives, anchors=anchors,
                    n_corpus_anchors=len(data.corpus), nb_idx=nb_idx, nb_sims=nb_sims)


def _recording_trainer(cfg, data, scripted=()):
    """A trainer that records every anchor id a batch draws and, for the first validations, returns
    the ``scripted`` scores (a number for every held-out query, or one per query) instead of the real
    held-out nDCG."""
    torch.manual_seed(0)
    t = Trainer(AdaptorNet(8, 8), (2, 8), cfg, data)
    drawn, scores = [], list(scripted)
    batch, ndcg = t.unsupervised_batch, t.query_ndcg
    t.unsupervised_batch = lambda ids, w, **kw: drawn.append(ids.numpy().copy()) or batch(ids, w, **kw)

    def scripted_ndcg(q, k=10):
        if not scores:
            return ndcg(q, k)
        t.last_val_by_query = np.broadcast_to(np.asarray(scores.pop(0), dtype=float), (len(q),))
        return float(t.last_val_by_query.mean())

    t.query_ndcg = scripted_ndcg
    return t, drawn


def test_validated_queries_keep_the_clearly_better_stage_one_and_never_use_held_out_queries_as_anchors():
    data = _with_query_anchors(_labelled_problem(60))
    n_corpus = data.n_corpus_anchors
    for scripted, kept in (((0.9, 0.1), "with queries"), ((0.1, 0.9), "corpus only")):
        cfg = config(steps=6, supervised_steps=6, validation_fraction=0.2, min_validation_queries=1, batch_size=16,
                     dynamic_negatives=0, eval_every=3, use_queries="validated", seed=0)
        t, drawn = _recording_trainer(cfg, data, scripted)
        first = t.fit_stage_one()
        stage_one_draws = len(drawn)
        t.fit_supervised()
        val_anchor_ids = set((n_corpus + t.labelled_split()[1]).tolist())
        assert first.query_choice["kept"] == kept
        assert first.query_choice["val_ndcg@10_with_queries"] == pytest.approx(scripted[0])
        assert first.query_choice["gain"] == pytest.approx(scripted[0] - scripted[1])
        # stage 1 ran twice (with and without query anchors), the second run on corpus rows only
        assert stage_one_draws == 12
        assert all((ids < n_corpus).all() for ids in drawn[6:12])
        assert any((ids >= n_corpus).any() for ids in drawn[:6])
        # held-out queries are anchors in neither stage; stage 2 draws queries only if stage 1 kept them
        assert not val_anchor_ids & set(np.concatenate(drawn).tolist())
        assert any((ids >= n_corpus).any() for ids in drawn[12:]) == (kept == "with queries")
    # the kept weights are the chosen run's (the first, with queries), not the last run's
    cfg = config(steps=6, validation_fraction=0.2, min_validation_queries=1, batch_size=16, dynamic_negatives=0,
                 use_queries="validated", seed=0)
    t, _ = _recording_trainer(cfg, data, (0.9, 0.1))
    runs = []
    fit_unsupervised = t.fit_unsupervised
    t.fit_unsupervised = lambda **kw: (fit_unsupervised(**kw), runs.append(_params(t.net)))[0]
    t.fit_stage_one()
    assert len(runs) == 2 and any(not torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert all(torch.equal(runs[0][k], v) for k, v in _params(t.net).items())


def test_supervised_fallback_keeps_held_out_queries_out_of_the_anchors_of_both_stages():
    data = _with_query_anchors(_labelled_problem(60))
    n_corpus = data.n_corpus_anchors
    cfg = config(steps=6, supervised_steps=6, validation_fraction=0.2, min_validation_queries=1, batch_size=16,
                 dynamic_negatives=0, eval_every=3, supervised_fallback="corpus-only", seed=0)
    t, drawn = _recording_trainer(cfg, data)
    assert t.fit_stage_one().query_choice is None  # one stage-1 run, with the (other) query anchors
    t.fit_supervised()
    val_anchor_ids = set((n_corpus + t.labelled_split()[1]).tolist())
    assert len(val_anchor_ids) == 12 and not val_anchor_ids & set(np.concatenate(drawn).tolist())
    assert any((ids >= n_corpus).any() for ids in drawn[:6])
    # without the option every query is an anchor (nothing is chosen on held-out queries afterwards)
    t, drawn = _recording_trainer(cfg.replace(supervised_fallback="none"), data)
    t.fit_stage_one()
    assert not t.holds_out_query_anchors() and len(set(np.concatenate(drawn).tolist()) - set(range(n_corpus))) > 12


def test_validated_queries_need_a_gain_beyond_noise_to_keep_the_query_anchors():
    data = _with_query_anchors(_labelled_problem(60))
    cfg = config(steps=4, validation_fraction=0.2, min_validation_queries=1, batch_size=16, dynamic_negatives=0,
                 use_queries="validated", seed=0)
    noisy = np.tile([0.9, 0.2], 6)  # 12 held-out queries: mean 0.55, a spread of 0.35
    for without, kept in ((0.5, "corpus only"), (0.3, "with queries")):
        # the standard error is 0.105: +0.05 is 0.5 of them (within noise), +0.25 is 2.4
        t, _ = _recording_trainer(cfg, data, (noisy, without))
        choice = t.fit_stage_one().query_choice
        assert choice["held_out_queries"] == 12 and choice["kept"] == kept
        assert choice["standard_error"] == pytest.approx(0.35 * np.sqrt(12 / 11) / np.sqrt(12))
        assert t._corpus_anchors_only == (kept == "corpus only")


def test_validated_queries_run_the_corpus_only_start_at_the_temperature_of_a_fit_without_labels():
    data = _with_query_anchors(_labelled_problem(60))
    cfg = config(steps=3, supervised_steps=3, validation_fraction=0.2, min_validation_queries=1, batch_size=16,
                 dynamic_negatives=0, use_queries="validated", temperature=0.05, seed=0)
    torch.manual_seed(0)
    t = Trainer(AdaptorNet(8, 8), (2, 8), cfg, data, corpus_only_temperature=0.02)
    seen, batch = [], t.unsupervised_batch
    t.unsupervised_batch = lambda ids, w, stage=1, **kw: seen.append((stage, t.stage_temperature(stage))) or batch(
        ids, w, stage=stage, **kw)
    assert t.fit_stage_one().query_choice["corpus_only_temperature"] == 0.02  # recorded with the choice
    t.fit_supervised()
    # 3 steps with query anchors, 3 corpus-only steps, then stage 2 (its unsupervised terms at stage 2)
    assert seen[:6] == [(1, 0.05)] * 3 + [(1, 0.02)] * 3
    assert {temp for _, temp in seen[6:]} == {0.05} and t.stage_temperature(1) == 0.05


def test_validated_queries_without_a_holdout_is_the_plain_fit():
    data = _with_query_anchors(_labelled_problem(12))
    runs = []
    for use in (True, "validated"):
        cfg = config(steps=6, validation_fraction=0.1, batch_size=8, dynamic_negatives=0, use_queries=use, seed=0)
        t, drawn = _recording_trainer(cfg, data)
        state = t.fit_stage_one()
        runs.append((_params(t.net), len(drawn), state.query_choice))
    assert runs[1][1] == runs[0][1] == 6 and runs[1][2] is None  # one stage-1 run, nothing to choose by
    assert all(torch.equal(runs[0][0][k], v) for k, v in runs[1][0].items())


@pytest.mark.parametrize("prerotated", [False, True])
def test_exported_weights_score_as_the_net_that_made_them(prerotated):
    # query_ndcg_of_weights scores another fit's adaptor (supervised_fallback="corpus-only") on this
    # fit's rows, which are multiplied by the fixed rotation beforehand when the net is prerotated.
    data = _labelled_problem(40)
    rotation = torch.linalg.qr(torch.randn(8, 8, generator=torch.Generator().manual_seed(0)))[0]
    if prerotated:
        data = data_for(data.corpus @ rotation.numpy(), queries=data.queries @ rotation.numpy(),
                        positives=data.positives)
    torch.manual_seed(0)
    net = AdaptorNet(8, 8, rotation=rotation, prerotated=prerotated)
    cfg = config(supervised_steps=20, validation_fraction=0.25, min_validation_queries=1, batch_size=8,
                 dynamic_negatives=0, seed=0)
    t = Trainer(net, (2, 4, 8), cfg, data)
    t.fit_supervised()
    val_q = t.labelled_split()[1]
    own = t.query_ndcg(val_q)
    by_query = t.last_val_by_query.copy()
    weights = {k: v.numpy() for k, v in net.export_weights().items()}
    assert any(np.abs(v).sum() > 0 for k, v in weights.items() if k.startswith("layers.1"))  # trained
    assert t.query_ndcg_of_weights(weights, val_q) == pytest.approx(own, abs=1e-6)
    np.testing.assert_allclose(t.last_val_by_query, by_query, atol=1e-6)
    assert t.net is net  # the fit's own net is back
    # and another adaptor scores differently: the untrained start (its rotation alone)
    start = {k: v.numpy() for k, v in AdaptorNet(8, 8, rotation=rotation).export_weights().items()}
    assert t.query_ndcg_of_weights(start, val_q) != pytest.approx(own, abs=1e-6)
