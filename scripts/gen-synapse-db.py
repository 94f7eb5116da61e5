#!/usr/bin/env python3
"""Writes a Synapse SQLite database of a given size for the import benchmark
(scripts/bench-import): Synapse's own schema (its `prepare_database`), then users, rooms and
events as Synapse stores them — each event hashed and signed with the server's key by
Synapse's own code, with its state groups, memberships and forward extremities.

Run it with the Python of a Synapse install (scripts/test's venv):

    python scripts/gen-synapse-db.py OUT_DIR [--users 100] [--rooms 200] [--events 200000]

OUT_DIR gets homeserver.db, signing.key and an empty media/ directory; the server name is
bench.local. Nothing here is copied from Synapse: it only calls Synapse's functions.
"""

import argparse
import json
import os
import random
import sqlite3
import sys
import time

import bcrypt
import signedjson.key
from synapse.api.room_versions import KNOWN_ROOM_VERSIONS
from synapse.crypto.event_signing import add_hashes_and_signatures
from synapse.events import make_event_from_dict
from synapse.storage.database import LoggingDatabaseConnection
from synapse.storage.engines import create_engine
from synapse.storage.prepare_database import prepare_database

SERVER = "bench.local"
VERSION = KNOWN_ROOM_VERSIONS["10"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--rooms", type=int, default=200)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--members", type=int, default=10, help="members per room")
    args = parser.parse_args()
    os.makedirs(os.path.join(args.out, "media"), exist_ok=True)
    path = os.path.join(args.out, "homeserver.db")
    if os.path.exists(path):
        os.remove(path)
    key = signedjson.key.generate_signing_key("a_bnch")
    with open(os.path.join(args.out, "signing.key"), "w") as f:
        signedjson.key.write_signing_keys(f, [key])

    engine = create_engine({"name": "sqlite3", "args": {"database": path}})
    conn = LoggingDatabaseConnection(
        conn=sqlite3.connect(path), engine=engine, default_txn_name="gen", server_name=SERVER
    )
    engine.on_new_connection(conn)
    prepare_database(conn, engine, config=None)
    conn.commit()
    db = conn.conn if hasattr(conn, "conn") else conn
    cur = db.cursor()

    started = time.time()
    users = [f"@user{i}:{SERVER}" for i in range(args.users)]
    password = bcrypt.hashpw(b"bench-password", bcrypt.gensalt(4)).decode()
    for i, user in enumerate(users):
        cur.execute(
            "INSERT INTO users (name, password_hash, creation_ts, admin, is_guest, deactivated, approved, locked, suspended) VALUES (?, ?, ?, 0, 0, 0, 1, 0, 0)",
            (user, password, int(started)),
        )
        cur.execute(
            "INSERT INTO profiles (user_id, full_user_id, displayname) VALUES (?, ?, ?)",
            (user.split(":")[0][1:], user, f"User {i}"),
        )
        cur.execute(
            "INSERT INTO devices (user_id, device_id, display_name, last_seen, hidden) VALUES (?, ?, ?, ?, 0)",
            (user, f"DEV{i}", "bench", int(started * 1000)),
        )
        cur.execute(
            "INSERT INTO access_tokens (id, user_id, device_id, token) VALUES (?, ?, ?, ?)",
            (i + 1, user, f"DEV{i}", f"syt_bench_{i}"),
        )

    rng = random.Random(7)
    stream = 0
    group = 0
    per_room = max(args.events // args.rooms, 10)
    total = 0
    ts = int(started * 1000) - args.events * 10
    for r in range(args.rooms):
        creator = users[r % len(users)]
        members = [creator] + rng.sample([u for u in users if u != creator], min(args.members - 1, len(users) - 1))
        room_id = f"!bench{r:04d}{rng.randrange(16**8):08x}:{SERVER}"
        state = {}  # (type, state_key) -> event_id
        orderings = {}  # event_id -> stream ordering
        last = []
        depth = 0
        current_group = None

        def add(kind, sender, content, state_key=None):
            nonlocal stream, group, depth, last, current_group, ts, total
            depth += 1
            ts += 10
            auth = []
            if kind != "m.room.create":
                for k in [("m.room.create", ""), ("m.room.power_levels", ""), ("m.room.member", sender)]:
                    if k in state:
                        auth.append(state[k])
                if kind == "m.room.member" and ("m.room.join_rules", "") in state:
                    auth.append(state[("m.room.join_rules", "")])
            event = {
                "type": kind,
                "sender": sender,
                "content": content,
                "room_id": room_id,
                "auth_events": auth,
                "prev_events": last,
                "depth": depth,
                "origin_server_ts": ts,
            }
            if state_key is not None:
                event["state_key"] = state_key
            add_hashes_and_signatures(VERSION, event, SERVER, key)
            built = make_event_from_dict(event, VERSION)
            event_id = built.event_id
            stream += 1
            if state_key is not None:
                group += 1
                if current_group is not None:
                    cur.execute("INSERT INTO state_group_edges (state_group, prev_state_group) VALUES (?, ?)", (group, current_group))
                    cur.execute(
                        "INSERT INTO state_groups_state (state_group, room_id, type, state_key, event_id) VALUES (?, ?, ?, ?, ?)",
                        (group, room_id, kind, state_key, event_id),
                    )
                else:
                    cur.execute(
                        "INSERT INTO state_groups_state (state_group, room_id, type, state_key, event_id) VALUES (?, ?, ?, ?, ?)",
                        (group, room_id, kind, state_key, event_id),
                    )
                cur.execute("INSERT INTO state_groups (id, room_id, event_id) VALUES (?, ?, ?)", (group, room_id, event_id))
                current_group = group
                state[(kind, state_key)] = event_id
                cur.execute(
                    "INSERT INTO state_events (event_id, room_id, type, state_key) VALUES (?, ?, ?, ?)",
                    (event_id, room_id, kind, state_key),
                )
            cur.execute("INSERT INTO event_to_state_groups (event_id, state_group) VALUES (?, ?)", (event_id, current_group))
            cur.execute(
                "INSERT INTO events (stream_ordering, topological_ordering, event_id, type, room_id, processed, outlier, depth, origin_server_ts, received_ts, sender, contains_url, state_key) VALUES (?, ?, ?, ?, ?, 1, 0, ?, ?, ?, ?, 0, ?)",
                (stream, depth, event_id, kind, room_id, depth, ts, ts, sender, state_key),
            )
            cur.execute(
                "INSERT INTO event_json (event_id, room_id, internal_metadata, json, format_version) VALUES (?, ?, '{}', ?, ?)",
                (event_id, room_id, json.dumps(event, separators=(",", ":"), ensure_ascii=True), VERSION.event_format),
            )
            for prev in last:
                cur.execute("INSERT INTO event_edges (event_id, prev_event_id, room_id, is_state) VALUES (?, ?, ?, 0)", (event_id, prev, room_id))
            if kind == "m.room.member":
                cur.execute(
                    "INSERT INTO room_memberships (event_id, user_id, sender, room_id, membership, event_stream_ordering) VALUES (?, ?, ?, ?, ?, ?)",
                    (event_id, state_key, sender, room_id, content["membership"], stream),
                )
            last = [event_id]
            orderings[event_id] = stream
            total += 1
            return event_id

        add("m.room.create", creator, {"creator": creator, "room_version": "10"}, "")
        add("m.room.member", creator, {"membership": "join", "displayname": creator}, creator)
        add("m.room.power_levels", creator, {"users": {creator: 100}, "users_default": 0, "events_default": 0, "state_default": 50}, "")
        add("m.room.join_rules", creator, {"join_rule": "public"}, "")
        add("m.room.history_visibility", creator, {"history_visibility": "shared"}, "")
        add("m.room.name", creator, {"name": f"Room {r}"}, "")
        for member in members[1:]:
            add("m.room.member", member, {"membership": "join", "displayname": member}, member)
        while total < (r + 1) * per_room:
            sender = rng.choice(members)
            add("m.room.message", sender, {"msgtype": "m.text", "body": f"message {total} in room {r}: " + " ".join(rng.choice(WORDS) for _ in range(8))})
        cur.execute("INSERT INTO rooms (room_id, is_public, creator, room_version, has_auth_chain_index) VALUES (?, 0, ?, '10', 0)", (room_id, creator))
        cur.execute("INSERT INTO event_forward_extremities (event_id, room_id) VALUES (?, ?)", (last[0], room_id))
        for (kind, state_key), event_id in state.items():
            cur.execute(
                "INSERT INTO current_state_events (event_id, room_id, type, state_key, membership, event_stream_ordering) VALUES (?, ?, ?, ?, ?, ?)",
                (event_id, room_id, kind, state_key, "join" if kind == "m.room.member" else None, orderings[event_id]),
            )
        for member in members:
            cur.execute(
                "INSERT INTO local_current_membership (room_id, user_id, event_id, membership, event_stream_ordering) VALUES (?, ?, ?, 'join', ?)",
                (room_id, member, state[("m.room.member", member)], orderings[state[("m.room.member", member)]]),
            )
        if r % 20 == 19:
            db.commit()
            print(f"rooms: {r + 1}/{args.rooms}, events: {total} ({total / (time.time() - started):.0f}/s)", file=sys.stderr)
    db.commit()
    print(f"{args.users} users, {args.rooms} rooms, {total} events in {time.time() - started:.0f} s: {path}", file=sys.stderr)


WORDS = "the a river stone bridge water under over long short bright dark morning evening letter garden window quiet loud green blue".split()

if __name__ == "__main__":
    main()
