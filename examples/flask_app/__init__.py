"""The dedupkit example: a Flask app with a manual trigger, its scheduler and worker task."""

from .app import create_app

__all__ = ["create_app"]
