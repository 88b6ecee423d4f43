"""Sync protocol cores, sans I/O: bytes in, events and bytes out (see STYLE.md)."""

__all__: list[str] = []
