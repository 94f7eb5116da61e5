#!/usr/bin/env python3
"""A two-user room scenario driven by the real client library matrix-nio.

Run by tests/integration/clients.rs against an in-process culvert with open registration:

    nio_rooms.py --homeserver URL

Alice and Bob register; Alice creates a room and invites Bob, who sees the invite in his sync
and joins; messages go both ways; Alice changes the topic, redacts a message and types; Bob
sends a read receipt. Every step is observed through the other user's own /sync, as nio parses
it. Prints "nio rooms: ok" and exits 0, or explains on stderr and exits 1.
"""

import argparse
import asyncio
import logging
import sys

from nio import (
    AsyncClient,
    AsyncClientConfig,
    JoinResponse,
    ReceiptEvent,
    RedactionEvent,
    RegisterResponse,
    RoomCreateResponse,
    RoomMessageText,
    RoomPutStateResponse,
    RoomRedactResponse,
    RoomSendResponse,
    RoomTopicEvent,
    RoomTypingResponse,
    SyncResponse,
    TypingNoticeEvent,
    UpdateReceiptMarkerResponse,
)

CONFIG = AsyncClientConfig(max_timeouts=1, max_limit_exceeded=0, request_timeout=30)


def fail(step, got):
    print(f"nio rooms: FAILED: {step}: got {got!r}", file=sys.stderr)
    sys.exit(1)


def expect(step, response, kind):
    if not isinstance(response, kind):
        fail(step, response)
    return response


async def sync(client, step):
    return expect(step, await client.sync(timeout=5000), SyncResponse)


async def wait_for(client, room_id, step, predicate, ephemeral=False):
    """Syncs until an event in the room's timeline (or ephemeral events) satisfies predicate."""
    for _ in range(6):
        response = await sync(client, step)
        room = response.rooms.join.get(room_id)
        if room is None:
            continue
        events = room.ephemeral if ephemeral else room.timeline.events
        for event in events:
            if predicate(event):
                return event
    fail(step, "the event never arrived through sync")


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--homeserver", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    homeserver = args.homeserver.rstrip("/")

    alice = AsyncClient(homeserver, "nioalice", config=CONFIG)
    bob = AsyncClient(homeserver, "niobob", config=CONFIG)
    try:
        expect("register alice", await alice.register("nioalice", "alice-pw-1"), RegisterResponse)
        expect("register bob", await bob.register("niobob", "bob-pw-1"), RegisterResponse)
        await sync(alice, "alice first sync")
        await sync(bob, "bob first sync")

        created = expect(
            "create room",
            await alice.room_create(name="nio room", invite=[bob.user_id]),
            RoomCreateResponse,
        )
        room = created.room_id

        for _ in range(6):
            response = await sync(bob, "bob sees the invite")
            if room in response.rooms.invite:
                break
        else:
            fail("bob sees the invite", "no invite in sync")
        expect("bob joins", await bob.join(room), JoinResponse)

        first = expect(
            "alice sends",
            await alice.room_send(room, "m.room.message", {"msgtype": "m.text", "body": "hello bob"}),
            RoomSendResponse,
        )
        await wait_for(bob, room, "bob receives", lambda e: isinstance(e, RoomMessageText) and e.body == "hello bob")
        expect(
            "bob sends",
            await bob.room_send(room, "m.room.message", {"msgtype": "m.text", "body": "hello alice"}),
            RoomSendResponse,
        )
        await wait_for(alice, room, "alice receives", lambda e: isinstance(e, RoomMessageText) and e.body == "hello alice")

        expect("topic", await alice.room_put_state(room, "m.room.topic", {"topic": "nio topic"}), RoomPutStateResponse)
        await wait_for(bob, room, "bob sees the topic", lambda e: isinstance(e, RoomTopicEvent) and e.topic == "nio topic")

        expect("redact", await alice.room_redact(room, first.event_id, reason="oops"), RoomRedactResponse)
        await wait_for(bob, room, "bob sees the redaction", lambda e: isinstance(e, RedactionEvent) and e.redacts == first.event_id)

        expect("typing", await alice.room_typing(room, True, 30000), RoomTypingResponse)
        await wait_for(
            bob, room, "bob sees alice typing",
            lambda e: isinstance(e, TypingNoticeEvent) and alice.user_id in e.users, ephemeral=True,
        )

        last = expect(
            "alice sends again",
            await alice.room_send(room, "m.room.message", {"msgtype": "m.text", "body": "read this"}),
            RoomSendResponse,
        )
        expect("receipt", await bob.update_receipt_marker(room, last.event_id), UpdateReceiptMarkerResponse)
        await wait_for(
            alice, room, "alice sees bob's receipt",
            lambda e: isinstance(e, ReceiptEvent)
            and any(r.user_id == bob.user_id and r.event_id == last.event_id for r in e.receipts),
            ephemeral=True,
        )
    except SystemExit:
        raise
    except Exception as error:  # a transport error, for instance
        fail("talking to the homeserver", f"{type(error).__name__}: {error}")
    finally:
        await alice.close()
        await bob.close()
    print("nio rooms: ok")


if __name__ == "__main__":
    asyncio.run(main())
