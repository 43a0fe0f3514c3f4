"""`audit` over real JPEGs with planted problems: the planted ones rank first; --apply writes a cleaned folder and
never touches the original; bad input gets one line and nothing written."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from shopee_fastai.audit import AuditConfig, apply_fixes, audit, decide, read_fixes, run_audit
from shopee_fastai.audit.find import DUPLICATE, KIND, SAME_PRODUCT, SUGGESTED, WRONG_GROUP, Twins, merge_candidates
from shopee_fastai.audit.fixes import proposed
from shopee_fastai.cli import app
from shopee_fastai.errors import ShopeeError

from ..conftest import colour_jpeg, write_kaggle

GROUPS = 6
PLANTED = ("g0_3", "g2_5", "g4_1")  # moved to the next group, titles with them (as on grocery)


def make_catalogue(root: Path, per_group: int = 10, seed: int = 3) -> Path:
    """Colour groups told apart by an ImageNet body's features; three photos filed under the wrong group."""
    rng = np.random.default_rng(seed)
    (root / "train_images").mkdir(parents=True, exist_ok=True)
    colours = [(220, 30, 30), (30, 200, 40), (40, 50, 220), (230, 220, 30), (200, 40, 210), (30, 210, 220)]
    rows = []
    for g in range(GROUPS):
        for i in range(per_group):
            pid = f"g{g}_{i}"
            filed = (g + 1) % GROUPS if pid in PLANTED else g
            rows.append({"posting_id": pid, "image": colour_jpeg(root, f"{pid}.jpg", colours[g], 30, rng),
                         "image_phash": f"{g:04x}{i:012x}", "title": f"product {filed}", "label_group": str(100 + filed)})
    return write_kaggle(root, rows)


def digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        h.update(str(p.relative_to(folder)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory) -> Path:
    return make_catalogue(tmp_path_factory.mktemp("catalogue"))


@pytest.fixture(scope="module")
def audited(catalogue, tmp_path_factory):
    return run_audit(AuditConfig(data=catalogue, out=tmp_path_factory.mktemp("audit") / "out"), progress=False)


def test_planted_wrong_groups_rank_first_with_their_true_group_suggested(audited):
    result, _ = audited
    wrong = result.findings[result.findings[KIND] == WRONG_GROUP]
    assert set(wrong["posting_id"].head(3)) == set(PLANTED)
    for pid in PLANTED:
        true_group = str(100 + int(pid[1]))
        assert wrong.loc[wrong["posting_id"] == pid, SUGGESTED].item() == true_group
    order = np.argsort(result.quality)  # the whole ranking too: the planted ones have the lowest label quality
    assert set(result.table["posting_id"].iloc[order[:3]]) == set(PLANTED)


def test_small_groups_are_judged_by_their_neighbours(tmp_path):
    data = make_catalogue(tmp_path / "pairs", per_group=4)
    result = audit(AuditConfig(data=data, out=tmp_path / "out", cv_min=6, folds=5), progress=False)
    assert set(result.method) <= {"neighbours", "neighbours (title)", "neighbours + title"}
    wrong = result.findings[result.findings[KIND] == WRONG_GROUP]
    assert {"g0_3"} <= set(wrong["posting_id"].head(3))  # g0_3 exists with 4 per group; the others do not
    assert wrong["method"].str.startswith("neighbours").all()


def test_a_title_that_disagrees_with_its_group_is_evidence(tmp_path):
    data = make_catalogue(tmp_path / "titles")
    table = pd.read_csv(data / "train.csv", dtype=str)
    table.loc[table["posting_id"] == "g1_2", "title"] = "product 3"  # photo and group agree; the title does not
    table.to_csv(data / "train.csv", index=False)
    with_titles = audit(AuditConfig(data=data, out=tmp_path / "a"), progress=False).findings
    without = audit(AuditConfig(data=data, out=tmp_path / "b", titles=False), progress=False).findings
    flagged = lambda f: set(f.loc[f[KIND] == WRONG_GROUP, "posting_id"])  # noqa: E731
    assert "g1_2" in flagged(with_titles) and "g1_2" not in flagged(without)
    wrong = with_titles[with_titles[KIND] == WRONG_GROUP]
    assert wrong.loc[wrong["posting_id"] == "g1_2", "method"].item().endswith("(title)")


def test_a_group_split_in_two_is_a_merge_candidate_and_a_reused_file_a_duplicate(tmp_path):
    data = make_catalogue(tmp_path / "merge")
    table = pd.read_csv(data / "train.csv", dtype=str)
    table.loc[table["posting_id"].isin([f"g3_{i}" for i in range(5)]), "label_group"] = "999"
    table.loc[table["posting_id"] == "g5_0", "image"] = "g1_0.jpg"  # the same file filed under two groups
    (data / "train_images" / "broken.jpg").write_bytes(b"\xff\xd8 not a whole jpeg")
    table.loc[len(table)] = {"posting_id": "broken", "image": "broken.jpg", "image_phash": "0", "title": "x", "label_group": "100"}
    table.to_csv(data / "train.csv", index=False)
    found = audit(AuditConfig(data=data, out=tmp_path / "out"), progress=False).findings
    merges = found[found[KIND] == SAME_PRODUCT]
    assert {"103", "999"} == {merges["label_group"].iloc[0], merges[SUGGESTED].iloc[0]}
    dup = found[found[KIND] == DUPLICATE]
    assert set(dup["posting_id"].head(1)) <= {"g5_0", "g1_0"} and dup["method"].iloc[0] == "same file"
    assert found.loc[found[KIND] == "unreadable", "posting_id"].tolist() == ["broken"]


def linked_pairs(weak: int, doubled: int) -> tuple[list[int], list[tuple[int, int]]]:
    """Codes and twin rows of 2-photo groups in pairs: a `weak` pair shares one photo, a `doubled` pair both."""
    codes, links = [], []
    for p in range(weak + doubled):
        a, b = 2 * p, 2 * p + 1
        first = len(codes)
        codes += [a, a, b, b]
        links += [(first, first + 2)] + ([(first + 1, first + 3)] if p >= weak else [])
    return codes, links


def test_merge_candidates_need_two_photos_or_a_photo_and_the_title_and_are_capped_strongest_first():
    codes, links = linked_pairs(weak=3000, doubled=600)  # Shopee's shape: most groups hold 2 listings
    big = len(codes)
    codes += [8000] * 10 + [8001] * 10  # one product filed as two groups of 10, every photo twinned
    links += [(big + i, big + 10 + i) for i in range(10)]
    first, second = np.array(links).T
    twins = Twins(first, second, np.ones(len(links)), np.full(len(links), "embedding", object))
    codes = np.array(codes)
    every = merge_candidates(codes, twins, None, None, limit=0)
    assert len(every) == 601 and set(every["small"]) == {8000} | set(range(6000, 7200, 2))  # no weak pair
    assert every["score"].is_monotonic_decreasing and every["score"].iloc[0] > every["score"].iloc[1]
    capped = merge_candidates(codes, twins, None, None, limit=50)
    assert len(capped) == 50 and tuple(capped[["small", "big"]].iloc[0]) == (8000, 8001)
    sims = np.where(np.arange(len(codes)) == 0, 0.9, 0.0)[:, None]  # listing 0's title is near listing 2's (a weak pair)
    titles = (sims, np.full((len(codes), 1), 2))
    with_title = merge_candidates(codes, twins, None, titles, limit=0)
    assert with_title.loc[with_title["small"] == 0, "method"].tolist() == ["near-duplicates + title"]


def plant_pairs(data: Path, weak: int, doubled: int, seed: int = 5) -> tuple[list[set[str]], list[set[str]]]:
    """2-photo groups in pairs (a weak pair shares one photo file, a doubled pair both; titles unrelated), and
    group 105 listed again as group 998 with the same photos and titles: (weak pairs, doubled pairs)."""
    rng = np.random.default_rng(seed)
    table = pd.read_csv(data / "train.csv", dtype=str)
    repost = table[table["label_group"] == "105"].assign(posting_id=lambda t: "re_" + t["posting_id"], label_group="998")
    rows, weak_pairs, doubled_pairs = [], [], []
    for p in range(weak + doubled):
        a, b = str(200 + 2 * p), str(201 + 2 * p)
        photos = [colour_jpeg(data, f"pair{p}_{i}.jpg", rng.integers(0, 255, 3), 30, rng) for i in range(3)]
        for group, own in ((a, photos[:2]), (b, photos[:2] if p >= weak else photos[::2])):
            title = "".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), 12))
            rows += [{"posting_id": f"{group}_{i}", "image": image, "image_phash": f"{group}{i}", "title": title,
                      "label_group": group} for i, image in enumerate(own)]
        (doubled_pairs if p >= weak else weak_pairs).append({a, b})
    pd.concat([table, repost, pd.DataFrame(rows)]).to_csv(data / "train.csv", index=False)
    return weak_pairs, doubled_pairs


def test_weak_links_between_2_photo_groups_are_no_merge_and_the_list_is_capped_strongest_first(tmp_path):
    data = make_catalogue(tmp_path / "pairs")
    weak, doubled = plant_pairs(data, weak=8, doubled=4)
    cfg = AuditConfig(data=data, out=tmp_path / "out", dup_threshold=0.999, max_merges=3)  # twins: the shared files alone
    found = audit(cfg, progress=False).findings
    merges = [{a, b} for a, b in found.loc[found[KIND] == SAME_PRODUCT, ["label_group", SUGGESTED]].itertuples(index=False)]
    assert len(merges) == 3 and merges[0] == {"105", "998"}
    assert all(pair in doubled for pair in merges[1:]) and not any(pair in weak for pair in merges)


def test_outputs_are_written_and_earlier_decisions_survive_a_rerun(catalogue, audited, tmp_path):
    result, paths = audited
    issues = pd.read_csv(paths["issues.csv"], dtype=str)
    assert list(issues.columns) == ["posting_id", "image", "kind", "score", "method", "label_group", "title",
                                    "suggested_group", "suggested_title"]
    assert len(issues) == len(result.findings)
    assert paths["contact.png"].read_bytes()[:4] == b"\x89PNG"
    assert "wrong_group" in paths["report.md"].read_text()
    assert [proposed(k) for k in ("wrong_group", "same_product", "outlier", "unreadable")] == ["relabel", "merge", "drop", "drop"]
    fixes = decide(paths["fixes.csv"], 0, "relabel")
    assert fixes.loc[0, "action"] == "relabel"
    run_audit(AuditConfig(data=catalogue, out=paths["fixes.csv"].parent), progress=False)
    assert read_fixes(paths["fixes.csv"]).loc[0, "action"] == "relabel"


def test_apply_writes_a_cleaned_folder_and_leaves_the_original_untouched(catalogue, audited, tmp_path):
    result, paths = audited
    before = digest(catalogue)
    fixes = read_fixes(paths["fixes.csv"])
    wrong = fixes["kind"] == WRONG_GROUP
    fixes.loc[wrong, "action"] = "relabel"
    fixes.loc[len(fixes)] = {"posting_id": "g5_9", "label_group": "105", "kind": "outlier", "action": "drop", "new_group": ""}
    fixes.loc[len(fixes)] = {"posting_id": "", "label_group": "104", "kind": SAME_PRODUCT, "action": "merge", "new_group": "105"}
    out = apply_fixes(catalogue, fixes, tmp_path / "cleaned")
    cleaned = pd.read_csv(out / "train.csv", dtype=str).set_index("posting_id")
    assert digest(catalogue) == before
    for pid in PLANTED:
        assert cleaned.at[pid, "label_group"] in {str(100 + int(pid[1])), "105"}
    assert "g5_9" not in cleaned.index and "104" not in set(cleaned["label_group"])
    links = list((out / "train_images").iterdir())
    assert len(links) == len(cleaned) and all(p.is_symlink() and p.resolve().parent == (catalogue / "train_images").resolve() for p in links)
    apply_fixes(catalogue, fixes.iloc[:0], out)  # an earlier --apply output is replaced whole
    assert len(pd.read_csv(out / "train.csv")) == len(pd.read_csv(catalogue / "train.csv"))


def run(*args) -> object:
    return CliRunner().invoke(app, ["audit", *map(str, args)])


def one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert lines and all(f in lines[-1] for f in fragments), result.stderr
    assert "Traceback" not in result.output


def test_cli_audits_then_applies(catalogue, tmp_path):
    r = run("--data", catalogue, "--out", tmp_path / "a")
    assert r.exit_code == 0, r.output
    assert "3 wrong_group" in r.stdout or "wrong_group" in r.stdout
    fixes = tmp_path / "a" / "fixes.csv"
    decide(fixes, 0, "drop")
    r = run("--data", catalogue, "--apply", fixes, "--out", tmp_path / "clean")
    assert r.exit_code == 0, r.output
    assert len(pd.read_csv(tmp_path / "clean" / "train.csv")) == len(pd.read_csv(catalogue / "train.csv")) - 1



def test_accept_takes_the_suggestions_of_undecided_findings_and_keeps_decisions(catalogue, audited, tmp_path):
    fixes = Path(shutil.copy(audited[1]["fixes.csv"], tmp_path / "fixes.csv"))  # the module's audit stays undecided
    table = read_fixes(fixes)
    wrong = table[table["kind"] == WRONG_GROUP].reset_index(drop=True)
    assert len(wrong) >= 2
    decide(fixes, int(table.index[table["posting_id"] == wrong.at[0, "posting_id"]][0]), "keep")
    r = run("--data", catalogue, "--apply", fixes, "--out", tmp_path / "clean", "--accept", WRONG_GROUP)
    assert r.exit_code == 0, r.output
    cleaned = pd.read_csv(tmp_path / "clean" / "train.csv", dtype=str).set_index("posting_id")
    assert cleaned.at[wrong.at[0, "posting_id"], "label_group"] == wrong.at[0, "label_group"]  # decided: kept
    for pid, new in zip(wrong["posting_id"][1:], wrong["new_group"][1:]):
        assert cleaned.at[pid, "label_group"] == new  # undecided: its suggestion
    one_line_error(run("--data", catalogue, "--apply", fixes, "--out", tmp_path / "c2", "--accept", "typo"), "--accept typo", WRONG_GROUP)
    one_line_error(run("--data", catalogue, "--accept", WRONG_GROUP, "--out", tmp_path / "c3"), "--accept", "--apply")
    assert not (tmp_path / "c2").exists() and not (tmp_path / "c3").exists()

@pytest.mark.parametrize("edit, fragments", [
    ({"posting_id": "nope", "action": "drop"}, ("row 2", "posting_id 'nope'")),
    ({"action": "burn"}, ("row 2", "action 'burn'")),
    ({"action": "relabel", "new_group": "42"}, ("row 2", "new_group '42'")),
])
def test_a_bad_fixes_file_gets_one_line_and_nothing_written(catalogue, audited, tmp_path, edit, fragments):
    fixes = read_fixes(audited[1]["fixes.csv"]).head(1)
    for k, v in edit.items():
        fixes.loc[0, k] = v
    fixes.to_csv(tmp_path / "fixes.csv", index=False)
    one_line_error(run("--data", catalogue, "--apply", tmp_path / "fixes.csv", "--out", tmp_path / "clean"), *fragments)
    assert not (tmp_path / "clean").exists()


def test_bad_options_get_one_line_and_nothing_written(catalogue, tmp_path):
    one_line_error(run("--data", catalogue, "--out", catalogue), "--out", "inside the data folder")
    one_line_error(run("--data", catalogue, "--out", catalogue / "x"), "--out", "inside the data folder")
    one_line_error(run("--data", catalogue, "--folds", 8, "--out", tmp_path / "o"), "--folds 8", "--cv-min 5")
    with pytest.raises(ShopeeError, match="--max-merges -1: must be at least 0"):
        AuditConfig(data=catalogue, out=tmp_path / "o", max_merges=-1)
    one_line_error(run("--data", catalogue, "--apply", tmp_path / "none.csv"), "--apply", "--out")
    single = tmp_path / "single"
    shutil.copytree(catalogue, single)
    table = pd.read_csv(single / "train.csv", dtype=str).assign(label_group="7")
    table.to_csv(single / "train.csv", index=False)
    one_line_error(run("--data", single, "--out", tmp_path / "o"), "one label group only")
    assert not (tmp_path / "o").exists()
    with pytest.raises(ShopeeError, match="inside the data folder"):
        apply_fixes(catalogue, pd.DataFrame(columns=["posting_id", "label_group", "action", "new_group"]), catalogue)
