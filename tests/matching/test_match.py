import numpy as np
import pandas as pd
import pytest

from shopee_fastai import matching as M
from shopee_fastai.config import SHOPEE_SIZES
from shopee_fastai.data import table as D
from shopee_fastai.errors import ShopeeError


def test_f1_against_a_hand_computed_case():
    truth = [{0, 1}, {0, 1}, {2}]
    predicted = [{0, 1}, {1, 2}, {2, 0}]
    # row 0: F1 1; row 1: |P∩T|=1, 2*1/(2+2)=0.5; row 2: 2*1/(2+1)=2/3
    s = M.score(predicted, truth)
    assert s.f1 == pytest.approx((1 + 0.5 + 2 / 3) / 3, abs=1e-4)
    assert s.precision == pytest.approx((1 + 0.5 + 0.5) / 3, abs=1e-4)
    assert s.recall == pytest.approx((1 + 0.5 + 1) / 3, abs=1e-4)


def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("backend", ["numpy", "faiss"])
def test_knn_backends_equal_brute_force(backend):
    pytest.importorskip("faiss") if backend == "faiss" else None
    emb = unit(np.random.default_rng(0).normal(size=(300, 16)))
    sims, idx = M.knn(emb, k=10, chunk=37, backend=backend)
    full = emb @ emb.T
    expected = np.argsort(-full, axis=1, kind="stable")[:, :10]
    assert np.array_equal(np.sort(idx, 1), np.sort(expected, 1))
    assert np.allclose(sims, np.take_along_axis(full, idx, 1), atol=1e-5)
    assert (idx[:, 0] == np.arange(300)).all()  # each row's nearest is itself


def test_threshold_self_and_min2():
    sims = np.array([[1.0, 0.9, 0.2], [1.0, 0.3, 0.1]], np.float32)
    idx = np.array([[0, 1, 2], [1, 0, 2]])
    assert M.neighbours(sims, idx, 0.5) == [{0, 1}, {1}]
    assert M.neighbours(sims, idx, 0.5, min2=True) == [{0, 1}, {1, 0}]
    assert M.neighbours(sims, idx, 1.5) == [{0}, {1}]  # always at least the posting itself


def test_phash_union_and_titles():
    table = pd.DataFrame({D.PHASH: ["a", "b", "a"], D.TITLE: ["red cup", "blue pen", "red cup large"]})
    assert M.same_value(table[D.PHASH]) == [{0, 2}, {1}, {0, 2}]
    titles = M.title_neighbours(table[D.TITLE], threshold=0.5)
    assert titles[0] == {0, 2} and titles[1] == {1}
    assert M.union([{0}, {1}, {2}], [{0, 2}, {1}, {0, 2}]) == [{0, 2}, {1}, {0, 2}]


def test_tuning_splits_by_label_group_and_scores_the_other_half():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(20), 3)
    centres = rng.normal(size=(20, 32))
    emb = unit(centres[labels] + 0.25 * rng.normal(size=(60, 32)))
    tune_rows, test_rows = M.group_halves(labels, seed=0)
    assert not set(labels[tune_rows]) & set(labels[test_rows])
    assert len(tune_rows) + len(test_rows) == 60
    cal, held_out = M.tune(emb, labels, seed=0)
    assert 0.3 <= cal.settings.threshold <= 0.95 and held_out.f1 > 0.9 and cal.score.f1 > 0.9
    with pytest.raises(ShopeeError, match="at least 2 label groups"):
        M.group_halves([1, 1, 1], seed=0)


def test_match_table_and_submission_file(tmp_path):
    table = pd.DataFrame({D.ID: ["a", "b", "c", "d"], D.PHASH: ["1", "2", "3", "1"], D.LABEL: ["x", "x", "y", "y"]})
    emb = unit(np.array([[1, 0], [0.99, 0.1], [0, 1], [-1, 0.05]], float))
    result = M.match_table(table, emb, M.MatchSettings(threshold=0.9), phash=True)
    assert result.matches == [{0, 1, 3}, {0, 1}, {2}, {3, 0}]
    M.write_submission(tmp_path / "s.csv", table[D.ID], result.matches)
    sub = pd.read_csv(tmp_path / "s.csv")
    assert sub[D.ID].tolist() == ["a", "b", "c", "d"]
    assert all(pid in row.split() for pid, row in zip(sub[D.ID], sub["matches"]))
    assert sub["matches"].iloc[0] == "a b d"
    with pytest.raises(ShopeeError, match="embeddings have 3 rows"):
        M.match_table(table, emb[:3])
    with pytest.raises(ShopeeError, match="no rows to match"):
        M.match_table(table.iloc[:0], emb[:0])


def clustered(n_groups=60, per=5, dim=32, noise=0.3, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_groups), per)
    return unit(rng.normal(size=(n_groups, dim))[labels] + noise * rng.normal(size=(len(labels), dim))), labels


def test_blending_equals_its_definition():
    emb, _ = clustered(n_groups=10, per=4, dim=8)
    got = M.blend_neighbours(emb, threshold=0.5, k=3)
    full = emb @ emb.T
    for i in range(len(emb)):
        top = np.argsort(-full[i], kind="stable")[:3]
        w = np.where(full[i, top] >= 0.5, full[i, top], 0)
        ref = (w[:, None] * emb[top]).sum(0)
        assert np.allclose(got[i], ref / np.linalg.norm(ref), atol=1e-5)
    assert np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)


def test_blending_pulls_a_group_together_and_helps_noisy_matches():
    emb, labels = clustered(noise=0.9, seed=1)
    within = lambda e: np.mean([(e[labels == g] @ e[labels == g].T).mean() for g in range(10)])  # noqa: E731
    assert within(M.blend_neighbours(emb, 0.3)) > within(emb)


def test_hnsw_finds_the_exact_neighbours_on_a_small_set():
    emb, _ = clustered()
    exact = M.knn(emb, 10, index="exact")
    approx = M.knn(emb, 10, index="hnsw")
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact[1], approx[1])])
    assert overlap > 0.99 and (approx[1][:, 0] == np.arange(len(emb))).all()
    assert M.resolve_index(10) == "exact" and M.resolve_index(10**7) == "hnsw"
    with pytest.raises(ShopeeError, match="--index 'fast'"):
        M.resolve_index(10, "fast")


def test_calibration_picks_the_best_settings_on_its_groups():
    emb, labels = clustered(noise=0.6, seed=2)
    cal = M.calibrate(emb, labels)
    truth = M.true_matches(labels)
    for t in M.THRESHOLD_GRID[::4]:
        for m2 in (False, True):
            assert M.score(M.find(emb, M.MatchSettings(t, m2, False)), truth).f1 <= cal.score.f1
    assert M.score(M.find(emb, cal.settings), truth) == cal.score
    fixed = M.calibrate(emb, labels, min2=False, blend=False)
    assert not fixed.settings.min2 and not fixed.settings.blend and fixed.score.f1 <= cal.score.f1


def test_shopee_draws_take_every_group_at_a_marketplace_size():
    labels = [g for g in range(6) for _ in range(40)] + [9, 9]
    draws = M.shopee_draws(labels, seed=1, draws=30)
    assert len(draws) == 30 and all(len(set(d)) == len(d) for d in draws)
    sizes = [pd.Series(labels)[d].value_counts() for d in draws]
    assert all(set(s.index) == set(labels) and (s <= 40).all() for s in sizes)
    assert all(s[9] == 2 for s in sizes)  # capped by what the group has
    assert set(pd.concat(sizes)) <= set(SHOPEE_SIZES) | {40}
    assert np.median(pd.concat([s.drop(9) for s in sizes])) <= 3  # mostly pairs
    assert all((a == b).all() for a, b in zip(draws, M.shopee_draws(labels, seed=1, draws=30)))


def test_calibration_on_draws_scores_the_mean_of_its_draws():
    emb, labels = clustered(noise=0.7, seed=4)
    draws = M.shopee_draws(labels, seed=0, draws=8)
    cal = M.calibrate(emb, labels, min2=False, blend=False, draws=draws)
    def mean_f1(t):
        return np.mean([M.score(M.find(emb[d], M.MatchSettings(t)), M.true_matches(np.asarray(labels)[d])).f1 for d in draws])
    assert cal.score.f1 == pytest.approx(mean_f1(cal.settings.threshold), abs=1e-3)
    assert all(mean_f1(t) <= cal.score.f1 + 1e-3 for t in M.THRESHOLD_GRID[::3])


def test_a_best_threshold_on_an_end_of_the_grid_is_flagged():
    emb, labels = clustered(noise=0.6, seed=2)
    assert not M.calibrate(emb, labels).on_edge
    narrow = M.calibrate(emb, labels, grid=(0.9, 0.95))  # every good threshold lies below this grid
    assert narrow.on_edge and narrow.settings.threshold == 0.9
