"""The websocket relay and its parts (``yjs``: plain Yjs rooms over the y-websocket protocol)."""

__all__: list[str] = []
