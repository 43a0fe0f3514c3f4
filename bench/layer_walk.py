"""Climbs in a command's walk through the package's layers (tests/package/test_layers.py names them).

The walk is the sequence of package modules whose functions run, in call order, repeats merged; a climb is a
step to a module of a higher layer: control came back up and set off down again. Returns to the coordinating
function are climbs too, so a count is compared between versions of the same command, not read alone; the
distinct climbs count a loop's repeated climb once.

    python bench/layer_walk.py -- match --catalog CAT --data NEW --model M.pkl --out /tmp/m.csv
    python bench/layer_walk.py --show -- train --data DIR --arch cnn --epochs 1
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT))  # PYTHONPATH may point at another checkout to compare

from tests.package.test_layers import LAYERS  # noqa: E402  (the one list of layers)

PACKAGE = "shopee_fastai"


def layer(module: str) -> int:
    top = module.split(".")[1] if module.count(".") else "__init__"
    return next((i for i, names in enumerate(LAYERS) if top in names), -1)


def walk(argv: list[str]) -> list[str]:
    """Package modules in the order their functions are called while the CLI runs `argv` (repeats merged)."""
    from shopee_fastai.cli import app

    seen: list[str] = []

    def profile(frame, event, arg):
        if event == "call":
            module = frame.f_globals.get("__name__", "")
            if module.startswith(PACKAGE) and (not seen or seen[-1] != module):
                seen.append(module)

    sys.setprofile(profile)
    try:
        app(argv, standalone_mode=False)
    finally:
        sys.setprofile(None)
    return seen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--show", action="store_true", help="print every climb")
    ap.add_argument("command", nargs=argparse.REMAINDER, help="the CLI command after --")
    args = ap.parse_args()
    argv = args.command[1:] if args.command[:1] == ["--"] else args.command
    steps = walk(argv)
    climbs = [(a, b) for a, b in zip(steps, steps[1:]) if layer(b) > layer(a)]
    print(f"{' '.join(argv)}: {len(steps)} module steps, {len(climbs)} climbs, {len(set(climbs))} distinct "
          "(a loop's repeats counted once)")
    for (a, b), n in Counter(climbs).most_common(None if args.show else 10):
        print(f"  {n:4d}  {a} -> {b}")


if __name__ == "__main__":
    main()
