"""One HTTP server for the page and the JSON API: Gradio's page mounted on a FastAPI app that also routes
`POST /api/predict`, `POST /api/match` and `GET /health`. A bad request gets a 4xx JSON `{"error": ...}`
naming the problem; nothing a client sends stops the server. Only `serve` imports this module (the web extra)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import gradio as gr
import uvicorn
from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.requests import Request  # module level: FastAPI resolves route annotations from module globals
from starlette.responses import JSONResponse

from ..config import SERVE_HOST, SERVE_MAX_BODY, SERVE_NEIGHBOURS, SERVE_PORT, TOP_K
from ..data import table as D
from ..errors import ShopeeError
from .page import CSS, build_page
from .review import Review
from .service import BadInput, Service, Upload, staged

FIELD = "file"  # the multipart field that carries photos, as in `curl -F file=@photo.jpg`
MAX_FILES = 256  # photos per request


def _too_large(limit: int, size: int | None = None) -> BadInput:
    got = f"of {size:,} bytes " if size else ""
    return BadInput(f"request body {got}is over this server's {limit:,}-byte limit; send fewer or smaller photos", 413)


def _json(status: int, body: dict) -> Any:
    return JSONResponse(body, status_code=status)


class BodyLimit:
    """ASGI middleware: refuse a body over `limit` bytes with 413, whether or not the client declared its length."""

    def __init__(self, app, limit: int = SERVE_MAX_BODY):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            e = _too_large(self.limit, int(declared))
            return await _json(e.status, {"error": str(e)})(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:  # a body sent without a length: stop reading at the limit
                raise _too_large(self.limit)
            return message

        await self.app(scope, counted, send)


async def read_uploads(request) -> list[Upload]:
    """The photos in the multipart field `file`, or a BadInput that says what to send instead."""
    kind = request.headers.get("content-type", "")
    if not kind.startswith("multipart/form-data"):
        raise BadInput(f"send photos as multipart/form-data in the field '{FIELD}' (curl -F {FIELD}=@photo.jpg), "
                       f"not {kind or 'a body without a content type'}", 415)
    try:
        form = await request.form(max_files=MAX_FILES, max_fields=MAX_FILES)
    except BadInput:
        raise
    except Exception as e:  # starlette's multipart parser raises its own types for malformed bodies
        raise BadInput(f"unreadable multipart body ({getattr(e, 'detail', None) or e}); send -F {FIELD}=@photo.jpg", 400) from e
    try:
        parts = form.getlist(FIELD)
        files = [p for p in parts if isinstance(p, UploadFile)]
        if not files:
            got = sorted(set(form.keys()))
            what = (f"'{FIELD}' holds text, not a file" if parts else
                    f"no field '{FIELD}'" + (f" (got {', '.join(repr(g) for g in got)})" if got else ""))
            raise BadInput(f"{what}; send each photo as a file in the field '{FIELD}': curl -F {FIELD}=@photo.jpg", 422)
        return [Upload(f.filename or f"upload-{i}", await f.read()) for i, f in enumerate(files)]
    finally:
        await form.close()


def _answer(results: list[dict], failures: list[dict], n: int) -> Any:
    """200 with the list when every photo was read; else 422 naming each unreadable photo (and the rest's results)."""
    if not failures:
        return _json(200, results)  # type: ignore[arg-type]
    first = failures[0]["error"]
    return _json(422, {"error": f"{len(failures)} of {n} file(s) could not be read: {first}",
                       "failures": failures, "results": results})


def create_app(service: Service | None, max_body: int = SERVE_MAX_BODY, review: Review | None = None):
    """The FastAPI app: JSON routes first, the Gradio page at `/`, a body limit around both. Without a model
    (`serve --audit` alone), the page is the Review tab and the photo routes answer 404."""
    api = FastAPI(title="shopee-fastai", docs_url=None, redoc_url=None, openapi_url=None)

    @api.exception_handler(BadInput)
    async def bad_input(request, e: BadInput):
        return _json(e.status, {"error": str(e)})

    @api.exception_handler(Exception)
    async def failed(request, e: Exception):  # a bug, not the client's doing: say so in JSON; uvicorn logs it
        return _json(500, {"error": f"the server failed on this request ({type(e).__name__}); it goes on serving"})

    @api.get("/health")
    def health() -> dict:
        h = service.health() if service is not None else {"status": "ok", "model": None}
        if review is not None:
            done, total = review.progress()
            h["review"] = {"folder": str(review.folder), "findings": total, "decided": done}
        return h

    def need_model() -> Service:
        if service is None:
            raise BadInput("this server reviews an audit and has no model; start it with `serve --model FILE`", 404)
        return service

    async def run(request: Request, work, k_default: int, k_most: int, k_name: str):
        k = Service.check_k(request.query_params.get(k_name, k_default), k_most, k_name)
        uploads = await read_uploads(request)

        def job():
            with staged(uploads) as files:
                return work(files, k)

        return _answer(*await run_in_threadpool(job), len(uploads))

    @api.post("/api/predict")
    async def predict(request: Request):
        model = need_model()
        return await run(request, model.classify, TOP_K, len(model.predictor.vocab), "top_k")

    @api.post("/api/match")
    async def match(request: Request):
        need_model().require_catalog()  # before reading the body: nothing to match against
        return await run(request, service.match, SERVE_NEIGHBOURS, SERVE_NEIGHBOURS * 5, "neighbours")

    allowed = [str(p) for paths in service.examples.values() for p in paths] if service is not None else []
    if service is not None and service.catalog is not None:
        allowed.append(str(service.catalog.image_dir))
    if review is not None:
        allowed += sorted({str(Path(p).parent) for p in review.table[D.PATH]})
    api.add_middleware(BodyLimit, limit=max_body)
    return gr.mount_gradio_app(api, build_page(service, review), path="/", allowed_paths=allowed, max_file_size=max_body,
                               css=CSS, footer_links=[])


def check_address(host: str, port: int) -> None:
    """One line when the server could not listen there, before the model is loaded (a busy port, an unknown host)."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            s.bind((host, port))
    except (OSError, OverflowError) as e:
        raise ShopeeError(f"--host {host} --port {port}: cannot listen there ({getattr(e, 'strerror', None) or e}); "
                          "choose another port, or stop what listens there") from None


def serve(service: Service | None, host: str = SERVE_HOST, port: int = SERVE_PORT, max_body: int = SERVE_MAX_BODY,
          review: Review | None = None) -> None:
    """Serve until Ctrl-C (or SIGTERM)."""
    uvicorn.run(create_app(service, max_body, review), host=host, port=port, log_level="warning")


def describe(service: Service | None, host: str, port: int, review: Review | None = None) -> str:
    """What the server offers, for the command to print."""
    where = f"http://{host}:{port}"
    audit = ""
    if review is not None:
        done, total = review.progress()
        audit = f"review: {total} findings of {review.folder} ({done} decided) in the Review tab; decisions go to {review.fixes_path}\n"
    if service is None:
        return f"serving the review of {review.folder} at {where}/\n{audit}Ctrl-C stops"
    h = service.health()
    cat = f"; catalogue {service.catalog.folder} ({h['catalog']['listings']} listings)" if service.catalog else ""
    what = f"{len(h['classes'])} groups" if service.classifies else "an embedding model"
    routes = [f"POST {where}/api/predict"] * service.classifies + [f"POST {where}/api/match"] * bool(service.catalog)
    why = getattr(service.predictor, "why", None)
    return (f"serving {service.model} ({what}, backend {h['backend']}{cat}) at {where}/\n"
            + (f"model: {why}\n" if why else "") + audit
            + f"JSON: {', '.join(routes)}, GET {where}/health, e.g. curl -F {FIELD}=@photo.jpg {routes[0].split()[1]}\n"
            "Ctrl-C stops")
