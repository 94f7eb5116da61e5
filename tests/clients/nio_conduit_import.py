#!/usr/bin/env python3
"""Checks, through the client-server API, a culvert that imported the Conduit fixture database.

    nio_conduit_import.py --homeserver URL --manifest PATH/manifest.json [--part basic|all]
                          [--no-e2ee] [--admin-room]

Every expected value comes from the fixture's manifest.json (shared/fixtures/conduit/). Part
`basic`: password logins (a wrong password refused), every device's access token (whoami, the
device list), profiles, and each media item through the authenticated download. Part `all` (the
default) adds the rooms (members, state, `/messages` counts by type, the lobby's messages, edit,
reaction, redaction and thread reply, the alias, the room directory), the account data (global,
tags, push rule, filter) and, unless --no-e2ee, the E2EE data: the key backup, the pending
to-device message, device keys and one-time key counts, and the encrypted room decrypted with
copies of the fixture's nio stores (where matrix-nio has its e2e extra). Conduit's own admin
room is checked only with --admin-room (culvert's import leaves it out on purpose).

The checks change nothing lasting: their logins are logged out again, and the to-device message
is fetched by a /sync whose next_batch is never used, so it stays pending for the next run.
Prints "conduit import: ok" and exits 0, or explains on stderr and exits 1.
"""

import argparse
import asyncio
import hashlib
import json
import logging
import shutil
import stat
import sys
import tempfile
from collections import Counter
from pathlib import Path
from urllib.parse import quote

import aiohttp
from nio import (
    AsyncClient,
    AsyncClientConfig,
    ErrorResponse,
    JoinedMembersResponse,
    LoginError,
    LoginResponse,
    MegolmEvent,
    MemoryDownloadResponse,
    ProfileGetResponse,
    RoomMessagesResponse,
    RoomResolveAliasResponse,
    WhoamiResponse,
)
from nio.crypto import ENCRYPTION_ENABLED
from nio.responses import PublicRoomsResponse

# A few 429s are waited out: culvert limits logins per client address (a burst of 10 by
# default), and this script makes six.
LIMITS = dict(max_timeouts=1, max_limit_exceeded=3, request_timeout=30)
CONFIG = AsyncClientConfig(**LIMITS)
V3 = "/_matrix/client/v3"


def fail(step, expected, got):
    print(f"conduit import: FAILED: {step}: expected {expected!r}, got {got!r}", file=sys.stderr)
    sys.exit(1)


def check(step, expected, got):
    if expected != got:
        fail(step, expected, got)


def expect(step, response, kind):
    if not isinstance(response, kind):
        if isinstance(response, ErrorResponse):
            response = f"{type(response).__name__}: {response.status_code} {response.message}"
        fail(step, kind.__name__, response)
    return response


def contains(expected, got):
    """Whether got has every field of expected, with the same value (recursively)."""
    if isinstance(expected, dict):
        return isinstance(got, dict) and all(k in got and contains(v, got[k]) for k, v in expected.items())
    return expected == got


def note(text):
    print(f"conduit import: note: {text}")


def q(value):
    return quote(value, safe="")


class Fixture:
    """The manifest, with the look-ups the checks need."""

    def __init__(self, path):
        self.dir = Path(path).resolve().parent
        self.m = json.loads(Path(path).read_text())
        self.users = {name: u for name, u in self.m["users"].items() if u.get("devices")}
        self.by_id = {u["user_id"]: u for u in self.users.values()}
        self.first_user = next(iter(self.by_id))

    def device(self, user_id, e2ee=None, device_id=None):
        """The user's first device (with e2ee=True/False: with/without keys; or the one named)."""
        for device in self.by_id.get(user_id, {}).get("devices", []):
            if (e2ee is None or ("e2ee" in device) == e2ee) and device_id in (None, device["device_id"]):
                return device
        fail("the manifest", f"a device of {user_id}", None)

    def token(self, user_id):
        return self.device(user_id)["access_token"]


class Api:
    """Raw client-server API requests with a bearer token, through plain aiohttp (as nio uses)."""

    def __init__(self, homeserver, session):
        self.homeserver, self.session = homeserver, session

    async def call(self, step, method, path, token, body=None, params=None):
        headers = {"Authorization": f"Bearer {token}"}
        url = self.homeserver + path
        async with self.session.request(method, url, json=body, params=params, headers=headers) as response:
            text = await response.text()
            if response.status != 200:
                fail(step, f"200 from {method} {path}", f"{response.status} {text[:300]}")
            return json.loads(text)

    async def get(self, step, path, token, **params):
        return await self.call(step, "GET", path, token, params=params)

    async def post(self, step, path, token, body):
        return await self.call(step, "POST", path, token, body=body)


class Clients:
    """nio clients, mostly restored from the manifest's access tokens, closed together."""

    def __init__(self, homeserver):
        self.homeserver, self.all = homeserver, []

    def new(self, user_id, config=CONFIG, **kwargs):
        client = AsyncClient(self.homeserver, user_id, config=config, **kwargs)
        self.all.append(client)
        return client

    def restored(self, fx, user_id, device=None, **kwargs):
        device = device or fx.device(user_id)
        client = self.new(user_id, device_id=device["device_id"], **kwargs)
        client.restore_login(user_id, device["device_id"], device["access_token"])
        return client

    async def close(self):
        for client in self.all:
            await client.close()


# ---- part basic ------------------------------------------------------------------------------


async def check_logins(fx, clients):
    for user in fx.m["users"].values():
        uid = user["user_id"]
        if not user.get("password"):
            note(f"{uid} has no password in the manifest: not logging in")
            continue
        client = clients.new(uid)
        wrong = await client.login(user["password"] + "-wrong", device_name="culvert import check")
        expect(f"{uid} logs in with a wrong password", wrong, LoginError)
        login = await client.login(user["password"], device_name="culvert import check")
        check(f"{uid} logs in", uid, expect(f"{uid} logs in", login, LoginResponse).user_id)
        await client.logout()  # leaves no device behind


async def check_tokens(fx, clients, api):
    for uid, user in fx.by_id.items():
        for device in user["devices"]:
            step = f"whoami with the token of {uid}'s device {device['device_id']}"
            who = expect(step, await clients.restored(fx, uid, device).whoami(), WhoamiResponse)
            check(step, (uid, device["device_id"]), (who.user_id, who.device_id))
        listed = await api.get(f"{uid}'s devices", f"{V3}/devices", fx.token(uid))
        names = {d["device_id"]: d.get("display_name") for d in listed.get("devices", [])}
        for device in user["devices"]:
            check(f"{uid}'s device {device['device_id']} in GET /devices: its display name",
                  device["display_name"], names.get(device["device_id"], "(no such device)"))


async def check_profiles(fx, client):
    for uid, user in fx.by_id.items():
        profile = expect(f"{uid}'s profile", await client.get_profile(uid), ProfileGetResponse)
        check(f"{uid}'s profile: displayname and avatar_url", (user["displayname"], user.get("avatar_url")),
              (profile.displayname, profile.avatar_url))


async def check_media(fx, clients):
    for item in fx.m["media"]:
        step = f"download of {item['mxc']} ({item['filename']})"
        client = clients.restored(fx, item["uploader"])
        got = expect(step, await client.download(mxc=item["mxc"]), MemoryDownloadResponse)
        check(f"{step}: size, sha256, content type, file name",
              (item["size"], item["sha256"], item["content_type"], item["filename"]),
              (len(got.body), hashlib.sha256(got.body).hexdigest(), got.content_type, got.filename))


# ---- part all: rooms -------------------------------------------------------------------------

# What the manifest says of a room, and where its state has it: (field, event type, content key).
STATE = [
    ("name", "m.room.name", "name"),
    ("topic", "m.room.topic", "topic"),
    ("join_rule", "m.room.join_rules", "join_rule"),
    ("canonical_alias", "m.room.canonical_alias", "alias"),
    ("room_type", "m.room.create", "type"),
]


async def timeline(client, room_id, step):
    """The room's whole `/messages` history, oldest first, as nio parsed it."""
    events, token = [], None
    for _ in range(100):
        page = await client.room_messages(room_id, start=token, limit=100)
        page = expect(step, page, RoomMessagesResponse)
        events.extend(page.chunk)
        if not page.chunk or not page.end or page.end == token:
            break
        token = page.end
    return list(reversed(events))


async def check_room(fx, clients, api, key, room, member):
    room_id, step = room["room_id"], f"room {key} ({room['room_id']})"
    client = clients.restored(fx, member)
    joined = expect(f"{step}: joined_members", await client.joined_members(room_id), JoinedMembersResponse)
    joined = sorted(m.user_id for m in joined.members)
    if "members" in room:
        check(f"{step}: joined members", sorted(room["members"]), joined)
    elif member not in joined:
        fail(f"{step}: joined members", f"{member} among them", joined)

    events = await api.get(f"{step}: state", f"{V3}/rooms/{q(room_id)}/state", fx.token(member))
    state = {(e["type"], e.get("state_key")): e for e in events}
    content = lambda kind, key="": state.get((kind, key), {}).get("content", {})  # noqa: E731
    for field, kind, name in STATE:
        if field in room:
            check(f"{step}: {name} in {kind}", room[field], content(kind).get(name))
    if "encryption" in room:
        check(f"{step}: m.room.encryption", room["encryption"]["algorithm"],
              content("m.room.encryption").get("algorithm"))
    if "creator" in room:
        check(f"{step}: m.room.create's sender", room["creator"], state.get(("m.room.create", ""), {}).get("sender"))
    for child, expected in room.get("children", {}).items():
        check(f"{step}: m.space.child {child}", expected["content"], content("m.space.child", child))
    if "alias" in room:
        resolved = expect(room["alias"], await client.room_resolve_alias(room["alias"]), RoomResolveAliasResponse)
        check(f"{room['alias']} resolves", room_id, resolved.room_id)

    history = await timeline(client, room_id, f"{step}: /messages")
    counts, want = Counter(e.source.get("type") for e in history), room["observed_messages_api_counts"]
    if counts != want:
        differ = {kind: (want.get(kind, 0), counts.get(kind, 0)) for kind in want.keys() | counts.keys()}
        fail(f"{step}: /messages events by type, as (expected, got)", "the manifest's counts",
             {kind: pair for kind, pair in differ.items() if pair[0] != pair[1]})
    by_id = {e.source.get("event_id"): e.source for e in history}
    for message in room.get("messages", []):  # the DM's and the encrypted room's
        event = by_id.get(message["event_id"], {})
        got = event.get("content", {})
        if "msgtype" in message:
            check(f"{step}: {message['event_id']}: sender, msgtype, body",
                  (message["sender"], message["msgtype"], message["body"]),
                  (event.get("sender"), got.get("msgtype"), got.get("body")))
        if "session_id" in message:
            check(f"{step}: {message['event_id']}: sender, megolm session, device",
                  (message["sender"], message["session_id"], message["sender_device"]),
                  (event.get("sender"), got.get("session_id"), got.get("device_id")))
    for item in fx.m["media"]:
        shared = item.get("shared_in", {})
        if shared.get("room_id") == room_id:
            url = by_id.get(shared["event_id"], {}).get("content", {}).get("url")
            check(f"{step}: the url in {shared['event_id']}", item["mxc"], url)
    if key == "lobby":
        check_lobby(room, history, by_id)


def check_lobby(room, history, by_id):
    def text(event_id):
        event = by_id.get(event_id, {})
        return event.get("sender"), event.get("content", {}).get("body")

    for name in ("first_message", "last_message"):
        want = room[name]
        check(f"lobby: {name} {want['event_id']}", (want["sender"], want["body"]), text(want["event_id"]))
    order = [e.source.get("event_id") for e in history]
    positions = []
    for message in room["plain_messages"]:
        if message["event_id"] not in by_id:
            fail(f"lobby: plain message {message['index']}", message["event_id"], "not in /messages")
        positions.append(order.index(message["event_id"]))
        if not message.get("redacted"):  # the redacted one is checked with the redaction
            check(f"lobby: message {message['event_id']}", (message["sender"], message["body"]),
                  text(message["event_id"]))
    check("lobby: the plain messages' places in /messages", sorted(positions), positions)

    def relation(name, kind):
        want = room[name]
        event = by_id.get(want["event_id"])
        if event is None:
            fail(f"lobby: the {name}", want["event_id"], "not in /messages")
        check(f"lobby: the {name}'s type and sender", (kind, want["sender"]), (event["type"], event.get("sender")))
        return want, event.get("content", {}), event.get("content", {}).get("m.relates_to", {})

    want, content, rel = relation("edit", "m.room.message")
    check("lobby: the edit", ("m.replace", want["replaces"], want["new_body"]),
          (rel.get("rel_type"), rel.get("event_id"), content.get("m.new_content", {}).get("body")))
    want, content, rel = relation("reaction", "m.reaction")
    check("lobby: the reaction", ("m.annotation", want["relates_to"], want["key"]),
          (rel.get("rel_type"), rel.get("event_id"), rel.get("key")))
    want, content, rel = relation("thread_reply", "m.room.message")
    check("lobby: the thread reply", ("m.thread", want["thread_root"], want["body"]),
          (rel.get("rel_type"), rel.get("event_id"), content.get("body")))
    want, content, _ = relation("redaction", "m.room.redaction")
    redacts = content.get("redacts") or by_id[want["event_id"]].get("redacts")  # in content from v11
    check("lobby: the redaction", (want["redacts"], want["reason"]), (redacts, content.get("reason")))
    check("lobby: the redacted event's content", {}, by_id.get(want["redacts"], {}).get("content"))


async def check_rooms(fx, clients, api, admin_room):
    rooms = dict(fx.m["rooms"])
    if "admin" in rooms and not admin_room:
        note(f"not checking Conduit's admin room {rooms.pop('admin')['room_id']} (--admin-room does)")
    admins = [uid for uid, u in fx.by_id.items() if u.get("server_admin")]
    for key, room in rooms.items():
        # The manifest lists no members for the admin room; the server admin is one.
        member = room.get("creator") or (admins[0] if key == "admin" and admins else fx.first_user)
        await check_room(fx, clients, api, key, room, member)

    client = clients.restored(fx, fx.first_user)
    listed = expect("/publicRooms", await client.list_public_rooms(limit=500), PublicRoomsResponse)
    public = {r.room_id: r for r in listed.public_rooms}
    for key, room in rooms.items():
        published = room.get("published_in_directory", False)
        check(f"room {key} ({room['room_id']}) in /publicRooms", published, room["room_id"] in public)
        if published:
            entry = public[room["room_id"]]
            check(f"room {key} in /publicRooms: name, topic, alias, joined members",
                  (room.get("name"), room.get("topic"), room.get("canonical_alias"), len(room["members"])),
                  (entry.name, entry.topic, entry.canonical_alias, entry.num_joined_members))


# ---- part all: account data ------------------------------------------------------------------


async def check_account_data(fx, api):
    for name, data in fx.m["account_data"].items():
        uid = fx.m["users"][name]["user_id"]
        token, base = fx.token(uid), f"{V3}/user/{q(uid)}"
        for kind, content in data.get("global", {}).items():
            step = f"{uid}'s account data {kind}"
            check(step, content, await api.get(step, f"{base}/account_data/{q(kind)}", token))
        for room_id, tags in data.get("room_tags", {}).items():
            step = f"{uid}'s tags on {room_id}"
            check(step, tags, (await api.get(step, f"{base}/rooms/{q(room_id)}/tags", token)).get("tags"))
        if "push_rule" in data:
            rule = data["push_rule"]
            step = f"{uid}'s push rule {rule['rule_id']}"
            got = await api.get(step, f"{V3}/pushrules/{rule['scope']}/{rule['kind']}/{q(rule['rule_id'])}", token)
            if not contains(rule["as_read_back"], got):
                fail(step, rule["as_read_back"], got)
        if "filter" in data:
            wanted = data["filter"]
            step = f"{uid}'s filter {wanted['filter_id']}"
            got = await api.get(step, f"{base}/filter/{q(wanted['filter_id'])}", token)
            got = {"event_format": "client", **got}  # the default, which servers built on ruma leave out
            if not contains(wanted["definition"], got):
                fail(step, wanted["definition"], got)


# ---- part all: E2EE --------------------------------------------------------------------------


async def check_key_backup(fx, api, backup):
    uid, token = backup["user_id"], fx.device(backup["user_id"], e2ee=True)["access_token"]
    got = await api.get(f"{uid}'s key backup", f"{V3}/room_keys/version", token)
    check(f"{uid}'s key backup: version, algorithm, auth_data, count",
          (backup["version"], backup["algorithm"], backup["auth_data"], backup["server_reports"]["count"]),
          (got.get("version"), got.get("algorithm"), got.get("auth_data"), got.get("count")))
    step = f"{uid}'s backed-up keys (version {backup['version']})"
    keys = await api.get(step, f"{V3}/room_keys/keys", token, version=backup["version"])
    session = backup["session"]
    want = {session["room_id"]: {"sessions": {session["session_id"]: session["key_data"]}}}
    check(step, want, keys.get("rooms"))


async def check_to_device(fx, api, pending):
    uid, dev = pending["recipient"], pending["recipient_device"]
    step = f"the to-device message for {uid}'s device {dev}, in /sync"
    # No `since`, and the answer's next_batch is never used: the message stays pending.
    synced = await api.get(step, f"{V3}/sync", fx.device(uid, device_id=dev)["access_token"], timeout="0")
    events = synced.get("to_device", {}).get("events", [])
    want = {"type": pending["type"], "sender": pending["sender"], "content": pending["content"]}
    if not any(contains(want, event) for event in events):
        fail(step, want, events)


async def check_device_keys(fx, api):
    owners = {uid: [d for d in u["devices"] if "e2ee" in d] for uid, u in fx.by_id.items()}
    owners = {uid: devices for uid, devices in owners.items() if devices}
    if not owners:
        return
    query = await api.post("/keys/query", f"{V3}/keys/query", fx.token(next(iter(owners))),
                           {"device_keys": {uid: [] for uid in owners}})
    for uid, devices in owners.items():
        for device in devices:
            dev, e2ee = device["device_id"], device["e2ee"]
            keys = query.get("device_keys", {}).get(uid, {}).get(dev, {}).get("keys", {})
            check(f"/keys/query: {uid}'s device {dev}: curve25519 and ed25519", (e2ee["curve25519"], e2ee["ed25519"]),
                  (keys.get(f"curve25519:{dev}"), keys.get(f"ed25519:{dev}")))
            # An empty upload changes nothing and answers the device's one-time key counts.
            step = f"{uid}'s device {dev}: one-time keys on the server"
            counts = await api.post(step, f"{V3}/keys/upload", device["access_token"], {})
            check(step, e2ee["one_time_keys_on_server_at_end"],
                  counts.get("one_time_key_counts", {}).get("signed_curve25519", 0))


async def decrypt_with_nio_stores(fx, clients, room):
    """Each nio store of the fixture (copied: nio writes to it) decrypts the encrypted room."""
    stores = {name: files for name, files in fx.m.get("nio_stores", {}).items() if isinstance(files, list) and files}
    if not stores or room is None:
        return
    if not ENCRYPTION_ENABLED:
        fail("decrypting the encrypted room", "matrix-nio with e2e support (matrix-nio[e2e])", "none (or --no-e2ee)")
    pickle_key = fx.m["nio_stores"].get("pickle_key", "DEFAULT_KEY")
    config = AsyncClientConfig(**LIMITS, encryption_enabled=True, store_sync_tokens=True, pickle_key=pickle_key)
    expected = {m["event_id"]: m["body"] for m in room["messages"]}
    for name, files in stores.items():
        uid = fx.m["users"][name]["user_id"]
        step = f"{uid}'s nio store decrypts the encrypted room"
        with tempfile.TemporaryDirectory() as tmp:
            store = Path(tmp) / "store"
            shutil.copytree(fx.dir / Path(files[0]).parent, store, copy_function=shutil.copyfile)
            for path in [store, *store.rglob("*")]:  # the fixture is read-only
                path.chmod(path.stat().st_mode | stat.S_IWUSR)
            device = fx.device(uid, e2ee=True)
            client = clients.restored(fx, uid, device, store_path=str(store), config=config)
            if client.olm is None:
                fail(step, "the olm account loaded from the store", None)
            decrypted = {}
            for event in await timeline(client, room["room_id"], f"{step}: /messages"):
                if isinstance(event, MegolmEvent):
                    fail(step, "every event decrypted", f"{event.event_id} still encrypted")
                if event.source.get("event_id") in expected:
                    decrypted[event.source["event_id"]] = getattr(event, "body", event.source.get("content"))
            check(step, expected, decrypted)
            await client.close()


async def check_e2ee(fx, clients, api):
    """The E2EE data, each part where the manifest describes it."""
    if fx.m.get("key_backup"):
        await check_key_backup(fx, api, fx.m["key_backup"])
    if fx.m.get("to_device_pending"):
        await check_to_device(fx, api, fx.m["to_device_pending"])
    await check_device_keys(fx, api)
    await decrypt_with_nio_stores(fx, clients, fx.m["rooms"].get("encrypted"))


# ---- main ------------------------------------------------------------------------------------


async def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--homeserver", required=True)
    parser.add_argument("--manifest", required=True, help="the fixture's manifest.json")
    parser.add_argument("--part", choices=["basic", "all"], default="all")
    parser.add_argument("--no-e2ee", action="store_true", help="skip the key backup, to-device and E2EE checks")
    parser.add_argument("--admin-room", action="store_true", help="also check Conduit's admin room")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    homeserver = args.homeserver.rstrip("/")
    fx = Fixture(args.manifest)

    clients = Clients(homeserver)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            api = Api(homeserver, session)
            await check_logins(fx, clients)
            await check_tokens(fx, clients, api)
            await check_profiles(fx, clients.restored(fx, fx.first_user))
            await check_media(fx, clients)
            if args.part == "all":
                await check_rooms(fx, clients, api, args.admin_room)
                await check_account_data(fx, api)
                if args.no_e2ee:
                    note("--no-e2ee: not checking the key backup, to-device message, device keys, decryption")
                else:
                    await check_e2ee(fx, clients, api)
    except SystemExit:
        raise
    except Exception as error:  # a transport error, for instance
        fail("talking to the homeserver", "an answer", f"{type(error).__name__}: {error}")
    finally:
        await clients.close()
    print("conduit import: ok")


if __name__ == "__main__":
    asyncio.run(main())
