"""The browser dashboard: GET / (the page) and its static files under /static/.

Both are public: they hold no data. The page logs in through POST /api/auth/login and keeps the
token in sessionStorage; everything it shows comes from the authenticated REST routes and Socket.IO.
"""
from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Flask, send_from_directory

PACKAGE_DIR = Path(__file__).resolve().parent

# The app is created with static_folder=None, so the blueprint owns /static.
bp = Blueprint("dashboard", __name__, static_folder="static", static_url_path="/static")


@bp.get("/")
def index():
    """Serve the single-page dashboard."""
    # send_file marks it no-cache (revalidate with the ETag), so an upgrade is picked up at once.
    return send_from_directory(PACKAGE_DIR, "index.html", mimetype="text/html")


def init_app(app: Flask, services) -> None:
    """Register the dashboard blueprint."""
    app.register_blueprint(bp)
