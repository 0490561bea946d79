"""The review console mounted at /console (see proxy.console.app)."""

from proxy.console.app import build_console

__all__ = ["build_console"]
