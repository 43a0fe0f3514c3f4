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


def test_a_held_out_photos_sequence_stays_in_training_except_its_direct_twins():
    """The test split is the held-out photos alone; a training-side photo is left out only as a direct twin
    (same file, same phash, or an embedding at the twin threshold), never through a chain of look-alikes."""
    df, ids = make_twins(groups=2, clusters_per_group=4, twins=4)  # sequences of 4 photos
    df.loc[0, D.ID] = "val_0"
    df.loc[1, D.PHASH] = df.loc[0, D.PHASH]  # photo 1: the same phash as the held-out photo
    base = np.eye(64)[ids]
    chain = np.zeros((len(ids), 64))
    chain[0, 60], chain[2, 60], chain[2, 61], chain[3, 61] = 1.0, 0.6, 0.6, 1.0  # 0 ~ 2 ~ 3: a chain, not a twin of 0
    chain[4:, 62] = 1.0  # every other photo of the data set: far from photo 0
    emb = unit(base + chain)
    assert (emb[0] @ emb[2]) >= 0.85 and (emb[2] @ emb[3]) >= 0.85 and (emb[0] @ emb[3]) < 0.95
    found = leak_free_split(df, emb, threshold=0.85, seed=0, holdout="^val_")
    split = found.split
    assert list(split[split == S.TEST].index) == ["val_0"]
    assert split[df.loc[1, D.ID]] == S.TWIN  # its phash twin: in no split
    assert set(split[df[D.ID][[2, 3]]]) <= {S.TRAIN, S.VALID}  # its sequence stays on the training side
    assert S.counts(split) == {S.TRAIN: int((split == S.TRAIN).sum()), S.VALID: int((split == S.VALID).sum()),
                               S.TEST: 1, S.TWIN: 1}
    assert "1 training-side photos left out as direct twins" in found.line()
    emb_twin = emb.copy()
    emb_twin[3] = emb[0]  # an embedding twin of the held-out photo
    split = leak_free_split(df, emb_twin, threshold=0.85, seed=0, holdout="^val_").split
    assert split[df.loc[3, D.ID]] == S.TWIN and split[df.loc[2, D.ID]] in (S.TRAIN, S.VALID)


def test_direct_twins_are_direct_links_to_held_out_photos():
    df = frame(["a"] * 5, images=["x.jpg", "x.jpg", "y.jpg", "z.jpg", "w.jpg"], phash=["0", "1", "2", "2", None])
    held = np.array([True, False, False, True, False])
    emb = unit(np.array([[1, 0], [0, 1], [0, 1], [0, 1], [1, 0.01]], dtype=float))
    assert S.direct_twins(df, held).tolist() == [False, True, True, False, False]  # same file; same phash
    assert S.direct_twins(df, held, emb, threshold=0.99).tolist() == [False, True, True, False, True]  # + embedding


def test_hierarchical_linkage_does_not_chain():
    """Single linkage joins a chain of look-alikes into one cluster; complete linkage cuts it."""
    df = frame(["a"] * 4)
    angles = np.radians([0, 25, 50, 75])  # neighbours at cos 25° = 0.906, the ends at cos 75°
    emb = unit(np.stack([np.cos(angles), np.sin(angles)], 1))
    assert len(set(clusters(df, emb, threshold=0.9, linkage="single"))) == 1
    assert len(set(clusters(df, emb, threshold=0.9, linkage="complete"))) == 2
    assert 1 <= len(set(clusters(df, emb, threshold=0.9, linkage="average"))) <= 4


def test_embeddings_are_cached_by_file_identity(synthetic):
    paths = sorted(str(p) for p in (synthetic / "train_images").glob("*.jpg"))[:4]
    first = embeddings_for(paths, "tf_efficientnet_lite0", progress=False)
    again = embeddings_for(paths, "tf_efficientnet_lite0", progress=False)
    assert np.array_equal(first, again) and first.shape == (4, 1280)
