"""`serve`: a Gradio page and a JSON API over one trained model (and, optionally, a catalogue to match against).

service.py holds the work (no web code), page.py the Gradio page, server.py the HTTP routes and the server.
Gradio and its web stack are the optional extra `[app]`; nothing outside this package imports them.
"""

from __future__ import annotations

import importlib.util

from ..errors import ShopeeError

INSTALL_HINT = "pip install 'shopee-fastai[app]'"


def require_web_stack() -> None:
    """One line naming the install command when Gradio (and so FastAPI and uvicorn) is missing."""
    missing = [m for m in ("gradio", "fastapi", "uvicorn") if importlib.util.find_spec(m) is None]
    if missing:
        raise ShopeeError(f"serve needs {', '.join(missing)}; install the web extra with `{INSTALL_HINT}`")
