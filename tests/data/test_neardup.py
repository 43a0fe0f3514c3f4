import numpy as np
import pandas as pd

from shopee_fastai.data import split as S
from shopee_fastai.data import table as D
from shopee_fastai.data.neardup import clusters, leak_free_split, leak_report, leaked, similar_pairs
from shopee_fastai.inference.embed import embeddings_for


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def test_chunked_pairs_equal_brute_force():
    emb = unit(np.random.default_rng(0).normal(size=(50, 8)))
    sim = emb @ emb.T
    brute = {(i, j) for i, j in zip(*np.nonzero(sim >= 0.5)) if i < j}
    i, j = similar_pairs(emb, 0.5, chunk=7)
    assert set(zip(i.tolist(), j.tolist())) == brute and brute


def frame(labels, images=None, phash=None) -> pd.DataFrame:
    n = len(labels)
    return pd.DataFrame({D.ID: [f"p{k}" for k in range(n)], D.IMAGE: images or [f"{k}.jpg" for k in range(n)],
                         D.PHASH: phash or [f"{k:04x}" for k in range(n)], D.LABEL: labels})


def test_clusters_join_same_file_same_phash_and_embedding_twins_within_a_group():
    df = frame(["a", "a", "a", "b", "b", "b"], images=["x.jpg", "x.jpg", "2.jpg", "3.jpg", "4.jpg", "5.jpg"],
               phash=["0", "1", "2", "3", "3", "5"])
    emb = unit(np.array([[1, 0], [0, 1], [1, 0.01], [0, 1], [1, 0], [1, 0.02]], dtype=float))
    ids = clusters(df, emb, threshold=0.99)
    assert ids[0] == ids[1] == ids[2]  # same file (0,1), embedding twin (0,2)
    assert ids[3] == ids[4] == ids[5]  # same phash (3,4), embedding twin (4,5)
    assert ids[0] != ids[3]  # 0 and 4 look alike but are in different groups: not twins
    assert len(set(clusters(df)) ) == 4  # without embeddings only file and phash links


def make_twins(groups: int = 4, clusters_per_group: int = 10, twins: int = 3) -> tuple[pd.DataFrame, np.ndarray]:
    labels = [f"g{g}" for g in range(groups) for _ in range(clusters_per_group * twins)]
    ids = np.repeat(np.arange(groups * clusters_per_group), twins)
    return frame(labels), ids


def test_leak_free_split_keeps_clusters_whole_and_stays_stratified():
    df, ids = make_twins()
    split = S.make_split(df, seed=0, clusters=ids)
    where = df[D.ID].map(split)
    assert (where.groupby(ids).nunique() == 1).all()
    assert leaked(split, df, ids) == 0
    per_group = where.groupby(df[D.LABEL]).value_counts().unstack()
    assert (per_group[S.TEST] == 3).all() and (per_group[S.VALID] == 3).all() and (per_group[S.TRAIN] == 24).all()
    plain = S.make_split(df, seed=0)
    assert leaked(plain, df, ids) > 5  # what the leak-free split prevents
    report = leak_report(df, ids, seed=0)
    assert report.clusters == 40 and report.largest == 3 and report.random_split_test_leaks == leaked(plain, df, ids)


def test_leak_free_split_takes_its_embeddings_from_the_caller():
    """The data layer clusters the embeddings it is handed: twins by embedding alone stay in one split."""
    df, ids = make_twins(groups=3, clusters_per_group=10, twins=2)
    emb = unit(np.eye(64)[ids] + 0.01 * np.random.default_rng(0).normal(size=(len(ids), 64)))
    found = leak_free_split(df, emb, threshold=0.9, seed=0)
    assert (pd.Series(found.clusters).groupby(ids).nunique() == 1).all() and len(set(found.clusters)) == 30
    assert found.test_leaks == 0 and found.leaks.clusters == 30
    assert found.split.equals(S.make_split(df, 0, clusters=found.clusters))
    assert found.line().startswith("leak-free split: train ") and found.line().endswith("training: 0")


def test_near_duplicates_of_held_out_photos_join_the_test_split():
    df, ids = make_twins(groups=2, clusters_per_group=4)
    df.loc[0, D.ID] = "val_0"
    split = S.make_split(df, seed=0, holdout="^val_", clusters=ids)
    assert set(split[df[D.ID][ids == ids[0]]]) == {S.TEST}
    assert leaked(split, df, ids) == 0


def test_embeddings_are_cached_by_file_identity(synthetic):
    paths = sorted(str(p) for p in (synthetic / "train_images").glob("*.jpg"))[:4]
    first = embeddings_for(paths, "tf_efficientnet_lite0", progress=False)
    again = embeddings_for(paths, "tf_efficientnet_lite0", progress=False)
    assert np.array_equal(first, again) and first.shape == (4, 1280)
