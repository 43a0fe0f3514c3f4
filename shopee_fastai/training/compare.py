"""The study's comparison in one command: hand CNN (with and without augmentation), EfficientNet-B0 from
scratch and a pretrained model, trained on the same split and seeds, tabulated and charted."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from ..artifacts import ModelFiles
from ..config import CNN_ARCH, DEFAULT_ARCH, OFFLINE_ARCH, Aug, TrainConfig
from ..errors import WeightsUnavailable
from ..inference.predictions import display_name
from ..io import write_text
from ..plots import figure
from .train import train

SCRATCH_ARCH = DEFAULT_ARCH
GROUPS_LISTED = 30  # label groups named (with their titles) under the table


@dataclass(frozen=True)
class Entry:
    key: str
    label: str
    arch: str
    pretrained: bool
    aug: Aug | None  # None: the base config's


def entries(base: TrainConfig) -> list[Entry]:
    aug = base.aug if base.aug != Aug.none else Aug.fastai
    return [Entry("cnn-noaug", "hand CNN, no augmentation", CNN_ARCH, False, Aug.none),
            Entry("cnn-aug", f"hand CNN, {aug} augmentation", CNN_ARCH, False, aug),
            Entry("b0-scratch", "EfficientNet-B0 from scratch", SCRATCH_ARCH, False, None),
            Entry("pretrained", "EfficientNet-B0 pretrained", SCRATCH_ARCH, True, None)]


def _train_entry(base: TrainConfig, e: Entry, seed: int):
    cfg = replace(base, arch=e.arch, pretrained=e.pretrained, aug=e.aug or base.aug, seed=seed,
                  name=f"compare-{e.key}-s{seed}", score_train=True)
    if not e.pretrained:
        return train(cfg)
    try:
        return train(cfg)
    except WeightsUnavailable as err:  # no B0 weights here: say so in the table, use the offline Lite0
        print(f"note: {err}; using {OFFLINE_ARCH} (offline ImageNet weights) instead")
        return train(replace(cfg, arch=OFFLINE_ARCH, weights=None))


def compare(base: TrainConfig, seeds: int = 1, out: Path = Path("reports/compare")) -> pd.DataFrame:
    """Train every entry for each seed; write table.md, table.csv and accuracy.png to `out`; return the table."""
    rows = []
    titles: dict[str, str] = {}
    groups: int | None = None
    for e in entries(base):
        for seed in range(base.seed, base.seed + seeds):
            card = _train_entry(base, e, seed)
            titles = card.titles or titles  # every entry learns the same groups
            groups = card.config["top_groups"]  # as resolved: the same for every entry
            rows.append({"key": e.key, "model": e.label if card.arch == e.arch or not e.pretrained
                         else f"{card.arch} pretrained", "arch": card.arch, "weights": card.weights,
                         "params": card.params, "seed": seed, "train": card.train_accuracy,
                         "valid": card.valid_accuracy, "test": card.test_accuracy,
                         "wall_s": card.wall_time_s["total"], "images_per_s": card.images_per_s,
                         "model_file": str(ModelFiles.of(base.models_dir, card.name).pkl)})
    runs = pd.DataFrame(rows)
    table = summarise(runs)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "runs.csv", runs.to_csv(index=False))
    write_text(out / "table.md", to_markdown(table, base, seeds, titles, groups))
    chart(out / "accuracy.png", table, f"{Path(base.data).name}: test accuracy ({seeds} seed{'s' * (seeds > 1)})")
    return table


def _mean_sd(values: pd.Series) -> str:
    v = values.dropna().astype(float)
    if v.empty:
        return "—"
    return f"{v.mean():.3f}" + (f" ± {v.std(ddof=0):.3f}" if len(v) > 1 else "")


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    g = runs.groupby("key", sort=False)
    return pd.DataFrame({
        "model": g["model"].first(), "weights": g["weights"].first(), "params": g["params"].first(),
        "train": g["train"].apply(_mean_sd), "valid": g["valid"].apply(_mean_sd), "test": g["test"].apply(_mean_sd),
        "test_mean": g["test"].mean(), "test_sd": g["test"].std(ddof=0).fillna(0),
        "wall_s": g["wall_s"].mean().round(0), "images_per_s": g["images_per_s"].mean().round(1),
    }).reset_index()


def to_markdown(table: pd.DataFrame, base: TrainConfig, seeds: int, titles: dict[str, str] | None = None,
                groups: int | None = None) -> str:
    head = ("| model | weights | params | train acc | valid acc | test acc | wall time (s) | train images/s |\n"
            "|---|---|---|---|---|---|---|---|\n")
    body = "".join(f"| {r.model} | {r.weights} | {r.params / 1e6:.2f} M | {r.train} | {r.valid} | **{r.test}** | "
                   f"{r.wall_s:.0f} | {r.images_per_s} |\n" for r in table.itertuples())
    how = (f"\n{seeds} seed(s) from {base.seed}; split {base.split}; {groups or 'all'} groups; size {base.size}; "
           f"recipe {base.recipe}; epochs {base.epochs if base.epochs is not None else 'default'}; data {base.data}\n")
    if titles:
        shown = [display_name(c, titles) for c in sorted(titles)[:GROUPS_LISTED]]
        how += f"\n{len(titles)} groups: {'; '.join(shown)}{'; …' if len(titles) > GROUPS_LISTED else ''}\n"
    return head + body + how


def chart(dest: Path, table: pd.DataFrame, title: str) -> None:
    with figure(dest, (8, 4)) as fig:
        ax = fig.subplots()
        y = np.arange(len(table))
        ax.barh(y, table["test_mean"], xerr=table["test_sd"], color="tab:blue", capsize=4)
        ax.set_yticks(y, table["model"])
        ax.invert_yaxis()
        ax.set(xlim=(0, 1), xlabel="test accuracy", title=title)
        for yi, v in zip(y, table["test_mean"]):
            ax.text(min(v + 0.02, 0.9), yi, f"{v:.3f}", va="center")
