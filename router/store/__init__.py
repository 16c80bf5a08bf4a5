"""Store backends, looked up by the scheme of ROUTER_STORE_URL."""

from __future__ import annotations

from router.store.base import Store

SCHEMES = ("sqlite", "postgresql", "postgres")


def open_store(url: str) -> Store:
    """Build (not yet open) the store for `url`: sqlite:///PATH or postgresql://…"""
    scheme = url.split(":", 1)[0].lower()
    if scheme == "sqlite":
        from router.store.sqlite import SQLiteStore

        return SQLiteStore(url)
    if scheme in ("postgresql", "postgres"):
        from router.store.postgres import PostgresStore

        return PostgresStore(url)
    raise ValueError(f"unknown store URL scheme {scheme!r}; use sqlite:///PATH or postgresql://…")
