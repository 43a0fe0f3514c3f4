"""Accuracy of trained models averaged: each model alone and the mean of their probabilities, on photos from
another occasion. It asks whether networks of different architectures (EfficientNet-Lite0 at 224 px, Lite1 at
240 px) make errors apart, which seeds of one network do less; `train` itself averages members of one network.

`MODEL.pkl:K` is member K (from 0) of an ensemble alone, as its model card scores it.

    python bench/blend.py --data ../shared/data/grocery-store --rows '^val_' --model a.pkl b.pkl:0
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from shopee_fastai.data.table import ID, LABEL, PATH, read_table
from shopee_fastai.inference.load import load_learner, load_predictor
from shopee_fastai.inference.torch_backends import LearnerPredictor
from shopee_fastai.machine import summary
from shopee_fastai.nets.ensemble import Ensemble


def predictor(spec: str):
    """The predictor `predict` uses for a model file; for `FILE:K`, member K of its ensemble alone."""
    path, _, member = spec.partition(":")
    if not member:
        return load_predictor(Path(path))
    learn = load_learner(Path(path))
    n = len(learn.model.members) if isinstance(learn.model, Ensemble) else 0
    if not n:
        raise SystemExit(f"{spec}: {path} is one model, not an ensemble; give {path} alone")
    if not member.isdigit() or int(member) >= n:
        raise SystemExit(f"{spec}: {path} has {n} ensemble members; give FILE:K with K from 0 to {n - 1}, or FILE alone")
    learn.model = learn.model.member(int(member))
    return LearnerPredictor(learn)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--rows", default="^val_", help="regex on posting_id: the photos to score")
    ap.add_argument("--model", nargs="+", required=True, help=".pkl files of `shopee-fastai train`; FILE:K for member K")
    args = ap.parse_args()
    print(summary())

    table = read_table(args.data)
    rows = table[table[ID].astype(str).str.contains(args.rows)]
    paths = [Path(p) for p in rows[PATH]]
    truth = rows[LABEL].astype(str).to_numpy()
    print(f"{len(paths)} photos of {args.data} whose posting_id matches {args.rows!r}\n")
    print("| model | top-1 accuracy |\n|---|---|")
    probs, classes = [], None
    for spec in args.model:
        p = predictor(spec)
        got = p.outputs(paths, progress=False)
        if got.failures:
            raise SystemExit(f"{spec}: unreadable photos: {'; '.join(got.failures[:3])}")
        vocab = np.array([str(v) for v in p.vocab])
        order = np.argsort(vocab)  # models of one data set share a vocabulary; this aligns its order
        if classes is not None and not np.array_equal(vocab[order], classes):
            raise SystemExit(f"{spec}: its label groups differ from {args.model[0]}'s; blend models of one data set")
        classes = vocab[order]
        probs.append(got.outputs[:, order])
        print(f"| {spec} | {(classes[probs[-1].argmax(1)] == truth).mean():.4f} |", flush=True)
    blend = np.mean(probs, axis=0)
    print(f"| mean of the {len(probs)} | **{(classes[blend.argmax(1)] == truth).mean():.4f}** |")


if __name__ == "__main__":
    main()
