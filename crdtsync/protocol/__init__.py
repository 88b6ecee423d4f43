"""The sync protocol core, with no I/O: binary frames, the events they carry, and the connection state
machine (one transition table) that turns bytes from a peer into events and events into bytes."""

from .connection import CLOSE_CODES, TRANSITIONS, Connection, Direction, Role, State, encode_event
from .events import (
    Ack,
    Acks,
    Bye,
    Change,
    Changes,
    Event,
    Hello,
    Item,
    Live,
    ProtocolError,
    Pull,
    Push,
    Rejection,
    Welcome,
)
from .frames import MAX_FRAME, VERSION, Frame, FrameError, Kind, decode_frame, encode_frame

__all__ = ["CLOSE_CODES", "MAX_FRAME", "TRANSITIONS", "VERSION", "Ack", "Acks", "Bye", "Change", "Changes",
           "Connection", "Direction", "Event", "Frame", "FrameError", "Hello", "Item", "Kind", "Live", "ProtocolError",
           "Pull", "Push", "Rejection", "Role", "State", "Welcome", "decode_frame", "encode_event", "encode_frame"]
