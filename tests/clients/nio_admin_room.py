#!/usr/bin/env python3
"""The admin room driven by the real client library matrix-nio.

Run by tests/integration/clients.rs against an in-process culvert whose admin room is on:

    nio_admin_room.py --homeserver URL

The first account registers (and so is the server's admin), finds the invite to the room
"Admins" in its own /sync as nio parses it, joins, and sends `!admin users create …`; the
server's user answers with a notice (`m.notice`, HTML, replying to the command) that nio
reads through /sync; the account it made logs in. A second account, no admin, may not give
commands. Prints "nio admin room: ok" and exits 0, or explains on stderr and exits 1.
"""

import argparse
import asyncio
import logging
import sys

from nio import (
    AsyncClient,
    AsyncClientConfig,
    InviteMemberEvent,
    JoinResponse,
    LoginResponse,
    RegisterResponse,
    RoomMessageNotice,
    RoomSendResponse,
    SyncResponse,
)

CONFIG = AsyncClientConfig(max_timeouts=1, max_limit_exceeded=0, request_timeout=30)


def fail(step, got):
    print(f"nio admin room: FAILED: {step}: got {got!r}", file=sys.stderr)
    sys.exit(1)


def expect(step, response, kind):
    if not isinstance(response, kind):
        fail(step, response)
    return response


async def answer_to(client, room, event_id, step):
    """Syncs until the server's notice replying to `event_id` arrives; returns it."""
    for _ in range(20):
        response = expect(f"{step}: sync", await client.sync(timeout=3000), SyncResponse)
        joined = response.rooms.join.get(room)
        for event in joined.timeline.events if joined else []:
            relates = event.source.get("content", {}).get("m.relates_to", {})
            if relates.get("m.in_reply_to", {}).get("event_id") == event_id:
                if not isinstance(event, RoomMessageNotice):
                    fail(f"{step}: the answer is a notice", event)
                return event
    fail(step, "no answer through sync")


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--homeserver", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    homeserver = args.homeserver.rstrip("/")

    admin = AsyncClient(homeserver, "nioadmin", config=CONFIG)
    other = AsyncClient(homeserver, "nioother", config=CONFIG)
    made = AsyncClient(homeserver, "niomade", config=CONFIG)
    try:
        expect("register the first account", await admin.register("nioadmin", "admin-pw-1"), RegisterResponse)
        room = None
        for _ in range(20):
            response = expect("sync for the invite", await admin.sync(timeout=3000), SyncResponse)
            for room_id, info in response.rooms.invite.items():
                if any(isinstance(e, InviteMemberEvent) for e in info.invite_state):
                    names = [
                        e.name for e in info.invite_state if getattr(e, "name", None)
                    ]
                    if "Admins" in names:
                        room = room_id
            if room:
                break
        if not room:
            fail("the invite to the admin room", "never arrived")
        expect("join the admin room", await admin.join(room), JoinResponse)

        sent = expect(
            "a command",
            await admin.room_send(
                room,
                "m.room.message",
                {"msgtype": "m.text", "body": "!admin users create niomade --password made-pw-1"},
            ),
            RoomSendResponse,
        )
        answer = await answer_to(admin, room, sent.event_id, "the answer")
        if not answer.sender.startswith("@culvert:") or "Created @niomade:" not in answer.body:
            fail("the answer's sender and body", (answer.sender, answer.body))
        if answer.format != "org.matrix.custom.html" or not answer.formatted_body:
            fail("the answer's HTML", answer.source)
        expect("the new account logs in", await made.login("made-pw-1"), LoginResponse)

        # Someone who is no admin, brought in by the admin, gets no service.
        expect("register a second account", await other.register("nioother", "other-pw-1"), RegisterResponse)
        await admin.room_invite(room, other.user_id)
        expect("the second account joins", await other.join(room), JoinResponse)
        await other.sync(timeout=0)
        sent = expect(
            "a command from someone else",
            await other.room_send(room, "m.room.message", {"msgtype": "m.text", "body": "!admin users list"}),
            RoomSendResponse,
        )
        refusal = await answer_to(other, room, sent.event_id, "the refusal")
        if "Only the server's admins" not in refusal.body:
            fail("the refusal", refusal.body)
        print(f"admin room {room}: command answered, {made.user_id} made, a non-admin refused")
        print("nio admin room: ok")
    finally:
        await admin.close()
        await other.close()
        await made.close()


asyncio.run(main())
