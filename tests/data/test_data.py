import numpy as np
import pandas as pd
import pytest

from shopee_fastai.data import loaders as L
from shopee_fastai.data import split as S
from shopee_fastai.data import table as D
from shopee_fastai.errors import ShopeeError

from ..conftest import write_kaggle


def rows(spec: dict[str, int], dup_images: int = 0) -> list[dict]:
    """`spec` label -> count; the first `dup_images` rows of each group reuse one image file."""
    out = []
    for label, n in spec.items():
        for i in range(n):
            image = f"{label}_shared.jpg" if i < dup_images else f"{label}_{i}.jpg"
            out.append({"posting_id": f"{label}_{i}", "image": image, "image_phash": f"{label}{i:x}", "title": "t", "label_group": label})
    return out


def table(spec: dict[str, int], **kw) -> pd.DataFrame:
    return pd.DataFrame(rows(spec, **kw))


def test_read_table_adds_paths_and_keeps_labels_as_text(tmp_path):
    write_kaggle(tmp_path, rows({"0249": 2}))
    df = D.read_table(tmp_path)
    assert df[D.LABEL].tolist() == ["0249", "0249"]  # Shopee's ids are numbers; leading zeros and size survive
    assert df[D.PATH].iloc[0] == str(tmp_path / "train_images" / "0249_0.jpg")


@pytest.mark.parametrize("make, message", [
    (lambda p: None, "no such data folder"),
    (lambda p: p.mkdir(), "train.csv: file not found"),
    (lambda p: (p.mkdir(), (p / "train.csv").write_text("")), "not a readable CSV"),
    (lambda p: (p.mkdir(), (p / "train.csv").write_text("posting_id,image,label_group\n")), "no rows"),
    (lambda p: (p.mkdir(), (p / "train.csv").write_text("posting_id,image\na,a.jpg\n")), "missing column.*label_group"),
    (lambda p: (p.mkdir(), (p / "train.csv").write_text("posting_id,image,label_group\na,a.jpg,1\nb,b.jpg,\n")),
     "row 3 has an empty label_group"),
    (lambda p: (p.mkdir(), (p / "train.csv").write_text("posting_id,image,label_group\na,a.jpg,1\na,b.jpg,2\n")),
     "posting_id 'a' is repeated \\(rows 2 and 3\\)"),
])
def test_read_table_structural_errors_name_the_problem(tmp_path, make, message):
    data = tmp_path / "data"
    make(data)
    with pytest.raises(ShopeeError, match=message):
        D.read_table(data)


def test_clean_keeps_largest_groups_then_drops_reused_images():
    df = table({"a": 5, "b": 4, "c": 3, "d": 3}, dup_images=2)
    out = D.clean(df, top_groups=2)
    assert set(out[D.LABEL]) == {"a", "b"}
    assert out[D.IMAGE].is_unique
    assert len(out) == (5 - 1) + (4 - 1)
    assert set(D.clean(df, top_groups=3)[D.LABEL]) == {"a", "b", "c"}  # tie between c and d broken by name
    assert D.clean(df, top_groups=0)[D.LABEL].nunique() == 4


def test_split_is_stratified_disjoint_sized_and_seeded():
    df = table({"a": 40, "b": 20, "c": 10})
    split = S.make_split(df, seed=1)
    assert split.index.is_unique and set(split.index) == set(df[D.ID])
    counts = df.assign(s=df[D.ID].map(split)).groupby([D.LABEL, "s"]).size().unstack()
    assert counts.loc["a"].tolist() == [4, 32, 4]  # columns sort as test, train, valid
    assert counts.loc["b"].tolist() == [2, 16, 2]
    assert counts.loc["c"].tolist() == [1, 8, 1]
    assert split.equals(S.make_split(df, seed=1))
    assert not split.equals(S.make_split(df, seed=2))


def test_member_folds_are_the_valid_split_then_disjoint_training_folds_of_its_size_clusters_whole():
    df = table({"a": 40, "b": 24})
    clusters = np.arange(len(df)) // 2  # pairs of near-duplicates
    split = S.make_split(df, seed=1, clusters=clusters)
    folds = S.member_folds(df, split, 3, seed=1, clusters=clusters)
    where = df[D.ID].map(split)
    assert set(folds.index) == set(df.loc[where.isin((S.TRAIN, S.VALID)), D.ID])  # no test row has a fold
    assert (folds[folds == 0].index.sort_values() == split[split == S.VALID].index.sort_values()).all()
    for k in (1, 2):
        ids = folds[folds == k].index
        assert (split[ids] == S.TRAIN).all() and abs(len(ids) - (split == S.VALID).sum()) <= 2
        assert set(df.loc[df[D.ID].isin(ids), D.LABEL]) == {"a", "b"}  # stratified
    fold = df[D.ID].map(folds).fillna(-2).to_numpy()
    assert all(len(set(fold[clusters == c])) == 1 for c in np.unique(clusters))  # a pair never straddles two folds
    assert (fold == -1).sum() > 0  # rows every member trains on
    assert folds.equals(S.member_folds(df, split, 3, seed=1, clusters=clusters))


def test_split_of_tiny_groups_keeps_training_rows():
    split = S.make_split(table({"a": 1, "b": 2, "c": 3}), seed=0)
    assert split["a_0"] == S.TRAIN
    assert (split[["c_0", "c_1", "c_2"]].sort_values().tolist()) == [S.TEST, S.TRAIN, S.VALID]


def test_holdout_regex_makes_the_test_split():
    df = table({"a": 10, "b": 10})
    df.loc[[0, 1, 10], D.ID] = ["val_x", "val_y", "val_z"]
    df.loc[2, D.IMAGE] = df.loc[0, D.IMAGE]  # the same file as a held-out photo
    split = S.make_split(df, seed=0, holdout="^val_")
    assert sorted(split[split == S.TEST].index) == ["val_x", "val_y", "val_z"]
    assert split[df.loc[2, D.ID]] == S.TWIN and (split == S.TWIN).sum() == 1
    assert (split == S.VALID).sum() == 2
    with pytest.raises(ShopeeError, match="matches no posting_id"):
        S.make_split(df, holdout="^nothing")
    with pytest.raises(ShopeeError, match="not a valid regular expression"):
        S.make_split(df, holdout="(")


def test_calibration_photos_are_a_seeded_shuffle_of_the_table():
    df = pd.DataFrame({D.PATH: [f"{k}.jpg" for k in range(50)]})
    photos = D.calibration_photos(df, seed=3)
    assert sorted(photos) == sorted(df[D.PATH]) and photos != list(df[D.PATH])
    assert photos == D.calibration_photos(df, seed=3) != D.calibration_photos(df, seed=4)


def test_split_round_trips_through_its_file(tmp_path):
    split = S.make_split(table({"a": 10, "b": 10}), seed=3)
    S.write_split(split, tmp_path / "m.split.csv")
    assert S.read_split(tmp_path / "m.split.csv").equals(split)


def test_unreadable_images_are_skipped_and_reported(synthetic, tmp_path):
    df = D.read_table(synthetic)
    df.loc[0, D.PATH] = str(tmp_path / "missing.jpg")
    (tmp_path / "empty.jpg").write_bytes(b"")
    df.loc[1, D.PATH] = str(tmp_path / "empty.jpg")
    report = tmp_path / "skipped.csv"
    with pytest.warns(UserWarning, match="skipped 2 unreadable"):
        kept, skipped = D.drop_unreadable(df, report)
    assert len(kept) == len(df) - 2 and len(skipped) == 2
    assert set(pd.read_csv(report)[D.ID]) == set(df[D.ID][:2])


def test_dataloaders_normalise_with_given_stats(synthetic):
    df = D.read_table(synthetic).assign(split=lambda d: [S.VALID if i % 4 == 0 else S.TRAIN for i in range(len(d))])
    dls = L.make_dataloaders(df, ((0.5,) * 3, (0.5,) * 3), L.LoaderConfig(size=16, bs=4, aug="none", workers=0))
    x, y = dls.one_batch()
    assert tuple(x.shape) == (4, 3, 16, 16)
    assert x.min() >= -1.0 - 1e-6 and x.max() <= 1.0 + 1e-6 and x.min() < -0.2  # (v - 0.5) / 0.5 of [0, 1] pixels
    assert len(dls.valid_ds) == 9


@pytest.mark.parametrize("aug, colour", [("fastai", False), ("strong", True)])
def test_augmentations_change_training_batches_only(aug, colour):
    import torch
    from fastai.vision.augment import Hue, Saturation
    from fastai.vision.core import TensorImage
    from fasttransform import Pipeline

    tfms = L.batch_augmentations(aug)
    assert any(isinstance(t, (Hue, Saturation)) for t in tfms) == colour
    torch.manual_seed(0)
    x = TensorImage(torch.rand(16, 3, 32, 32))
    assert not torch.allclose(Pipeline(tfms, split_idx=0)(x.clone()), x)
    assert torch.allclose(Pipeline(tfms, split_idx=1)(x.clone()), x, atol=1e-5)  # lighting's logit round trip
