"""How well `audit` finds planted label errors and split groups, and what fixing them is worth.

Noise: a share of the training photos (not the `val_` occasion) is relabelled to another random group,
and each moved photo's title moves with it (grocery's titles are its class names, so a title left behind
would give the answer away). The audit runs with and without titles as evidence; precision@N and recall@N
rank every photo by cleanlab's label quality, N = the number moved. Merge: 3 groups are each split into
two label ids; all 3 should be among the top 5 merge candidates. Retrain (--retrain): the default recipe
on the noisy labels with `--loss softmax` (label smoothing: smoothing), `--loss gce --gce-q 0.7` (gce) and
`--loss gce --gce-q 0.4` (gce-q0.4, the default), after `audit --apply --accept wrong_group` (each flagged listing
moved to its suggested group; audited with softmax, audited-gce with q 0.7), and on the clean labels (clean with
softmax, clean-gce-q0.4), tested on the `val_` photos. Each (noise, method, seed) is one
training, so the study can run as separate processes side by side.

    python bench/audit_noise.py --data ../shared/data/grocery-store --work /tmp/audit-noise --seeds 0 1 2
    python bench/audit_noise.py --data ../shared/data/grocery-store --work /tmp/audit-noise --seeds 0 --noise \
        --retrain --retrain-noise 0.1 0.2 --methods smoothing gce audited
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from shopee_fastai.audit import AuditConfig, apply_fixes, audit, fixes_table
from shopee_fastai.audit.find import KIND, SAME_PRODUCT, SUGGESTED, WRONG_GROUP
from shopee_fastai.config import OFFLINE_ARCH, Loss, TrainConfig
from shopee_fastai.data.table import ID, LABEL, PATH, TITLE, group_titles, read_table
from shopee_fastai.machine import summary
from shopee_fastai.training import fit_learner

OCCASION = "^val_"


def folder(dest: Path, table: pd.DataFrame, images: Path) -> Path:
    """A Kaggle-layout folder of `table` whose train_images/ links to the original photos."""
    dest.mkdir(parents=True, exist_ok=True)
    table.drop(columns=[PATH]).to_csv(dest / "train.csv", index=False)
    link = dest / "train_images"
    if not link.exists():
        os.symlink(images.resolve(), link)
    return dest


def add_noise(table: pd.DataFrame, share: float, rng) -> tuple[pd.DataFrame, set[str]]:
    """Relabel `share` of the non-`val_` rows to another random group, their titles with them."""
    titles = group_titles(table)
    groups = sorted(titles)
    train = table.index[~table[ID].str.contains(OCCASION)]
    moved = rng.choice(train, size=round(share * len(train)), replace=False)
    noisy = table.copy()
    for i in moved:
        new = rng.choice([g for g in groups if g != noisy.at[i, LABEL]])
        noisy.at[i, LABEL], noisy.at[i, TITLE] = new, titles[new]
    return noisy, set(noisy.loc[moved, ID])


def ranking_scores(result, moved: set[str]) -> dict[str, float]:
    n = len(moved)
    order = np.argsort(result.quality, kind="stable")
    top = set(result.table[ID].iloc[order[:n]])
    flagged = set(result.findings.loc[result.findings[KIND] == WRONG_GROUP, ID])
    return {"precision@N": len(top & moved) / n, "recall@N": len(top & moved) / n, "flagged": len(flagged),
            "flagged precision": len(flagged & moved) / max(1, len(flagged)), "flagged recall": len(flagged & moved) / n}


def split_groups(table: pd.DataFrame, rng, n: int = 3) -> tuple[pd.DataFrame, list[set[str]]]:
    out = table.copy()
    chosen = rng.choice(sorted(out[LABEL].unique()), size=n, replace=False)
    for g in chosen:
        rows = out.index[out[LABEL] == g]
        out.loc[rng.choice(rows, size=len(rows) // 2, replace=False), LABEL] = f"{g}b"
    return out, [{str(g), f"{g}b"} for g in chosen]


# each way to train on the noisy labels: (audit and apply first, train options); "clean…" train on the true labels.
# One model each, but "default": the default recipe as it is (gce at q 0.4, three members).
ONE = {"ensemble": 1}
SMOOTHING, GCE7, GCE4 = ({**ONE, "loss": Loss.softmax}, {**ONE, "loss": Loss.gce, "gce_q": 0.7},
                         {**ONE, "loss": Loss.gce, "gce_q": 0.4})
METHODS = {"smoothing": (False, SMOOTHING), "gce": (False, GCE7), "gce-q0.4": (False, GCE4), "default": (False, {}),
           "audited": (True, SMOOTHING), "audited-gce": (True, GCE7), "clean": (False, SMOOTHING),
           "clean-gce-q0.4": (False, GCE4), "clean-default": (False, {})}
CLEAN = ("clean", "clean-gce-q0.4", "clean-default")


def train_val(data: Path, seed: int, models: Path, name: str, precision: str = "auto", **options) -> dict:
    """The default recipe with `options` (TrainConfig fields), tested on the `val_` photos; the valid losses show a
    jolt at the one-cycle peak that the final accuracy hides."""
    cfg = TrainConfig(data=data, arch=OFFLINE_ARCH, pretrained=True, top_groups=0, holdout=OCCASION, seed=seed,
                      models_dir=models, name=name, precision=precision, **options)
    began = time.perf_counter()
    card = fit_learner(cfg).card
    losses = [round(h["valid_loss"], 2) for h in card.history if h.get("valid_loss") is not None]
    return {"val_": round(float(card.test_accuracy), 4), "valid": card.valid_accuracy and round(float(card.valid_accuracy), 4),
            "s": round(time.perf_counter() - began), "valid loss by epoch": " → ".join(map(str, losses))}


def audited(noisy: pd.DataFrame, noisy_dir: Path, seed: int, work: Path, tag: str) -> Path:
    """`noisy_dir` after `audit` and `audit --apply fixes.csv --accept wrong_group`: every listing the audit finds
    in the wrong group moves to its suggested group, as a user with a catalogue too large to review would do."""
    train_side = noisy[~noisy[ID].str.contains(OCCASION)]
    result = audit(AuditConfig(data=folder(work / f"retrain-audit-{tag}", train_side, noisy_dir / "train_images"),
                               out=work / "out", seed=seed, titles=False), progress=False)
    return apply_fixes(noisy_dir, fixes_table(result), work / f"retrain-cleaned-{tag}", accept=[WRONG_GROUP])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--noise", type=float, nargs="*", default=[0.05, 0.10], help="noise levels (none: skip the noise and merge runs)")
    ap.add_argument("--titles", choices=["both", "on", "off"], default="both", help="audit with titles as evidence, without, or both")
    ap.add_argument("--retrain", action="store_true", help="also train the default recipe each --methods way per seed (slow)")
    ap.add_argument("--retrain-noise", type=float, nargs="+", default=[0.10], help="noise levels of the retrained runs")
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS), help="ways to train on the noisy labels")
    ap.add_argument("--precision", default="auto", help="the retrained models' `train --precision`")
    args = ap.parse_args()
    print(summary())
    table = read_table(args.data)
    images = args.data / "train_images"
    train_only = table[~table[ID].str.contains(OCCASION)].reset_index(drop=True)
    rows = []
    for seed in args.seeds:
        for share in args.noise:
            noisy, moved = add_noise(train_only, share, np.random.default_rng(seed))
            data = folder(args.work / f"noise{share}-s{seed}", noisy, images)
            for titles in {"both": (True, False), "on": (True,), "off": (False,)}[args.titles]:
                began = time.perf_counter()
                result = audit(AuditConfig(data=data, out=args.work / "out", titles=titles, seed=seed), progress=False)
                rows.append({"seed": seed, "noise": share, "titles": titles, "N": len(moved),
                             **ranking_scores(result, moved), "s": round(time.perf_counter() - began, 1)})
                print(rows[-1], flush=True)
        if not args.noise:
            continue
        merged, pairs = split_groups(train_only, np.random.default_rng(seed))
        result = audit(AuditConfig(data=folder(args.work / f"split-s{seed}", merged, images), out=args.work / "out",
                                   seed=seed), progress=False)
        merges = result.findings[result.findings[KIND] == SAME_PRODUCT].head(5)
        named = [{str(a), str(b)} for a, b in zip(merges[LABEL], merges[SUGGESTED])]
        print({"seed": seed, "split groups in the top 5 merge candidates": sum(p in named for p in pairs)}, flush=True)
    frame = pd.DataFrame(rows)
    if len(frame):
        print(frame.groupby(["noise", "titles"])[["precision@N", "flagged", "flagged precision", "flagged recall", "s"]]
              .agg(["mean", "std"]).round(3).to_string())
    if not args.retrain:
        return
    rows = []

    def trained(seed: int, share: float, method: str, data: Path, name: str) -> None:
        rows.append({"seed": seed, "noise": share, "method": method,
                     **train_val(data, seed, args.work / "models", name, args.precision, **METHODS[method][1])})
        print(rows[-1], flush=True)

    for seed in args.seeds:
        for method in (m for m in args.methods if m in CLEAN):  # once per seed, whatever the noise levels
            trained(seed, 0.0, method, folder(args.work / f"retrain-clean-s{seed}", table, images), f"{method}-s{seed}")
        for share in args.retrain_noise:
            noisy, _ = add_noise(table, share, np.random.default_rng(seed))
            tag = f"n{share}-s{seed}"
            noisy_dir = folder(args.work / f"retrain-noisy-{tag}", noisy, images)
            for method in (m for m in args.methods if m not in CLEAN):
                data = audited(noisy, noisy_dir, seed, args.work, tag) if METHODS[method][0] else noisy_dir
                trained(seed, share, method, data, f"{method}-{tag}")
    frame = pd.DataFrame(rows)
    print(frame.groupby(["noise", "method"])[["val_", "valid", "s"]].agg(["mean", "std", "count"]).round(3).to_string())


if __name__ == "__main__":
    main()
