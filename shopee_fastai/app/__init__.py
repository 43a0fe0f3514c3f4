"""`serve`: a Gradio page and a JSON API over one trained model (and, optionally, a catalogue to match against).

service.py holds the work (no web code), page.py the Gradio page, server.py the HTTP routes and the server.
Gradio and its web stack are the optional extra `[app]`; nothing outside this package imports them.
"""

from __future__ import annotations

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
