"""int8 against fp32 on photos from another occasion: top-1 agreement, accuracy of each, and photos/s; for an
embedding model, match F1 with each on the photos of the groups it never trained on.

The bar for int8 to become `predict`'s default on CPU: top-1 agreement ≥ 99.5 % and accuracy within 0.3
points of fp32, for every model measured.

    python bench/int8_agreement.py --data ../shared/data/grocery-store --rows '^val_' --model models/a.pkl models/b.pkl
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from shopee_fastai.artifacts import ModelCard, ModelFiles
from shopee_fastai.data.split import VALID, read_split
from shopee_fastai.data.table import ID, LABEL, PATH, read_table
from shopee_fastai.inference.embed import embed_images
from shopee_fastai.inference.load import load_predictor
from shopee_fastai.machine import summary
from shopee_fastai.matching import MatchSettings, find, score, true_matches


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--rows", default="^val_", help="regex on posting_id: the photos to compare on")
    ap.add_argument("--model", type=Path, nargs="+", required=True, help=".pkl files trained by `shopee-fastai train`")
    args = ap.parse_args()
    print(summary())

    table = read_table(args.data)
    rows = table[table[ID].astype(str).str.contains(args.rows)]
    paths = [Path(p) for p in rows[PATH]]
    print(f"{len(paths)} photos of {args.data} whose posting_id matches {args.rows!r}\n")
    print("| model | top-1 agreement | fp32 accuracy | int8 accuracy | max prob diff | fp32 photos/s | int8 photos/s |")
    print("|---|---|---|---|---|---|---|")
    embedding_rows: list[str] = []
    for model in args.model:
        if ModelCard.read(model).matching:
            embedding_rows.append(matching_f1(model, table, rows))
            continue
        out = {}
        for precision in ("fp32", "int8"):
            p = load_predictor(model, precision=precision)
            p.outputs(paths[:32], progress=False)  # warm-up
            start = time.perf_counter()
            got = p.outputs(paths, progress=False)
            rate = len(got.paths) / (time.perf_counter() - start)
            labels = dict(zip(map(str, rows[PATH]), rows[LABEL].astype(str)))
            truth = np.array([labels[str(q)] for q in got.paths])
            predicted = np.array(p.vocab)[got.outputs.argmax(1)]
            out[precision] = (got.outputs, float((predicted == truth).mean()), rate)
        (f, fa, fr), (q, qa, qr) = out["fp32"], out["int8"]
        agree = float((f.argmax(1) == q.argmax(1)).mean())
        print(f"| {model.name} | {100 * agree:.1f} % | {fa:.4f} | {qa:.4f} | {np.abs(f - q).max():.3f} | {fr:.0f} | {qr:.0f} |",
              flush=True)


    if embedding_rows:
        print("\nembedding models: match F1 (the card's settings) on those photos of the groups they never trained on")
        print("| model | photos | fp32 F1 | int8 F1 | int8 − fp32 | min cosine fp32·int8 | fp32 photos/s | int8 photos/s |")
        print("|---|---|---|---|---|---|---|---|")
        print("\n".join(embedding_rows))


def matching_f1(model: Path, table, rows) -> str:
    """An embedding model's match F1 with fp32 and with int8 embeddings, on `rows` of its held-out groups."""
    card = ModelCard.read(model)
    split = read_split(ModelFiles.beside(model).split)
    unseen = set(table[table[ID].map(split).eq(VALID)][LABEL].astype(str))
    rows = rows[rows[LABEL].astype(str).isin(unseen)]
    paths = list(rows[PATH])
    settings = MatchSettings.of(card.matching)
    truth = true_matches(rows[LABEL].astype(str).tolist())
    got = {}
    for precision in ("fp32", "int8"):
        embed_images(paths[:32], model, progress=False, precision=precision)  # warm-up
        start = time.perf_counter()
        emb = embed_images(paths, model, progress=False, precision=precision)
        got[precision] = (emb, len(paths) / (time.perf_counter() - start), score(find(emb, settings), truth).f1)
    (f, fr, ff), (q, qr, qf) = got["fp32"], got["int8"]
    return (f"| {model.name} | {len(paths)} | {ff:.4f} | {qf:.4f} | {qf - ff:+.4f} | {float((f * q).sum(1).min()):.3f} | "
            f"{fr:.0f} | {qr:.0f} |")


if __name__ == "__main__":
    main()
