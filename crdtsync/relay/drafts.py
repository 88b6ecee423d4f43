"""The relay's part in the legacy drafts strategies (``lww-record``, ``lww-patch``): the server that replays.

Under those strategies a device does not merge: it writes *drafts* (``@draft\\x1f<writer>\\x1f<t>`` keys,
see ``crdtsync/model/drafts.py``) and shows the server's copy of the record, ``@image``, which only the
server writes. The relay plays that server, exactly as the simulator's server does (``crdtsync/sim/server.py``)
and as docs/strategies.md describes it: right after a device's draft is applied to the relay's copy of the
record (so in arrival order, which is the relay log's order), the relay, as writer ``#server``, replays the
drafts it has not processed yet onto the image with ``DraftRecordDoc.replay`` (whole record or changed
fields, no version or conflict check), and the log stores the draft and then the new image, in one commit,
before the device is acknowledged. Every device, the author included, receives the image.

What a device may write in such a record: only draft keys of its own writer tag (``device`` or
``device#N``), naming its own device (``dv``) and its token's user (``u``); never ``@image``. A draft the
replay rejects (an edit of a record the server deleted or never had) is refused ``gone`` and not stored.
A retried draft is acknowledged and applied once (the log's idempotency keys, and ``replay`` never applies
a draft twice).

Nothing here does I/O: ``RelayLog.stage`` calls these two functions on the record it is staging and turns
a refusal into the change's rejection.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import orjson
from pycrdt import Map

from ..model.drafts import DRAFT, IMAGE, SERVER_WRITER, DraftRecordDoc
from ..model.slots import SEP

__all__ = ["Refusal", "check_draft_keys", "replay_arrived"]

Refusal = tuple[str, str]  # (code, reason), as in an ACK's rejected list


def check_draft_keys(doc: DraftRecordDoc, keys: Sequence[str], own: Callable[[str], bool], device: str,
                     user: str | None) -> Refusal | None:
    """Anti-impersonation for drafts: every key an update set must be a draft of the device's own writer,
    naming the device and (when the relay knows users) the token's user. ``@image`` is the server's alone.

    ``own(writer)`` says whether a writer tag is the device's (the relay log's rule for slots too).
    """
    slots: Map[Any] = doc.doc.get("f", type=Map)
    for key in keys:
        if key == IMAGE:
            return "forbidden", f"writes the server's copy ({IMAGE}): only the relay ({SERVER_WRITER}) may"
        parts = key.split(SEP)
        if len(parts) != 3 or parts[0] != DRAFT:
            return "invalid", f"unexpected key {key!r} in a drafts record"
        writer = parts[1]
        if not own(writer):
            return "forbidden", f"writes the slot of writer {writer!r} ({DRAFT}), not its own"
        raw = slots.get(key)
        if raw is None:
            continue
        try:
            body = orjson.loads(raw) if isinstance(raw, str) else None
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            return "invalid", "a draft is not a JSON object"
        if body.get("dv") != device:
            return "forbidden", f"a draft claims device {body.get('dv')!r}, not {device!r}"
        if user is not None and body.get("u") != user:
            return "forbidden", f"a draft claims user {body.get('u')!r}, but the token is {user!r}'s"
    return None


def replay_arrived(doc: DraftRecordDoc) -> tuple[bytes, Refusal | None]:
    """The server's step after a draft arrived: replay every unprocessed draft onto the image.

    Returns the image update to store and send after the draft (``b""`` if the image did not change),
    or a ``gone`` refusal when a draft edits a record the server deleted or never had (the caller then
    drops the draft and restores the record). The image's time is the latest of the previous image's
    time + 1 and the replayed drafts' times: a hybrid-logical-clock value after everything it covers,
    read from no clock.
    """
    img = doc.image()
    applied = img.applied if img is not None else {}
    fresh = [d.t for d in doc.drafts() if d.t > applied.get(d.writer, 0)]
    if not fresh:
        return b"", None
    t = max([img.t + 1 if img is not None else 1, *fresh])
    replay = doc.replay(t)
    if replay.rejected:
        d = replay.rejected[0]
        what = "deleted on the server" if img is not None else "unknown to the server"
        return b"", ("gone", f"{doc.collection.name}/{doc.id} was {what}: draft {d.op} of {d.writer} "
                             "cannot be applied")
    return replay.update, None
