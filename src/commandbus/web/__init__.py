"""The web dashboard (``commandbus web``): Starlette pages over the public read APIs
and the operator actions, server-rendered with Jinja2 and htmx (vendored in static/).

May import the public API (``commandbus``), monitoring, sagas and the waterfall of
engine.observability; never the engine's write paths or SQL. Nothing imports it but
the command line. Needs the ``commandbus[web]`` extra (Starlette, Jinja2, uvicorn).
"""

from commandbus.web.app import create_app
from commandbus.web.security import Auth

__all__ = ["Auth", "create_app"]
