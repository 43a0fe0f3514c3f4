"""`match --catalog DIR --data NEW`: new listings matched against a catalogue's listings, with one line per bad input."""

import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from shopee_fastai import matching as M
from shopee_fastai.cli import app
from shopee_fastai.data.table import SAMPLE_DIR

from ..conftest import write_kaggle

COLUMNS = ["posting_id", "image", "image_phash", "title", "label_group"]


@pytest.fixture(scope="module")
def listings(tmp_path_factory):
    """Two products of the bundled sample as the catalogue; as new listings, a re-encoded copy of a
    catalogue photo (its twin is there) and a photo of the product the catalogue lacks (no twin)."""
    root = tmp_path_factory.mktemp("catalog")
    table = pd.read_csv(SAMPLE_DIR / "train.csv", dtype=str)
    groups = table["label_group"].unique()
    lacking, catalog = groups[-1], table[table["label_group"].isin(groups[:2])]  # two products: seconds to embed
    (root / "cat" / "train_images").mkdir(parents=True)
    for name in catalog["image"]:
        (root / "cat" / "train_images" / name).symlink_to(SAMPLE_DIR / "train_images" / name)
    write_kaggle(root / "cat", catalog.to_dict("records"))
    twin, alone = catalog.iloc[3], table[table["label_group"] == lacking].iloc[0]
    (root / "new" / "train_images").mkdir(parents=True)
    with Image.open(SAMPLE_DIR / "train_images" / twin["image"]) as im:
        im.convert("RGB").save(root / "new" / "train_images" / "twin.jpg", quality=60)
    (root / "new" / "train_images" / "alone.jpg").symlink_to(SAMPLE_DIR / "train_images" / alone["image"])
    new = [{**twin.to_dict(), "posting_id": "new_twin", "image": "twin.jpg"},
           {**alone.to_dict(), "posting_id": "new_alone", "image": "alone.jpg"}]
    write_kaggle(root / "new", new)
    return root, twin["posting_id"]


def run(*args):
    return CliRunner().invoke(app, ["match", *map(str, args)])


def test_a_new_listing_finds_its_twin_and_one_without_finds_nothing(listings, tmp_path):
    root, twin = listings
    out = tmp_path / "m.csv"
    r = run("--data", root / "new", "--catalog", root / "cat", "--threshold", 0.9, "--out", out)
    assert r.exit_code == 0, r.output
    got = pd.read_csv(out, dtype=str, keep_default_na=False).set_index("posting_id")["matches"].to_dict()
    group = pd.read_csv(root / "cat" / "train.csv", dtype=str).set_index("posting_id")["label_group"]
    assert twin in got["new_twin"].split() and {group[m] for m in got["new_twin"].split()} == {group[twin]}
    assert got["new_alone"] == ""  # its product is not in the catalogue
    assert f"2 new listing(s) against {len(group)} in" in r.output and "1 matched one or more" in r.output
    assert "precision 1.0000" in r.output  # both labelled: only the twin's group, nothing for the group the catalogue lacks


def test_min2_and_blending_across_tables():
    rng = np.random.default_rng(0)
    catalog = rng.normal(size=(40, 16)).astype(np.float32)
    catalog /= np.linalg.norm(catalog, axis=1, keepdims=True)
    stranger = rng.normal(size=(1, 16)).astype(np.float32)
    queries = np.concatenate([catalog[[5, 9]], stranger / np.linalg.norm(stranger)])
    table = pd.DataFrame({"posting_id": [f"c{i}" for i in range(40)], "image": [f"c{i}.jpg" for i in range(40)]})
    found = lambda **s: M.Catalogue(table, catalog, M.MatchSettings(threshold=0.95, **s)).match(queries).matches  # noqa: E731
    assert found() == [{5}, {9}, set()]
    assert found(blend=True) == [{5}, {9}, set()]
    nearest = int(np.argmax(catalog @ queries[2]))
    assert found(min2=True)[2] == {nearest}  # its nearest listing
    unreadable = np.zeros((1, 16), np.float32)
    assert M.Catalogue(table, catalog, M.MatchSettings(min2=True)).match(unreadable).matches == [set()]


@pytest.mark.parametrize("case, message", [
    ("no images", "no train_images/ folder beside train.csv; a catalogue needs its listings' photos"),
    ("other columns", "its columns differ from the catalogue's (not in the catalogue: price)"),
    ("with --embeddings", "--embeddings does not combine with --catalog"),
])
def test_bad_catalogue_inputs_are_one_line(listings, tmp_path, case, message):
    root, _ = listings
    catalog, data, extra = root / "cat", root / "new", []
    if case == "no images":
        catalog = write_kaggle(tmp_path / "bare", pd.read_csv(root / "cat" / "train.csv", dtype=str).to_dict("records"))
    elif case == "other columns":
        data = tmp_path / "priced"
        data.mkdir()
        (data / "train_images").symlink_to(root / "new" / "train_images", target_is_directory=True)
        pd.read_csv(root / "new" / "train.csv", dtype=str).assign(price="9.99").to_csv(data / "train.csv", index=False)
    else:
        np.save(tmp_path / "e.npy", np.zeros((2, 8), np.float32))
        extra = ["--embeddings", tmp_path / "e.npy"]
    r = run("--data", data, "--catalog", catalog, "--out", tmp_path / "m.csv", *extra)
    assert r.exit_code == 2 and message in r.output, r.output
    assert len([ln for ln in r.output.splitlines() if ln.startswith("error:")]) == 1
    assert not (tmp_path / "m.csv").exists()


def test_a_classifier_matches_with_its_learners_body_whatever_file_is_given(trained_cnn, tmp_path):
    """One rule for `match` and `serve`: an embedding model embeds itself; a classifier, its .pkl's body (the
    .pkl given, or beside the export given); a classifier export alone, the pretrained backbone, said so."""
    files = trained_cnn.files
    assert M.matching_source(files.pkl) == files.pkl
    assert M.matching_source(files.safetensors) == files.pkl
    alone = tmp_path / files.safetensors.name
    shutil.copy(files.safetensors, alone)
    shutil.copy(files.card, tmp_path / files.card.name)
    assert M.matching_source(alone) is None
    assert "pretrained tf_efficientnet_lite0" in M.source_line(alone) and "without its .pkl" in M.source_line(alone)
    assert "body" in M.source_line(files.safetensors)
    assert M.matching_source(None) is None


