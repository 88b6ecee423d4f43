"""The relay: websocket server, tokens and grants, and the durable change log."""

from .auth import Grant, Tokens, load_tokens
from .log import RelayLog
from .server import Limits, Relay

__all__ = ["Grant", "Limits", "Relay", "RelayLog", "Tokens", "load_tokens"]
