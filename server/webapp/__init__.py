"""The web app (R19): the drive in a browser, served by the API server itself.

Server-rendered pages (Jinja2, autoescaped) with htmx and one small script, all served from
this package (never a CDN), behind the same TLS and load balancer as the API. Every page
goes through the same services as the API routes, as the signed-in device
(`server.webapp.session`); uploads and downloads go through the API's own handlers.
"""

from __future__ import annotations
