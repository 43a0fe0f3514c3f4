"""The JSON API as a client sees it: a real server on 127.0.0.1, real photos, real bad requests."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from shopee_fastai.cli import app

from .conftest import running

TITLES = {c: f"product {c}" for c in ("1001", "2002", "3003")}


def photos(synthetic, *names):
    return [("file", (n, (synthetic / "train_images" / n).read_bytes(), "image/jpeg")) for n in names]


def ok_after(served, synthetic):
    """The request after a bad one is served normally."""
    r = httpx.post(f"{served.url}/api/predict", files=photos(synthetic, "3003_001.jpg"), timeout=60)
    assert r.status_code == 200 and r.json()[0]["predictions"][0]["label_group"] == "3003", r.text


def test_health_names_model_classes_titles_and_backend(served, trained_cnn):
    h = httpx.get(f"{served.url}/health").json()
    assert h["model"] == trained_cnn.files.name and h["classes"] == ["1001", "2002", "3003"]
    assert h["titles"] == TITLES and h["backend"] == "onnx" and h["catalog"]["listings"] == 36
    assert "model: ONNX Runtime, fp32 graph" in served.output()  # which network runs, and why, in one line


def test_binds_to_this_machine_only_by_default(served):
    assert served.url.startswith("http://127.0.0.1:") and "at http://127.0.0.1:" in served.output()


def test_predict_returns_what_predict_json_prints(served, synthetic, trained_cnn):
    names = ["1001_002.jpg", "2002_003.jpg"]
    r = httpx.post(f"{served.url}/api/predict", files=photos(synthetic, *names), timeout=60)
    assert r.status_code == 200, r.text
    got = r.json()
    cli = CliRunner().invoke(app, ["predict", *(str(synthetic / "train_images" / n) for n in names), "--model",
                                   str(trained_cnn.files.safetensors), "--json"])
    assert cli.exit_code == 0, cli.output
    expected = [json.loads(line) for line in cli.stdout.splitlines()]
    assert [g["image"] for g in got] == names
    for g, e in zip(got, expected):
        assert [p["label_group"] for p in g["predictions"]] == [p["label_group"] for p in e["predictions"]]
        assert [p["title"] for p in g["predictions"]] == [p["title"] for p in e["predictions"]]
        assert np.allclose([p["probability"] for p in g["predictions"]], [p["probability"] for p in e["predictions"]], atol=1e-4)
    assert got[0]["predictions"][0] | {"probability": 0} == {"label_group": "1001", "title": "product 1001", "probability": 0}
    top1 = httpx.post(f"{served.url}/api/predict?top_k=1", files=photos(synthetic, "2002_000.jpg"), timeout=60).json()
    assert len(top1[0]["predictions"]) == 1


def _huge_png(path):
    Image.new("RGB", (10_240, 10_240), (200, 30, 30)).save(path)  # 105 Mpx: over the decoder's limit, 0.3 MB on disk
    return path.read_bytes()


@pytest.mark.parametrize("case, status, fragments", [
    ("text file", 422, ["notes.txt", "not an image file"]),
    ("truncated jpeg", 422, ["cut.jpg", "cannot be decoded", "truncated"]),
    ("100 megapixels", 422, ["huge.png", "too large to decode safely"]),
    ("wrong field", 422, ["no field 'file'", "'photo'", "curl -F file=@photo.jpg"]),
    ("text in the field", 422, ["'file' holds text, not a file"]),
    ("not multipart", 415, ["multipart/form-data", "application/json"]),
    ("bad top_k", 422, ["top_k=none", "whole number"]),
])
def test_bad_requests_get_a_4xx_naming_the_problem(served, synthetic, tmp_path, case, status, fragments):
    jpeg = (synthetic / "train_images" / "1001_000.jpg").read_bytes()
    url = f"{served.url}/api/predict"
    send = {
        "text file": lambda: httpx.post(url, files=[("file", ("notes.txt", b"just some words\n", "text/plain"))]),
        "truncated jpeg": lambda: httpx.post(url, files=[("file", ("cut.jpg", jpeg[: len(jpeg) // 2], "image/jpeg"))]),
        "100 megapixels": lambda: httpx.post(url, files=[("file", ("huge.png", _huge_png(tmp_path / "huge.png"), "image/png"))]),
        "wrong field": lambda: httpx.post(url, files=[("photo", ("a.jpg", jpeg, "image/jpeg"))]),
        "text in the field": lambda: httpx.post(url, data={"file": "a.jpg"}, files=[("other", ("x", b"x"))]),
        "not multipart": lambda: httpx.post(url, json={"file": "a.jpg"}),
        "bad top_k": lambda: httpx.post(f"{url}?top_k=none", files=photos(synthetic, "1001_000.jpg")),
    }[case]
    r = send()
    assert r.status_code == status, r.text
    assert all(f in r.json()["error"] for f in fragments), r.json()
    ok_after(served, synthetic)


def test_one_bad_photo_in_a_batch_is_named_and_the_rest_still_answered(served, synthetic):
    files = photos(synthetic, "2002_000.jpg") + [("file", ("notes.txt", b"words", "text/plain"))]
    r = httpx.post(f"{served.url}/api/predict", files=files, timeout=60)
    assert r.status_code == 422 and r.json()["error"].startswith("1 of 2 file(s) could not be read: notes.txt")
    assert [f["image"] for f in r.json()["failures"]] == ["notes.txt"]
    assert [x["image"] for x in r.json()["results"]] == ["2002_000.jpg"]


@pytest.mark.parametrize("chunked", [False, True])
def test_an_oversized_body_gets_413_and_the_server_goes_on(served, synthetic, chunked):
    from shopee_fastai.config import SERVE_MAX_BODY

    blob = np.random.default_rng(0).bytes(SERVE_MAX_BODY + 1)
    if chunked:  # no Content-Length: the server counts what arrives
        body = b"--x\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.jpg\"\r\n\r\n" + blob + b"\r\n--x--\r\n"
        r = httpx.post(f"{served.url}/api/predict", content=iter([body[i: i + 1 << 20] for i in range(0, len(body), 1 << 20)]),
                       headers={"content-type": "multipart/form-data; boundary=x"}, timeout=60)
    else:
        r = httpx.post(f"{served.url}/api/predict", files=[("file", ("big.jpg", blob, "image/jpeg"))], timeout=60)
    assert r.status_code == 413 and "limit" in r.json()["error"], r.text
    ok_after(served, synthetic)


def test_match_finds_the_listing_itself_first_with_titles(served, synthetic):
    r = httpx.post(f"{served.url}/api/match", files=photos(synthetic, "2002_004.jpg"), timeout=120)
    assert r.status_code == 200, r.text
    (got,) = r.json()
    first = got["nearest"][0]
    assert first["posting_id"] == "p2002_4" and first["similarity"] > 0.99 and first["match"]
    assert first["title"] == "product 2002" and "p2002_4" in got["matches"]
    sims = [n["similarity"] for n in got["nearest"]]
    shown = [n["posting_id"] for n in got["nearest"] if n["match"]]  # matches beyond the nearest shown are listed too
    assert sims == sorted(sims, reverse=True) and got["matches"][: len(shown)] == shown
    bad = httpx.post(f"{served.url}/api/match", files=[("file", ("notes.txt", b"words", "text/plain"))], timeout=60)
    assert bad.status_code == 422 and "notes.txt: not an image file" in bad.json()["error"]


def test_files_outside_the_catalogue_and_examples_are_not_served(served, synthetic, trained_cnn):
    for path in ("/etc/passwd", trained_cnn.files.card, trained_cnn.files.safetensors, synthetic / "train.csv"):
        r = httpx.get(f"{served.url}/gradio_api/file={path}")
        assert r.status_code in (403, 404), (path, r.status_code)
    assert httpx.get(f"{served.url}/gradio_api/file={synthetic / 'train_images' / '1001_000.jpg'}").status_code == 200
    assert httpx.get(f"{served.url}/docs").status_code == 404


@pytest.mark.parametrize("suffix", [".pkl", ".onnx"])
def test_every_model_format_serves_without_a_catalogue(trained_cnn, synthetic, tmp_path, suffix):
    from shopee_fastai.inference.export import write_onnx
    from shopee_fastai.inference.load import load_network

    model = trained_cnn.files.pkl
    if suffix == ".onnx":  # alone in its folder: the titles come from the graph's own metadata
        model = write_onnx(*load_network(model), tmp_path / "alone.onnx")
    with running(model, tmp_path / "serve.log") as server:
        health = httpx.get(f"{server.url}/health").json()
        assert health["catalog"] is None and health["titles"] == TITLES
        r = httpx.post(f"{server.url}/api/predict", files=photos(synthetic, "2002_001.jpg"), timeout=60)
        assert r.status_code == 200 and r.json()[0]["predictions"][0]["title"] == "product 2002"
        r = httpx.post(f"{server.url}/api/match", files=photos(synthetic, "1001_000.jpg"))
        assert r.status_code == 404 and "--catalog DIR" in r.json()["error"]


def test_serve_without_gradio_says_how_to_install_it(monkeypatch, trained_cnn):
    monkeypatch.setitem(sys.modules, "gradio", None)  # what `import gradio` meets where it is not installed
    result = CliRunner().invoke(app, ["serve", "--model", str(trained_cnn.files.pkl)])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "error: serve needs gradio, which is not installed; install the web extra with `pip install 'shopee-fastai[app]'`"]


def test_no_other_command_imports_the_web_stack():
    code = ("import pkgutil, importlib, sys, shopee_fastai\n"
            "for m in pkgutil.walk_packages(shopee_fastai.__path__, 'shopee_fastai.'):\n"
            "    if not m.name.startswith(('shopee_fastai.app.server', 'shopee_fastai.app.page', 'shopee_fastai.__main__')):\n"
            "        importlib.import_module(m.name)\n"
            "print(sorted(k for k in ('gradio', 'fastapi', 'uvicorn') if k in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_concurrent_requests_each_get_their_own_answer(served, synthetic):
    """Requests that arrive together share the model's batches; every reply still answers its own photos."""
    from concurrent.futures import ThreadPoolExecutor

    names = sorted(p.name for p in (synthetic / "train_images").glob("*.jpg"))[::3]

    def send(i_name):
        i, name = i_name
        files = photos(synthetic, name) + ([("file", ("bad.txt", b"x", "text/plain"))] if i % 4 == 0 else [])
        return name, i % 4 == 0, httpx.post(f"{served.url}/api/predict", files=files, timeout=120)

    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(send, enumerate(names)))
    for name, with_bad, r in replies:
        body = r.json()
        results = body["results"] if with_bad else body
        assert r.status_code == (422 if with_bad else 200), r.text
        assert [x["image"] for x in results] == [name]
        assert results[0]["predictions"][0]["label_group"] == name.split("_")[0]
        if with_bad:
            assert [f["image"] for f in body["failures"]] == ["bad.txt"]


def test_a_busy_port_is_one_line_before_the_model_loads(served, trained_cnn):
    port = served.url.rsplit(":", 1)[1]
    result = CliRunner().invoke(app, ["serve", "--model", str(trained_cnn.files.pkl), "--port", port])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.stderr.startswith(f"error: --host 127.0.0.1 --port {port}: cannot listen there")


def test_an_embedding_model_matches_with_its_own_embeddings_and_calibrated_threshold(arcface, groups, tmp_path):
    with running(arcface.files.safetensors, tmp_path / "serve.log", groups) as server:
        health = httpx.get(f"{server.url}/health").json()
        assert health["output"] == "embedding"
        assert health["catalog"]["threshold"] == pytest.approx(arcface.card.matching["threshold"])
        photo = sorted((groups / "train_images").glob("g03_*.jpg"))[-1]  # a val_ photo: of a held-out occasion
        r = httpx.post(f"{server.url}/api/match", files=[("file", (photo.name, photo.read_bytes(), "image/jpeg"))], timeout=120)
        assert r.status_code == 200, r.text
        first = r.json()[0]["nearest"][0]
        assert first["image"] == photo.name and first["similarity"] > 0.99 and first["title"] == "product 3"
        r = httpx.post(f"{server.url}/api/predict", files=[("file", (photo.name, photo.read_bytes(), "image/jpeg"))])
        assert r.status_code == 409 and "embedding model" in r.json()["error"] and "/api/match" in r.json()["error"]
    result = CliRunner().invoke(app, ["serve", "--model", str(arcface.files.safetensors)])
    assert result.exit_code == 2 and "an embedding model finds matches" in result.stderr and "--catalog DIR" in result.stderr


def test_serve_audit_alone_reviews_and_refuses_photos_without_a_model(reviewing, synthetic):
    h = httpx.get(f"{reviewing.url}/health").json()
    assert h["model"] is None and h["review"]["findings"] > 0
    r = httpx.post(f"{reviewing.url}/api/predict", files=photos(synthetic, "3003_001.jpg"), timeout=60)
    assert r.status_code == 404 and "--model" in r.json()["error"]
    assert "Review tab" in reviewing.output()


def test_serve_needs_a_model_or_an_audit_and_names_a_missing_audit(tmp_path):
    r = CliRunner().invoke(app, ["serve"])
    assert r.exit_code == 2 and "--model FILE" in r.stderr and "--audit DIR" in r.stderr
    r = CliRunner().invoke(app, ["serve", "--audit", str(tmp_path), "--port", "0"])
    assert r.exit_code == 2 and "run `shopee-fastai audit" in r.stderr, r.stderr


def _catalogue_and_new(groups, root):
    """The `groups` listings split in two folders over the same photos: a catalogue, and 6 new listings."""
    import pandas as pd

    table = pd.read_csv(groups / "train.csv", dtype=str)
    new = table.groupby("label_group").tail(1).head(6)
    for name, rows in (("cat", table.drop(new.index)), ("new", new)):
        (root / name).mkdir()
        (root / name / "train_images").symlink_to(groups / "train_images")
        rows.to_csv(root / name / "train.csv", index=False)
    return root / "cat", root / "new", list(new["image"])


def _with_card(model, dest, **matching):
    """A copy of the model's files whose card's matching settings say `matching`."""
    import shutil

    files = model.files
    dest.mkdir()
    for f in (files.pkl, files.onnx, files.card):
        shutil.copy(f, dest / f.name)
    card = json.loads(files.card.read_text())
    card["matching"] = {**card["matching"], **matching}
    (dest / files.card.name).write_text(json.dumps(card))
    return dest / files.pkl.name


@pytest.mark.parametrize("card", [dict(threshold=0.999, min2=True), dict(threshold=0.999, min2=True, calibrated=False)],
                         ids=["min2 on", "not calibrated"])
def test_match_catalog_and_the_api_give_the_same_matches(arcface, groups, tmp_path, card):
    """One answer for one model and one photo: `match --catalog` and `/api/match` share the matcher and the card's
    settings (min-2 on: each photo's nearest listing; a card marked not calibrated: the defaults)."""
    import pandas as pd

    cat, new, images = _catalogue_and_new(groups, tmp_path)
    model = _with_card(arcface, tmp_path / "model", **card)
    out = tmp_path / "m.csv"
    r = CliRunner().invoke(app, ["match", "--catalog", str(cat), "--data", str(new), "--model", str(model), "--out", str(out)])
    assert r.exit_code == 0, r.output
    cli = pd.read_csv(out, dtype=str, keep_default_na=False).set_index("posting_id")["matches"].str.split().to_dict()
    ids = pd.read_csv(new / "train.csv", dtype=str).set_index("image")["posting_id"]
    with running(model, tmp_path / "serve.log", cat) as server:
        files = [("file", (n, (groups / "train_images" / n).read_bytes(), "image/jpeg")) for n in images]
        got = httpx.post(f"{server.url}/api/match", files=files, timeout=300)
        assert got.status_code == 200, got.text
        health = httpx.get(f"{server.url}/health").json()["catalog"]
    api = {ids[x["image"]]: x["matches"] for x in got.json()}
    assert {k: sorted(v) for k, v in api.items()} == {k: sorted(v) for k, v in cli.items()}
    if card.get("calibrated", True):
        assert all(len(v) == 1 for v in api.values()) and health["min2"] and health["threshold"] == 0.999
    else:
        assert not health["min2"] and health["threshold"] == 0.6 and "defaults" in health["settings"]
