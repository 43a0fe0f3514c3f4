"""Tiny real data made on the spot: JPEG files in Kaggle layout whose groups a model can separate."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from shopee_fastai.machine import summary

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach for the network
os.environ["SHOPEE_FASTAI_CACHE"] = tempfile.mkdtemp(prefix="shopee-fastai-test-cache-")  # never the user's cache
atexit.register(shutil.rmtree, os.environ["SHOPEE_FASTAI_CACHE"], ignore_errors=True)
COLOURS = {"1001": (200, 40, 40), "2002": (40, 180, 60), "3003": (50, 60, 210)}
PER_GROUP = 12
SIZE = 32  # training side in the tests: small enough for seconds on 2 cores


def pytest_terminal_summary(terminalreporter) -> None:
    """The CPU under every run's results (also with -q): a failure of one machine's arithmetic names the machine."""
    terminalreporter.write_line(summary())


def write_kaggle(root: Path, rows: list[dict], csv: str = "train.csv") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=["posting_id", "image", "image_phash", "title", "label_group"]).to_csv(root / csv, index=False)
    return root


def colour_jpeg(root: Path, name: str, colour, noise: float, rng) -> str:
    """A photo of one colour under noise, of a random size and aspect ratio, saved in train_images/."""
    h, w = rng.integers(40, 90, size=2)
    pixels = np.clip(np.array(colour) + rng.normal(0, noise, (h, w, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(root / "train_images" / name, quality=90)
    return name


def make_synthetic(root: Path, per_group: int = PER_GROUP, seed: int = 0) -> Path:
    """Groups told apart by colour, under noise, in varied sizes and aspect ratios, as real JPEG files."""
    rng = np.random.default_rng(seed)
    (root / "train_images").mkdir(parents=True, exist_ok=True)
    rows = []
    for label, colour in COLOURS.items():
        for i in range(per_group):
            name = colour_jpeg(root, f"{label}_{i:03d}.jpg", colour, 35, rng)
            rows.append({"posting_id": f"p{label}_{i}", "image": name, "image_phash": f"{i:016x}",
                         "title": f"product {label}", "label_group": label})
    return write_kaggle(root, rows)


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("synthetic"))


@pytest.fixture(scope="session")
def trained_cnn(synthetic, tmp_path_factory):
    """One small CNN trained and exported for all tests that need a model (training is the slow part)."""
    from shopee_fastai.config import TrainConfig

    # Colour blobs under noise all look alike to an ImageNet backbone: every group would be one
    # near-duplicate cluster, so the model tests use the plain split (tests/data/test_neardup.py covers the other).
    return fit_and_export(TrainConfig(data=synthetic, arch="cnn", size=SIZE, bs=8, epochs=4, aug="none", workers=0,
                                      split="random", models_dir=tmp_path_factory.mktemp("models"), lr=3e-3, int8=True))


def fit_and_export(cfg):
    from shopee_fastai.training import export, fit_learner

    trained = fit_learner(cfg)
    export(trained)
    return trained


def make_groups(root: Path, n_groups: int = 20, per_group: int = 8, other: int = 3, seed: int = 1) -> Path:
    """Many colour groups, the last `other` photos of each from "another occasion" (posting ids val_...): data an
    embedding can train on with groups left over that it never sees."""
    rng = np.random.default_rng(seed)
    (root / "train_images").mkdir(parents=True, exist_ok=True)
    rows = []
    for g, colour in enumerate(rng.integers(0, 256, size=(n_groups, 3))):
        for i in range(per_group):
            name = colour_jpeg(root, f"g{g:02d}_{i:02d}.jpg", colour, 25, rng)
            rows.append({"posting_id": f"{'val_' if i >= per_group - other else 'train_'}g{g}_{i}", "image": name,
                         "image_phash": f"{g:08x}{i:08x}", "title": f"product {g}", "label_group": str(5000 + g)})
    return write_kaggle(root, rows)


@pytest.fixture(scope="session")
def groups(tmp_path_factory) -> Path:
    return make_groups(tmp_path_factory.mktemp("groups"))


@pytest.fixture(scope="session")
def arcface(groups, tmp_path_factory):
    """An ArcFace embedding trained and exported on `groups` (the val_ photos held out as the test), without the
    refit, so its card and its split describe one run."""
    from shopee_fastai.config import OFFLINE_ARCH, TrainConfig

    return fit_and_export(TrainConfig(data=groups, arch=OFFLINE_ARCH, pretrained=True, loss="arcface", size=SIZE,
                                      head_epochs=4, holdout="^val_", workers=0, models_dir=tmp_path_factory.mktemp("models"),
                                      name="arc", refit=False))
