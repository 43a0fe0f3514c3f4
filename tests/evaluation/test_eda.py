"""The data study on a hand-made folder whose numbers are known: a shared file, phash and title, a missing and a broken image."""

import json

import pandas as pd
import pytest
from PIL import Image

from shopee_fastai import eda as E
from shopee_fastai.errors import ShopeeError

from ..conftest import write_kaggle

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
COLUMNS = ("posting_id", "image", "image_phash", "title", "label_group")
IMAGES = {"a.jpg": (40, 30, "RGB"), "b.jpg": (50, 20, "RGB"), "c.jpg": (60, 60, "L"),  # name -> width, height, mode
          "d.jpg": (30, 40, "RGB"), "e.jpg": (20, 20, "CMYK")}
ROWS = [
    ("p1", "a.jpg", "0001", "red mug", "G1"),
    ("p2", "a.jpg", "0002", "red mug", "G1"),     # a.jpg on two rows
    ("p3", "b.jpg", "ffff", "blue cup", "G1"),
    ("p4", "c.jpg", "ffff", "blue cup", "G2"),    # "blue cup" spans G1 and G2
    ("p5", "d.jpg", "ffff", "green bowl", "G2"),  # phash ffff on three rows across G1 and G2
    ("p6", "e.jpg", "0006", "tea pot", "G3"),
    ("p7", "gone.jpg", "0007", "tea pot", "G3"),  # never written
    ("p8", "junk.jpg", "0008", "junk", "G3"),     # not an image
]


def make_folder(root, drop=()):
    images = root / "train_images"
    images.mkdir(parents=True)
    for name, (w, h, mode) in IMAGES.items():
        Image.new(mode, (w, h)).save(images / name, quality=90)
    (images / "junk.jpg").write_bytes(b"not a jpeg")
    write_kaggle(root, [dict(zip(COLUMNS, r)) for r in ROWS])
    if drop:
        pd.read_csv(root / "train.csv", dtype=str).drop(columns=list(drop)).to_csv(root / "train.csv", index=False)
    return root


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = make_folder(tmp_path_factory.mktemp("eda"))
    out = root / "study"
    return E.eda(root, out), out


def test_table_numbers(study):
    s, _ = study
    assert s["rows"] == 8 and s["skipped"] == []
    assert s["unique"] == {"posting_id": 8, "image": 7, "image_phash": 6, "title": 5, "label_group": 3}
    assert s["label_groups"] == {"count": 3, "largest": {"label_group": "G1", "size": 3},  # G1 and G3 tie: first by name
                                 "median_size": 3.0, "size_counts": {2: 1, 3: 2}, "share_of_size_2": 0.3333}
    assert s["shared"] == {
        "image": {"shared_values": 1, "rows_in_shared": 2, "largest": 2, "largest_value": "a.jpg",
                  "cross_label_groups": 0, "max_label_groups": 1},
        "image_phash": {"shared_values": 1, "rows_in_shared": 3, "largest": 3, "largest_value": "ffff",
                        "cross_label_groups": 1, "max_label_groups": 2},
        "title": {"shared_values": 3, "rows_in_shared": 6, "largest": 2, "largest_value": "blue cup",
                  "cross_label_groups": 1, "max_label_groups": 2},
    }


def test_image_headers(study):
    im = study[0]["images"]
    assert (im["checked"], im["sampled"], im["readable"]) == (7, False, 5)
    assert im["width"] == {"min": 20, "median": 40.0, "max": 60}
    assert im["height"] == {"min": 20, "median": 30.0, "max": 60}
    assert im["modes"] == {"RGB": 3, "L": 1, "CMYK": 1}
    assert im["missing"] == ["gone.jpg"] and list(im["unreadable"]) == ["junk.jpg"]


def test_figures_report_and_json_are_written(study):
    s, out = study
    assert s["figures"] == list(E.FIGURES)
    assert sorted(p.name for p in out.iterdir()) == sorted([*E.FIGURES, E.REPORT, E.SUMMARY])  # no temporary files left
    for name in E.FIGURES:
        assert (out / name).read_bytes()[:8] == PNG_SIGNATURE
    report = (out / E.REPORT).read_text()
    assert all(f"]({name})" in report for name in E.FIGURES)
    assert "gone.jpg" in report and "junk.jpg" in report and "Sample-based" not in report
    assert json.loads((out / E.SUMMARY).read_text()) == json.loads(json.dumps(s))


def test_format_summary_has_the_key_numbers(study):
    text = E.format_summary(study[0])
    for part in ("8 rows", "largest G1 (3 rows)", "image_phash on >1 row: 1 values (largest 3 rows), 1 spanning",
                 "5 read, 1 missing, 1 unreadable", "modes RGB 3, L 1, CMYK 1"):
        assert part in text


def test_max_images_reads_a_seeded_sample_of_headers(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "data")
    calls = []
    header = E._header
    monkeypatch.setattr(E, "_header", lambda path: calls.append(path) or header(path))
    s = E.eda(root, tmp_path / "out", max_images=3, seed=1)
    im = s["images"]
    assert im["sampled"] and im["checked"] == 3 and len(calls) == 3 and len(set(calls)) == 3
    assert im["readable"] + len(im["missing"]) + len(im["unreadable"]) == 3
    assert "Sample-based" in (tmp_path / "out" / E.REPORT).read_text() and "a sample of 3" in E.format_summary(s)
    names = pd.unique(pd.Series([r[1] for r in ROWS]))
    assert E._images(names, root / "train_images", 3, seed=1)[0] == im  # the same seed reads the same files


def test_without_phash_and_title_those_parts_are_skipped(tmp_path):
    root = make_folder(tmp_path / "data", drop=("image_phash", "title"))
    out = tmp_path / "out"
    out.mkdir()
    (out / E.PHASH_GROUP).write_bytes(b"from an earlier run")
    s = E.eda(root, out)
    assert list(s["unique"]) == ["posting_id", "image", "label_group"] and list(s["shared"]) == ["image"]
    assert len(s["skipped"]) == 2 and "image_phash" in s["skipped"][0] and "title" in s["skipped"][1]
    assert E.PHASH_GROUP not in s["figures"] and not (out / E.PHASH_GROUP).exists()
    assert "Skipped: no image_phash column" in (out / E.REPORT).read_text()
    assert "skipped: no title column" in E.format_summary(s)


def test_folder_without_csv_is_a_user_error(tmp_path):
    with pytest.raises(ShopeeError, match="train.csv: file not found"):
        E.eda(tmp_path, tmp_path / "out")
    with pytest.raises(ShopeeError, match="max-images 0"):
        E.eda(tmp_path, tmp_path / "out", max_images=0)
