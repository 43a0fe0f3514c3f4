"""Which `train` settings generalise to photos from another occasion? Each variant trained by `train`, tested on `val_` photos.

A variant is a list of `train` options over one base command, `--arch tf_efficientnet_lite0 --pretrained
--split random --ensemble 1 --holdout '^val_'` (one model: ensembles have their own study): the test split is the photos shot on another occasion, and the rest is
split train/valid. `train` runs in this process, once per variant, group count and seed; the score is the
model card's test accuracy (with `--tta`, also `evaluate --tta`'s), mean ± sd over seeds, and the run's
seconds. Models stay in `--work` and are reused when the study runs again, so a long study can be stopped
and resumed. The default variants ask the questions behind the default recipe: the head alone or the top
stages of the body too, label smoothing, head epochs, learning rate and weight decay, input size, body lr.

    python bench/recipe_study.py --data ../shared/data/grocery-store --work /tmp/recipe_study --seeds 3
    python bench/recipe_study.py ... --variants "--top-stages 0" "--top-stages 0 --size 288" "--top-stages 0 --size 352"
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import statistics
import tempfile
from pathlib import Path

from shopee_fastai.cli import app
from shopee_fastai.config import OFFLINE_ARCH
from shopee_fastai.data.table import SAMPLE_DIR
from shopee_fastai.machine import summary

VARIANTS = (
    "",  # the default recipe: the last three body stages and the head on 4 cached views, 5 epochs
    "--top-stages 0 --loss softmax --label-smoothing 0",  # the head alone on each photo and its mirror image, 30 epochs
    "--top-stages 0",
    "--top-stages 0 --head-epochs 60",
    "--top-stages 0 --lr 1e-2 --wd 0.1",
    "--top-stages 0 --size 288",
    "--top-stages 1 --head-views 2 --head-epochs 10 --body-lr 2e-4",  # the last stage too
    "--top-stages 1 --head-views 2 --head-epochs 10 --body-lr 1e-3",
)


def shopee_fastai(*args: str) -> None:
    """Run one `shopee-fastai` command in this process, its printout silenced."""
    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
        code = app(list(args), standalone_mode=False)
    if code:
        raise SystemExit(f"shopee-fastai {' '.join(args)}: exit code {code}")


def trained(work: Path, options: list[str], tta: bool) -> dict:
    """The model card of `train` with these options, trained now or by an earlier run; with `tta`, its
    `evaluate --tta` accuracy as "tta_accuracy"."""
    name = "v" + hashlib.sha1("\0".join(options).encode()).hexdigest()[:12]
    card = work / f"{name}.json"
    if not card.is_file():
        shopee_fastai("train", *options, "--name", name, "--models-dir", str(work))
    result = json.loads(card.read_text())
    if tta:
        report = work / f"{name}-tta"
        if not (report / "metrics.json").is_file():
            shopee_fastai("evaluate", "--model", str(work / f"{name}.pkl"), "--tta", "--out", str(report))
        result["tta_accuracy"] = json.loads((report / "metrics.json").read_text())["top1"]
    return result


def mean_sd(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=SAMPLE_DIR)
    ap.add_argument("--work", type=Path, help="where the models go, reused when run again (default: a temporary folder)")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), help="`train` options of each variant, one string each")
    ap.add_argument("--base", default=f"--arch {OFFLINE_ARCH} --pretrained --split random --ensemble 1",
                    help="`train` options of every variant (the variant's own come after, so they win)")
    ap.add_argument("--holdout", default="^val_", help="posting_id pattern of the test photos (another occasion)")
    ap.add_argument("--top-groups", type=int, nargs="+", default=[21, 0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--tta", action="store_true", help="also score each model with `evaluate --tta`")
    args = ap.parse_args()
    print(summary())

    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        print(f"`train --data {args.data} {args.base} --holdout '{args.holdout}' --top-groups G --seed S` + the variant's options")
        print(f"| groups | variant | `val_` accuracy (mean ± sd) |{' TTA |' if args.tta else ''} train s per run |")
        print(f"|---|---|---|{'---|' if args.tta else ''}---|")
        for top in args.top_groups:
            for variant in args.variants:
                cards = [trained(work, ["--data", str(args.data), *args.base.split(), "--holdout", args.holdout,
                                        "--top-groups", str(top), "--seed", str(seed), *variant.split()], args.tta)
                         for seed in range(args.seeds)]
                tta = f" {mean_sd([c['tta_accuracy'] for c in cards])} |" if args.tta else ""
                print(f"| {top or 'all'} ({len(cards[0]['classes'])}) | {variant or 'default recipe'} | "
                      f"{mean_sd([c['test_accuracy'] for c in cards])} |{tta} "
                      f"{statistics.mean(c['wall_time_s']['total'] for c in cards):.0f} |", flush=True)


if __name__ == "__main__":
    main()
