"""`serve`: a Gradio page and a JSON API over one trained model (and, optionally, a catalogue to match against).

service.py holds the work (no web code), page.py the Gradio page, server.py the HTTP routes and the server.
Gradio and its web stack are the optional extra `[app]`; nothing outside this package imports them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..errors import ShopeeError

INSTALL_HINT = "pip install 'shopee-fastai[app]'"


def require_web_stack() -> None:
    """One line naming the install command when Gradio (and with it FastAPI and uvicorn) cannot be imported."""
    try:  # the check itself: nothing outside server.py and page.py imports the optional web stack
        import fastapi  # noqa: F401
        import gradio  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise ShopeeError(f"serve needs {e.name or 'gradio'}, which is not installed; install the web extra with "
                          f"`{INSTALL_HINT}`") from None


def serve(model: Path | None, catalog: Path | None, audit: Path | None, host: str, port: int,
          say: Callable[[str], None] = print) -> None:
    """`serve`: refuse what cannot run, load the model and the review, `say` where the page is, serve until stopped."""
    if model is None and audit is None:
        raise ShopeeError("serve needs --model FILE (classify, match) or --audit DIR (review an audit's findings)")
    if model is None and catalog is not None:
        raise ShopeeError("--catalog matches photos with a model's embeddings; add --model FILE")
    require_web_stack()
    # the optional web stack: only once it is known to be installed
    from .review import Review
    from .server import check_address, describe, serve as run
    from .service import Service

    check_address(host, port)
    review = Review.load(audit) if audit is not None else None
    service = Service.load(model, catalog) if model is not None else None
    say(describe(service, host, port, review))
    run(service, host, port, review=review)
