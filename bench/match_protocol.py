"""Matching on label groups no model trained on, in Shopee's shape, with photos from another occasion.

For each seed: 21 of the data set's label groups are set aside as the test; `train --loss arcface` (and
`subcenter`) train on the rest, holding out a share of those groups to validate and calibrate on; a
softmax classifier trains on the arcface model's training groups only (by default with an embedding's
training budget), so it can be calibrated on the same unseen groups. Every source is calibrated on those validation groups and never on the test groups.
Each test draw takes every test group at a Shopee-like size (mostly 2 postings, a tail up to 50, capped
by what the group has), scored two ways: `mixed`, half of its photos from the `val_` occasion and half from
the usual one, so pairs cross occasions; `other`, from the `val_` occasion only, a new occasion for a
model trained with `--holdout '^val_'` (as the withheld test photos are for every model). F1 is the
competition's mean per-row F1, averaged over draws, then mean ± sd over seeds.

Variants: `--all-occasions` trains without `--holdout`, on both occasions of the training groups;
`--calibration-photos both` recalibrates every source on both occasions of its validation groups.

    python bench/match_protocol.py --data ../shared/data/grocery-store --work /tmp/protocol
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageOps

from shopee_fastai.artifacts import ModelCard
from shopee_fastai.cli import app
from shopee_fastai.config import OFFLINE_ARCH, SHOPEE_SIZES
from shopee_fastai.data.split import TEST, VALID, read_split
from shopee_fastai.data.table import ID, LABEL, PATH, read_table
from shopee_fastai.inference.embed import embed_images
from shopee_fastai.machine import summary
from shopee_fastai.matching import MatchSettings, calibrate, find, score, shopee_draws, true_matches

OCCASION = "^val_"  # grocery-store's photos from another occasion
CLASSIFIER_ARGS = "--top-stages 2 --head-views 2 --head-epochs 2"  # an embedding's default budget


def shopee_draw(test: pd.DataFrame, rng, occasion: str = OCCASION, only_other: bool = False) -> pd.DataFrame:
    parts = []
    for _, g in test.groupby(LABEL):
        other = g[g[ID].str.contains(occasion)]
        if only_other:
            if len(other):
                parts.append(other.sample(min(len(other), int(rng.choice(SHOPEE_SIZES))), random_state=rng.integers(1 << 31)))
            continue
        n = min(len(g), int(rng.choice(SHOPEE_SIZES)))
        usual = g[~g.index.isin(other.index)]
        k = min(len(other), -(-n // 2))  # half from the other occasion, where it has photos
        parts += [other.sample(k, random_state=rng.integers(1 << 31)), usual.sample(min(len(usual), n - k), random_state=rng.integers(1 << 31))]
    return pd.concat(parts)


def write_subset(src: Path, rows: pd.DataFrame, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    if not (dest / "train_images").exists():
        (dest / "train_images").symlink_to((src / "train_images").resolve())
    rows.drop(columns=[PATH]).to_csv(dest / "train.csv", index=False)
    return dest


def train(data: Path, models: Path, name: str, seed: int, occasion: str | None, extra: list[str]) -> tuple[Path, float]:
    model = models / f"{name}.pkl"
    if model.is_file():
        return model, float("nan")
    cmd = [sys.executable, "-m", "shopee_fastai", "train", "--data", str(data), "--arch", OFFLINE_ARCH, "--pretrained",
           *(["--holdout", occasion] if occasion else []), "--seed", str(seed), "--name", name, "--models-dir", str(models), *extra]
    print("+", " ".join(cmd), flush=True)
    began = time.perf_counter()
    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):  # the command itself, in this process
        code = app(cmd[3:], standalone_mode=False)
    if code:
        raise SystemExit(f"train exited with {code}")
    return model, time.perf_counter() - began


def mirrored(paths: list[str], dest: Path) -> list[str]:
    """Left-right mirror images of `paths` (written once under `dest`): what flip-averaged embeddings need."""
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for p in paths:
        q = dest / f"{Path(p).parent.name}-{Path(p).stem}.jpg"
        if not q.is_file():
            ImageOps.mirror(Image.open(p).convert("RGB")).save(q, quality=95)
        out.append(str(q))
    return out


def embeddings(paths: list[str], model: Path | None, flip: bool, work: Path) -> dict[str, np.ndarray]:
    emb = embed_images(paths, model, progress=False)
    if flip:  # the mean of a photo's and its mirror image's embeddings, unit length again
        emb = emb + embed_images(mirrored(paths, work / "mirrored"), model, progress=False)
        emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    return dict(zip(paths, emb))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True, help="where the subsets and models go (reused when run again)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                    help="each seed picks the test groups and trains with `--seed S` (a user's default is 42)")
    ap.add_argument("--test-groups", type=int, default=21)
    ap.add_argument("--draws", type=int, default=5, help="Shopee-shaped draws per seed")
    ap.add_argument("--sources", default="backbone,classifier,arcface,subcenter")
    ap.add_argument("--occasion", default=OCCASION, help="posting_id pattern of the photos from another occasion")
    ap.add_argument("--train-args", default="", help="more `train` options for every model, e.g. '--size 64'")
    ap.add_argument("--classifier-args", default=CLASSIFIER_ARGS, help="the classifier's own options")
    ap.add_argument("--all-occasions", action="store_true", help="train on both occasions (no --holdout)")
    ap.add_argument("--flip", action="store_true", help="also score flip-averaged embeddings (source+flip)")
    ap.add_argument("--calibration-photos", choices=("model", "both"), default="model",
                    help="model: the settings each model calibrated on its validation photos; both: recalibrate on "
                         "both occasions of its validation groups")
    args = ap.parse_args()
    print(summary())
    wanted = args.sources.split(",")
    full = read_table(args.data)
    groups = np.array(sorted(full[LABEL].astype(str).unique()))
    results: dict[str, list] = {}
    for seed in args.seeds:
        rng = np.random.default_rng(seed)
        test_groups = set(rng.permutation(groups)[: args.test_groups].tolist())
        test = full[full[LABEL].astype(str).isin(test_groups)]
        seen = full[~full.index.isin(test.index)]
        work = args.work / f"seed{seed}"
        held = None if args.all_occasions else args.occasion
        data = write_subset(args.data, seen, work / "data")
        models = work / "models"
        trained = {}
        for loss in ("arcface", "subcenter"):
            if loss in wanted:
                trained[loss] = train(data, models, loss, seed, held, ["--loss", loss, *args.train_args.split()])
        ref = trained.get("arcface") or trained.get("subcenter")
        if ref is None:
            raise SystemExit("the protocol needs arcface or subcenter among --sources (its validation groups calibrate every source)")
        split = read_split(models / f"{ref[0].stem}.split.csv")
        held_groups = (ModelCard.read(ref[0]).matching or {}).get("calibration_groups")  # a refit model's first run's
        calib = (seen[seen[LABEL].astype(str).isin(held_groups).to_numpy() & seen[ID].map(split).ne(TEST).to_numpy()]
                 if held_groups else seen[seen[ID].map(split).eq(VALID)])
        if args.calibration_photos == "both":  # every photo of the validation groups, the held-out occasion's too
            calib = seen[seen[LABEL].isin(set(calib[LABEL]))]
        if "classifier" in wanted:  # trained on the embedding's training groups only: calibrated on unseen groups too
            inner = seen[~seen[LABEL].isin(set(calib[LABEL]))]
            trained["classifier"] = train(write_subset(args.data, inner, work / "inner"), models, "classifier", seed, held,
                                          ["--top-groups", "0", "--split", "random", *args.classifier_args.split(),
                                           *args.train_args.split()])
        draws = {kind: [shopee_draw(test, np.random.default_rng([seed, d]), args.occasion, kind == "other")
                        for d in range(args.draws)] for kind in ("mixed", "other")}
        paths = sorted(set(calib[PATH]) | set().union(*(set(d[PATH]) for ds in draws.values() for d in ds)))
        for source in wanted:
            model = None if source == "backbone" else trained[source][0]
            stored = None
            if model is not None and source != "classifier" and args.calibration_photos == "model":
                stored = MatchSettings.of(ModelCard.read(model).matching)
            for flip in (False, True) if args.flip else (False,):
                emb = embeddings(paths, model, flip, args.work)
                score_source(results, f"{source}+flip" if flip else source, seed, emb, calib, draws, stored,
                             trained.get(source, (None, float("nan")))[1])
    print(f"\n{'source':14s} {'post-processing':42s} {'test':5s} {'F1 (mean ± sd)':>16s} precision recall threshold postings train_s")
    for (source, label, kind), rows in sorted(results.items(), key=lambda kv: (kv[0][2], list(results).index(kv[0]))):
        a = np.array(rows, dtype=float)
        print(f"{source:14s} {label:42s} {kind:5s} {a[:, 0].mean():8.3f} ± {a[:, 0].std():.3f} {a[:, 1].mean():9.3f} {a[:, 2].mean():6.3f}"
              f" {a[:, 3].mean():9.3f} {a[:, 4].mean():8.0f} {np.nanmean(a[:, 5]) if not np.isnan(a[:, 5]).all() else float('nan'):7.0f}")


def pair_stats(emb: np.ndarray) -> tuple[float, float]:
    """Median and robust sd (IQR / 1.349) of the cosine similarity of every pair of listings."""
    sims = (emb @ emb.T)[np.triu_indices(len(emb), 1)]
    q25, median, q75 = np.quantile(sims, [0.25, 0.5, 0.75])
    return float(median), float((q75 - q25) / 1.349)


def relative_rule(cases: list[tuple[np.ndarray, list]], grid=np.round(np.arange(0.0, 8.01, 0.1), 2)) -> float:
    """A scale-free candidate: threshold = median + z * robust sd of the listings being matched; the z with the best
    mean F1 over `cases` (embeddings, labels)."""
    stats = [pair_stats(e) for e, _ in cases]
    f1 = [np.mean([score(find(e, MatchSettings(m + z * sd)), true_matches(lab)).f1 for (e, lab), (m, sd) in zip(cases, stats)])
          for z in grid]
    return float(grid[int(np.argmax(f1))])


def score_source(results: dict, source: str, seed: int, emb: dict, calib: pd.DataFrame, draws: dict,
                 stored: MatchSettings | None, train_s: float) -> None:
    """Each post-processing, calibrated on `calib` (or the model card's `stored` settings), on every test draw.

    Besides the card's settings: whole calibration groups; Shopee-shaped draws of them (`shopee_draws`); the
    relative rule (z calibrated on those draws, the threshold read off each test draw's own similarities);
    and the best threshold for the test draws themselves, an upper bound no calibration can beat."""
    c_emb = np.stack([emb[p] for p in calib[PATH]])
    labels = calib[LABEL].astype(str).tolist()
    shaped = shopee_draws(labels, seed)
    z = relative_rule([(c_emb[r], [labels[i] for i in r]) for r in shaped])
    options = {"the card's settings (min-2 chosen)": (None, False), "plain": (False, False), "+ min-2": (True, False),
               "+ blending": (False, True), "+ blending + min-2": (True, True), "Shopee-shaped draws": ("shaped", False),
               "relative rule (z chosen on draws)": ("z", False), "best threshold for the test (upper bound)": ("oracle", False)}
    for label, (m2, bl) in options.items():
        for kind, kind_draws in draws.items():
            cases = [(np.stack([emb[p] for p in d[PATH]]), d[LABEL].tolist()) for d in kind_draws]
            if m2 == "z":
                got = [score(find(e, MatchSettings(sum(np.array(pair_stats(e)) * (1, z)))), true_matches(lab)) for e, lab in cases]
                settings = MatchSettings(float(np.mean([sum(np.array(pair_stats(e)) * (1, z)) for e, _ in cases])))
            else:
                if m2 == "oracle":
                    settings = calibrate(np.concatenate([e for e, _ in cases]), sum((list(lab) for _, lab in cases), []), False, False,
                                         draws=list(np.split(np.arange(sum(len(e) for e, _ in cases)),
                                                             np.cumsum([len(e) for e, _ in cases])[:-1]))).settings
                elif m2 == "shaped":
                    settings = calibrate(c_emb, labels, None, False, draws=shaped).settings
                elif stored is not None and m2 is None:
                    settings = stored
                else:
                    settings = calibrate(c_emb, labels, m2, bl).settings
                got = [score(find(e, settings), true_matches(lab)) for e, lab in cases]
            key = (source, label, kind)
            results.setdefault(key, []).append((np.mean([g.f1 for g in got]), np.mean([g.precision for g in got]),
                                                np.mean([g.recall for g in got]), settings.threshold, len(kind_draws[0]), train_s))
            print(f"seed {seed} {source:10s} {label:42s} {kind:5s} F1 {results[key][-1][0]:.3f} at {settings.line()}", flush=True)


if __name__ == "__main__":
    main()
