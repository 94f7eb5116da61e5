#!/usr/bin/env python3
"""Guest access driven by the real client library matrix-nio.

Run by tests/integration/clients.rs against an in-process culvert with guest registration on:

    nio_guest.py --homeserver URL

Alice registers and makes a world-readable room that lets guests join, and writes in it. A
guest registers (`kind=guest`, raw request: nio has no helper for it), reads the room's state
without joining (peeking), joins, reads Alice's message through its own /sync as nio parses
it, answers, and is refused what guests may not do (creating a room). Prints "nio guest: ok"
and exits 0, or explains on stderr and exits 1.
"""

import argparse
import asyncio
import json
import logging
import sys

from nio import (
    AsyncClient,
    AsyncClientConfig,
    JoinResponse,
    RegisterResponse,
    RoomCreateError,
    RoomCreateResponse,
    RoomGetStateResponse,
    RoomMessageText,
    RoomPreset,
    RoomSendResponse,
    SyncResponse,
)

CONFIG = AsyncClientConfig(max_timeouts=1, max_limit_exceeded=0, request_timeout=30)


def fail(step, got):
    print(f"nio guest: FAILED: {step}: got {got!r}", file=sys.stderr)
    sys.exit(1)


def expect(step, response, kind):
    if not isinstance(response, kind):
        fail(step, response)
    return response


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--homeserver", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    homeserver = args.homeserver.rstrip("/")

    alice = AsyncClient(homeserver, "nioguesthost", config=CONFIG)
    guest = AsyncClient(homeserver, "", config=CONFIG)
    try:
        expect("register alice", await alice.register("nioguesthost", "host-pw-1"), RegisterResponse)
        created = expect(
            "alice creates a world-readable room guests may join",
            await alice.room_create(
                name="open house",
                preset=RoomPreset.public_chat,
                initial_state=[
                    {"type": "m.room.history_visibility", "state_key": "",
                     "content": {"history_visibility": "world_readable"}},
                    {"type": "m.room.guest_access", "state_key": "",
                     "content": {"guest_access": "can_join"}},
                ],
            ),
            RoomCreateResponse,
        )
        room = created.room_id
        expect(
            "alice writes",
            await alice.room_send(room, "m.room.message", {"msgtype": "m.text", "body": "welcome, guests"}),
            RoomSendResponse,
        )

        raw = await guest.send("POST", "/_matrix/client/v3/register?kind=guest", data=json.dumps({}))
        registered = await raw.json()
        if raw.status != 200:
            fail("register a guest", registered)
        guest.restore_login(registered["user_id"], registered["device_id"], registered["access_token"])

        state = expect("the guest peeks at the room's state", await guest.room_get_state(room), RoomGetStateResponse)
        names = [e["content"].get("name") for e in state.events if e["type"] == "m.room.name"]
        if names != ["open house"]:
            fail("the room's name while peeking", names)

        expect("the guest joins", await guest.join(room), JoinResponse)
        for _ in range(6):
            response = expect("guest sync", await guest.sync(timeout=5000), SyncResponse)
            joined = response.rooms.join.get(room)
            if joined and any(
                isinstance(e, RoomMessageText) and e.body == "welcome, guests" for e in joined.timeline.events
            ):
                break
        else:
            fail("the guest reads alice's message", "never arrived through sync")
        expect(
            "the guest answers",
            await guest.room_send(room, "m.room.message", {"msgtype": "m.text", "body": "thanks"}),
            RoomSendResponse,
        )
        refused = expect("a guest may not create rooms", await guest.room_create(name="mine"), RoomCreateError)
        if refused.status_code != "M_GUEST_ACCESS_FORBIDDEN":
            fail("the refusal's errcode", refused.status_code)
        print(f"guest {registered['user_id']} joined, read and wrote")
        print("nio guest: ok")
    finally:
        await alice.close()
        await guest.close()


asyncio.run(main())
