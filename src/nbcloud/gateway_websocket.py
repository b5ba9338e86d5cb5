"""The kernel websocket class of the local JupyterLab that `nbcloud lab` starts (runs inside that server only).

jupyter_server's `GatewayWebSocketConnection` opens one upstream websocket to the Kernel Gateway per browser
websocket. JupyterLab often closes its first kernel websocket a millisecond after opening it (a new notebook
connects twice); `disconnect()` then cancels the pending upstream connect, but cancelling the future does not stop
tornado's handshake: the upstream connection opens anyway, nobody closes it, and it stays open on the gateway under
the same session id as the browser's second websocket. The gateway then prepares two connections of one session at
once, and now and then the live one never gets its `kernel_info_reply`: the notebook's kernel shows 'unknown'
forever (seen in CI about one run in five).

This class closes such an orphan as soon as its handshake completes, and a new upstream connection of the same
kernel session waits for the previous handshake first, so the gateway sees them one after the other: the orphan is
then an ordinary stale connection that the gateway replaces.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, ClassVar

from jupyter_server.gateway.connections import GatewayWebSocketConnection

__all__ = ["SequentialGatewayWebSocketConnection"]

# A handshake stuck longer than this is not worth waiting for: the gateway's own stale-session handling remains.
_WAIT_FOR_EARLIER_S = 10.0


def _close_when_open(future: Any) -> None:
    if future.cancelled() or future.exception() is not None:
        return
    future.result().close()


class SequentialGatewayWebSocketConnection(GatewayWebSocketConnection):
    _handshakes: ClassVar[dict[str, Any]] = {}

    def _session_key(self) -> str:
        return f"{self.kernel_id}:{self.session_id}"

    async def connect(self) -> None:
        key = self._session_key()
        earlier = self._handshakes.get(key)
        if earlier is not None and not earlier.done():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(earlier), _WAIT_FOR_EARLIER_S)
        await super().connect()
        handshake = self.ws_future
        if handshake is not None:
            self._handshakes[key] = handshake
            handshake.add_done_callback(lambda future: self._forget(key, future))

    def _forget(self, key: str, future: Any) -> None:
        if self._handshakes.get(key) is future:
            del self._handshakes[key]

    def disconnect(self) -> None:  # type: ignore[override]  # the gateway class's own is synchronous too
        pending = self.ws_future
        if self.ws is None and pending is not None and not pending.done():
            # not cancel(): that leaves the upstream connection open and unowned once its handshake completes
            self.disconnected = True
            pending.add_done_callback(_close_when_open)
            return
        super().disconnect()
