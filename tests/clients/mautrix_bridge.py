"""A small echo bridge built on mautrix-python's AppService, run against culvert by
tests/integration/clients.rs.

The "remote network" is a single ghost user, @echo_ghost:<domain>. When a Matrix user invites
the ghost, the ghost joins; every text message of someone else in a room with the ghost is
answered by the ghost with "echo: <body>", sent with the bridge's as_token and `user_id`
masquerading (and a massaged timestamp, as bridges do for remote messages).

Protocol with the test (one line each on stdout): "bridge: ready" once the bot and the ghost are
registered, "bridge: got <body>" for each message received in a transaction. The bridge exits
when stdin closes.
"""

import argparse
import asyncio
import logging
import sys
import time

from mautrix.appservice import AppService
from mautrix.appservice.state_store import ASStateStore
from mautrix.client.state_store import MemoryStateStore
from mautrix.types import (
    EventType,
    Membership,
    MessageEvent,
    MessageType,
    StateEvent,
    TextMessageEventContent,
)


class MemoryASStateStore(MemoryStateStore, ASStateStore):
    def __init__(self) -> None:
        MemoryStateStore.__init__(self)
        ASStateStore.__init__(self)


def say(line: str) -> None:
    print(line, flush=True)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--homeserver", required=True)
    parser.add_argument("--domain", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--as-token", required=True)
    parser.add_argument("--hs-token", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)

    appservice = AppService(
        server=args.homeserver,
        domain=args.domain,
        as_token=args.as_token,
        hs_token=args.hs_token,
        bot_localpart="echobot",
        id="echo",
        state_store=MemoryASStateStore(),
        ephemeral_events=True,
        default_http_retry_count=5,
    )
    ghost_id = f"@echo_ghost:{args.domain}"

    async def handle(event) -> None:
        if isinstance(event, StateEvent) and event.type == EventType.ROOM_MEMBER:
            if event.state_key == ghost_id and event.content.membership == Membership.INVITE:
                await appservice.intent.user(ghost_id).join_room(event.room_id)
                say(f"bridge: joined {event.room_id}")
            return
        if not isinstance(event, MessageEvent) or event.type != EventType.ROOM_MESSAGE:
            return
        if event.sender in (ghost_id, appservice.bot_mxid):
            return
        body = event.content.body
        say(f"bridge: got {body}")
        ghost = appservice.intent.user(ghost_id)
        await ghost.send_message(
            event.room_id,
            TextMessageEventContent(msgtype=MessageType.TEXT, body=f"echo: {body}"),
            timestamp=int(time.time() * 1000) - 1000,
        )

    appservice.matrix_event_handler(handle)
    await appservice.start(host="127.0.0.1", port=args.port)

    # The bot and the ghost (registered by the bridge with m.login.application_service).
    await appservice.intent.ensure_registered()
    ghost = appservice.intent.user(ghost_id)
    await ghost.ensure_registered()
    await ghost.set_displayname("Echo Ghost")
    whoami = await ghost.whoami()
    assert whoami.user_id == ghost_id, whoami
    say("bridge: ready")

    # Run until the test closes stdin.
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while await reader.readline():
        pass
    await appservice.stop()


if __name__ == "__main__":
    asyncio.run(main())
