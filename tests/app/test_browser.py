"""The page as a person uses it, in a real headless Chromium (Debian's chromium + chromium-driver via Selenium).

Without a Chromium here these tests skip and say why; in CI (CI=true) they fail instead, so they always run there.
Each test saves a screenshot of the page, into $SHOPEE_FASTAI_SCREENSHOTS when set, else a temporary folder.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from .conftest import running

WAIT_S = 60


def _unavailable(reason: str):
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI runs the browser tests: .ci/run installs chromium and chromium-driver)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _unavailable("selenium is not installed; pip install -e '.[test]'")
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (binary and driver):
        _unavailable("no Chromium here; apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(arg)
    chrome = webdriver.Chrome(service=Service(driver), options=options)
    yield chrome
    chrome.quit()


@pytest.fixture
def shots(tmp_path) -> Path:
    where = Path(os.environ.get("SHOPEE_FASTAI_SCREENSHOTS") or tmp_path)
    where.mkdir(parents=True, exist_ok=True)
    return where


def _open(browser, url):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(url)
    WebDriverWait(browser, WAIT_S).until(lambda b: b.find_elements(By.CSS_SELECTOR, "#classify-files input[type=file]"))


def _upload_and_run(browser, files_id: str, button_id: str, results_id: str, paths, wait_for: str) -> str:
    """Choose `paths` in the file box, press the button, and return the results' text once it shows `wait_for`."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    box = browser.find_element(By.CSS_SELECTOR, f"#{files_id} input[type=file]")
    box.send_keys("\n".join(str(p) for p in paths))
    names = [Path(p).stem for p in paths]  # the box shows a name's stem and suffix on separate lines
    WebDriverWait(browser, WAIT_S).until(lambda b: all(n in b.find_element(By.ID, files_id).text for n in names))
    browser.find_element(By.ID, button_id).click()
    WebDriverWait(browser, WAIT_S).until(lambda b: wait_for in b.find_element(By.ID, results_id).text)
    return browser.find_element(By.ID, results_id).text


def _save(browser, dest: Path) -> None:
    browser.execute_script("window.scrollTo(0, 0)")
    browser.save_screenshot(str(dest))
    assert dest.read_bytes()[:4] == b"\x89PNG"


def test_classify_a_photo_and_read_its_group_and_title(browser, served, synthetic, shots):
    _open(browser, served.url)
    text = _upload_and_run(browser, "classify-files", "classify-button", "classify-results",
                           [synthetic / "train_images" / "2002_005.jpg"], "probability")
    first = text.splitlines()[2]  # photo name, table header, then the best group
    assert first.split()[:4] == ["1", "2002", "product", "2002"], text
    _save(browser, shots / "serve-classify.png")


def test_the_csv_downloads_and_a_stopped_server_leaves_no_photos_or_csvs_behind(browser, trained_cnn, synthetic, tmp_path):
    """The page's CSV downloads; it and the uploads live in Gradio's cache, in the server's temporary folder, until
    the server stops."""
    import httpx
    from selenium.webdriver.common.by import By

    photos = sorted((synthetic / "train_images").iterdir())
    kept = lambda: sorted(p.name for p in (tmp_path / "tmp").rglob("*") if p.suffix in (".jpg", ".csv"))  # noqa: E731
    with running(trained_cnn.files.safetensors, tmp_path / "serve.log", synthetic) as server:
        _open(browser, server.url)
        _upload_and_run(browser, "classify-files", "classify-button", "classify-results", photos[:1], "probability")
        link = browser.find_element(By.CSS_SELECTOR, "#classify-csv a").get_attribute("href")
        table = httpx.get(link, timeout=WAIT_S).text.splitlines()
        assert table[0] == "image,rank,label_group,title,probability" and table[1].startswith(f"{photos[0].name},1,"), table
        during = kept()
        assert photos[0].name in during and [n for n in during if n.startswith("predictions-")], during
    assert kept() == []
    assert sorted((synthetic / "train_images").iterdir()) == photos  # the catalogue's own photos stay


def test_a_text_file_shows_an_error_and_the_page_goes_on(browser, served, synthetic, tmp_path, shots):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a photo\n")
    _open(browser, served.url)
    text = _upload_and_run(browser, "classify-files", "classify-button", "classify-results", [notes], "error")
    assert "notes.txt: not an image file" in text, text
    _save(browser, shots / "serve-error.png")
    _open(browser, served.url)
    text = _upload_and_run(browser, "classify-files", "classify-button", "classify-results",
                           [synthetic / "train_images" / "3003_002.jpg"], "probability")
    assert "3003" in text.splitlines()[2]


def test_find_the_matches_of_a_photo_in_the_catalogue(browser, served, synthetic, shots):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _open(browser, served.url)
    next(b for b in browser.find_elements(By.CSS_SELECTOR, "button[role=tab]") if "Find matches" in b.text).click()
    WebDriverWait(browser, WAIT_S).until(lambda b: b.find_elements(By.CSS_SELECTOR, "#match-files input[type=file]"))
    text = _upload_and_run(browser, "match-files", "match-button", "match-results",
                           [synthetic / "train_images" / "1001_003.jpg"], "similarity")
    rows = text.splitlines()
    assert "listing(s) at similarity" in rows[0]
    assert rows[2].startswith("p1001_3 product 1001 1.000 match"), text
    WebDriverWait(browser, WAIT_S).until(lambda b: b.find_elements(By.CSS_SELECTOR, "#match-gallery img"))
    _save(browser, shots / "serve-match.png")


def test_review_an_audit_and_the_buttons_write_fixes_csv(browser, reviewing, audited_folder, shots):
    """Relabel, keep, drop: each click writes its decision into fixes.csv and brings the next finding."""
    import pandas as pd
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(reviewing.url)
    finding = lambda b: b.find_element(By.ID, "review-finding").text  # noqa: E731
    WebDriverWait(browser, WAIT_S).until(lambda b: b.find_elements(By.ID, "review-finding") and "finding 1 of" in finding(b))
    first = pd.read_csv(audited_folder / "issues.csv", dtype=str).iloc[0]
    assert first["posting_id"] in finding(browser) and "wrong_group" in finding(browser)
    WebDriverWait(browser, WAIT_S).until(lambda b: b.find_elements(By.CSS_SELECTOR, "#review-photos img"))
    _save(browser, shots / "serve-review.png")
    for n, button in enumerate(("review-relabel", "review-keep", "review-drop"), 2):
        browser.find_element(By.ID, button).click()
        WebDriverWait(browser, WAIT_S).until(lambda b: f"finding {n} of" in finding(b) or "All" in finding(b))
    fixes = pd.read_csv(audited_folder / "fixes.csv", dtype=str, keep_default_na=False)
    assert fixes["action"].head(3).tolist() == ["relabel", "keep", "drop"]
    assert (fixes["action"].iloc[3:] == "").all()
    assert fixes["new_group"].iloc[0] == first["suggested_group"]
