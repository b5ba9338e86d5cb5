"""The kernel websocket class of the local JupyterLab that `nbcloud lab` starts (runs inside that server only).

jupyter_server's `GatewayWebSocketConnection` opens one upstream websocket to the Kernel Gateway per browser
websocket and names it with the browser's session id. JupyterLab often closes a new notebook's first kernel
websocket a millisecond after opening it and opens a second one with the same session id. Two things then go wrong
on the gateway, now and then (seen in CI under load):

- `disconnect()` cancels the pending upstream connect, but cancelling the future does not stop tornado's handshake:
  the first upstream connection opens anyway and nobody closes it. The gateway prepares two connections of one
  session at once, and the live one may never get its `kernel_info_reply` (the kernel shows 'unknown' forever).
- Even with that orphan closed as soon as it opens, the gateway may take the live connection for a reconnect of the
  orphan's session ("Replacing stale connection", then restoring the orphan's half-closed channels), and the first
  `execute_request` is lost.

So this class closes an orphan as soon as its handshake completes, and gives each browser websocket an upstream
session id of its own (the browser's id plus a suffix), so the gateway never confuses two of them. A connection that
re-attaches after a network cut keeps its id, so the gateway still replays what the kernel sent meanwhile.
"""

from __future__ import annotations

import uuid
from typing import Any

from jupyter_server.gateway.connections import GatewayWebSocketConnection

__all__ = ["IsolatedGatewayWebSocketConnection"]


def _close_when_open(future: Any) -> None:
    if future.cancelled() or future.exception() is not None:
        return
    future.result().close()


class IsolatedGatewayWebSocketConnection(GatewayWebSocketConnection):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._upstream_suffix = uuid.uuid4().hex[:12]

    @property
    def session_id(self) -> str:
        """The upstream session id: the browser's, made unique to this websocket (the gateway's view only)."""
        return f"{self.session.session}.{self._upstream_suffix}"

    def disconnect(self) -> None:  # type: ignore[override]  # the gateway class's own is synchronous too
        pending = self.ws_future
        if self.ws is None and pending is not None and not pending.done():
            # not cancel(): that leaves the upstream connection open and unowned once its handshake completes
            self.disconnected = True
            pending.add_done_callback(_close_when_open)
            return
        super().disconnect()
