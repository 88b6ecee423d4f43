"""Fixtures shared by several test modules."""

from pg_server import pg_server

__all__ = ["pg_server"]
