"""Every route of the web app (beside the API's, which keep their paths)."""

from __future__ import annotations

from starlette.routing import BaseRoute

from server.webapp import routes_actions, routes_content, routes_pages

ROUTES: list[BaseRoute] = [*routes_pages.ROUTES, *routes_actions.ROUTES, *routes_content.ROUTES]
