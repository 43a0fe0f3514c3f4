"""The Gradio page: classify photos (top groups with titles, example training photos, a CSV to download), with a
catalogue find a photo's matching listings, and with an audit review its findings one at a time. Every
problem with a photo is shown on the page. Only server.py imports this module (the web extra)."""

from __future__ import annotations

import csv
import html
import io
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

import gradio as gr
from gradio.utils import get_upload_folder

from ..config import SERVE_NEIGHBOURS, TOP_K
from ..errors import ShopeeError
from ..inference.predictions import display_name
from ..io import write_text
from .review import Review
from .service import Service

CACHE = (3600, 3600)  # every hour Gradio drops uploads and CSVs over an hour old from its cache; at shutdown, all
EXAMPLE_GROUPS = 4  # predicted groups whose training photos are shown
CSS = """
.shopee-error { color: #b00020; font-weight: 600; }
.shopee-results table { border-collapse: collapse; margin-bottom: 0.8em; }
.shopee-results td, .shopee-results th { padding: 2px 10px; text-align: left; }
"""


def _errors_html(failures: Sequence[dict]) -> str:
    return "".join(f'<p class="shopee-error">error: {html.escape(f["error"])}</p>' for f in failures)


def results_html(results: Sequence[dict], failures: Sequence[dict]) -> str:
    """One table per photo: rank, group, title, probability; then one red line per photo that could not be read."""
    parts = []
    for r in results:
        rows = "".join(f"<tr><td>{i}</td><td class='group'>{html.escape(p['label_group'])}</td>"
                       f"<td>{html.escape(p.get('title', ''))}</td><td>{p['probability']:.3f}</td></tr>"
                       for i, p in enumerate(r["predictions"], 1))
        parts.append(f"<h4>{html.escape(r['image'])}</h4><table><tr><th>#</th><th>label group</th><th>title</th>"
                     f"<th>probability</th></tr>{rows}</table>")
    return f'<div class="shopee-results">{"".join(parts)}{_errors_html(failures)}</div>'


def matches_html(results: Sequence[dict], failures: Sequence[dict]) -> str:
    parts = []
    for r in results:
        rows = "".join(f"<tr><td>{html.escape(n['posting_id'])}</td><td>{html.escape(n['title'])}</td>"
                       f"<td>{n['similarity']:.3f}</td><td>{'match' if n['match'] else ''}</td></tr>" for n in r["nearest"])
        parts.append(f"<h4>{html.escape(r['image'])}: {len(r['matches'])} listing(s) at similarity ≥ {r['threshold']:.2f}</h4>"
                     f"<table><tr><th>posting</th><th>title</th><th>similarity</th><th></th></tr>{rows}</table>")
    return f'<div class="shopee-results">{"".join(parts)}{_errors_html(failures)}</div>'


def predictions_csv(results: Sequence[dict]) -> str:
    """The batch's predictions as a CSV for the page's download link, written inside Gradio's cache so that its
    delete_cache removes it with the uploads (uvicorn ends on SIGTERM by the signal: no exit hook of ours runs)."""
    buf = io.StringIO()
    out = csv.writer(buf)
    out.writerow(["image", "rank", "label_group", "title", "probability"])
    for r in results:
        for i, p in enumerate(r["predictions"], 1):
            out.writerow([r["image"], i, p["label_group"], p.get("title", ""), p["probability"]])
    folder = Path(get_upload_folder()) / "shopee-fastai"
    folder.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(suffix=".csv", prefix="predictions-", dir=folder)
    os.close(fd)
    write_text(Path(name), buf.getvalue())
    return name


def _inputs(files: Sequence[Any] | None, pasted: str | None) -> list[tuple[str, Path]]:
    """(shown name, file) for every photo given: uploaded files keep their names, a pasted one is 'pasted photo'."""
    paths = [Path(f if isinstance(f, str) else f.name) for f in files or []]
    return [(p.name, p) for p in paths] + ([("pasted photo", Path(pasted))] if pasted else [])


def finding_html(card: dict | None, done: int, total: int, fixes: Path) -> str:
    """A finding in words, or the end of the review."""
    if card is None:
        return (f'<div class="shopee-results"><p id="review-done">All {total} findings decided; apply them with '
                f"<code>shopee-fastai audit --data DATA --apply {html.escape(str(fixes))} --out CLEANED</code></p></div>")
    e = lambda k: html.escape(str(card[k]))  # noqa: E731
    return (f'<div class="shopee-results"><p>finding {card["row"] + 1} of {total} · {done} decided</p>'
            f'<h4 id="review-kind">{e("kind")} · score {card["score"]:.3f} · {e("method")}</h4>'
            f"<table><tr><th>listing</th><td id='review-posting'>{e('posting_id') or '(the whole group)'}</td></tr>"
            f"<tr><th>given group</th><td>{e('given')} {e('given_title')}</td></tr>"
            f"<tr><th>suggested</th><td>{e('suggested')} {e('suggested_title')} ({e('proposed')})</td></tr></table></div>")


def review_tab(review: Review):
    """Inside a gr.Tabs: the Review tab, whose buttons write fixes.csv and bring the next undecided finding."""
    def render(i):
        done, total = review.progress()
        if i is None:
            return finding_html(None, done, total, review.fixes_path), [], None
        card = review.card(i)
        shown = [(str(card["photo"]), f"this listing · {card['given']}")] if card["photo"] else []
        shown += [(str(p), f"given {card['given']}") for p in card["given_photos"]]
        shown += [(str(p), f"suggested {card['suggested']}") for p in card["suggested_photos"]]
        return finding_html(card, done, total, review.fixes_path), shown, i

    def act(i, action):
        if i is None:
            return render(None)
        try:
            return render(review.decide(i, review.card(i)["proposed"] if action == "accept" else action))
        except ShopeeError as e:
            page, shown, _ = render(i)
            return _errors_html([{"error": str(e)}]) + page, shown, i

    with gr.Tab("Review", id="review", elem_id="tab-review"):
        state = gr.State(None)
        info = gr.HTML(elem_id="review-finding")
        photos = gr.Gallery(label="the listing, its given group, the suggested group", columns=7, height=240,
                            elem_id="review-photos")
        with gr.Row():
            keep = gr.Button("Keep as filed", elem_id="review-keep")
            accept = gr.Button("Relabel / merge as suggested", variant="primary", elem_id="review-relabel")
            drop = gr.Button("Drop the listing", variant="stop", elem_id="review-drop")
        for button, action in ((keep, "keep"), (accept, "accept"), (drop, "drop")):
            button.click(lambda i, a=action: act(i, a), state, [info, photos, state], api_name=False)
    return lambda: render(review.next_open()), [info, photos, state]


def build_page(service: Service | None, review: Review | None = None):
    """The Blocks app; the caller mounts it (server.py). Without a model, the Review tab alone."""
    if service is None:
        with gr.Blocks(title="shopee-fastai: review", analytics_enabled=False, delete_cache=CACHE) as page:
            gr.Markdown(f"## Review of {html.escape(str(review.folder))}")
            with gr.Tabs(selected="review"):
                first, outputs = review_tab(review)
            page.load(first, None, outputs)
        return page
    titles = service.titles

    def classify(files, pasted, k):
        photos = _inputs(files, pasted)
        if not photos:
            return '<p class="shopee-error">error: no photo given; drop, paste or choose one first</p>', [], None
        try:
            results, failures = service.classify(photos, service.check_k(k, len(service.predictor.vocab)))
        except ShopeeError as e:
            return _errors_html([{"error": str(e)}]), [], None
        groups = list(dict.fromkeys(r["predictions"][0]["label_group"] for r in results))[:EXAMPLE_GROUPS]
        gallery = [(str(p), display_name(g, titles)) for g in groups for p in service.examples.get(g, [])]
        return results_html(results, failures), gallery, predictions_csv(results) if results else None

    def find(files, k):
        photos = _inputs(files, None)
        if not photos:
            return '<p class="shopee-error">error: no photo given; drop or choose one first</p>', []
        try:
            results, failures = service.match(photos, service.check_k(k, SERVE_NEIGHBOURS * 5, "neighbours"))
        except ShopeeError as e:
            return _errors_html([{"error": str(e)}]), []
        cat = service.catalog
        thumbs = [(str(cat.path_of(n["image"])), f"{n['posting_id']} · {n['similarity']:.2f}{' ✓' if n['match'] else ''}")
                  for r in results[:1] for n in r["nearest"]]
        return matches_html(results, failures), thumbs

    health = service.health()
    what = f"{len(health['classes'])} label groups" if service.classifies else "an embedding model (matches only)"
    with gr.Blocks(title=f"shopee-fastai: {health['model']}", analytics_enabled=False, delete_cache=CACHE) as page:
        gr.Markdown(f"## {html.escape(health['model'])}\n{what} · backend {health['backend']}"
                    + (f" · catalogue of {health['catalog']['listings']} listings" if health["catalog"] else ""))
        with gr.Tabs(selected="review" if review else "classify" if service.classifies else "match"):
            with gr.Tab("Classify", id="classify", elem_id="tab-classify", visible=service.classifies):
                with gr.Row():
                    with gr.Column():
                        files = gr.File(file_count="multiple", label="Photos (drop or choose one or many)",
                                        elem_id="classify-files")
                        pasted = gr.Image(type="filepath", sources=["clipboard", "upload"], label="…or paste a photo",
                                          elem_id="classify-paste")
                        k = gr.Number(value=TOP_K, precision=0, label="groups per photo", minimum=1)
                        go = gr.Button("Classify", variant="primary", elem_id="classify-button")
                    with gr.Column():
                        out = gr.HTML(elem_id="classify-results")
                        examples = gr.Gallery(label="training photos of the predicted groups", columns=3, height=260,
                                              elem_id="classify-examples")
                        download = gr.File(label="predictions (CSV)", elem_id="classify-csv")
                go.click(classify, [files, pasted, k], [out, examples, download], api_name=False)
            if service.catalog is not None:
                with gr.Tab("Find matches", id="match", elem_id="tab-match"):
                    with gr.Row():
                        with gr.Column():
                            query = gr.File(file_count="multiple", label="Photo(s) of a product", elem_id="match-files")
                            n = gr.Number(value=SERVE_NEIGHBOURS, precision=0, label="listings per photo", minimum=1)
                            search = gr.Button("Find matches", variant="primary", elem_id="match-button")
                        with gr.Column():
                            found = gr.HTML(elem_id="match-results")
                            thumbs = gr.Gallery(label="nearest listings (✓: passes the match threshold)", columns=4,
                                                height=320, elem_id="match-gallery")
                    search.click(find, [query, n], [found, thumbs], api_name=False)
            if review is not None:
                first, outputs = review_tab(review)
        if review is not None:
            page.load(first, None, outputs)
    return page
