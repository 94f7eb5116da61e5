"""The Synapse admin API as a web admin UI (Ketesa, synapse-admin) and admin scripts use it,
driven with an independent HTTP client (requests). The same script, with the same assertions,
runs against culvert (tests/integration/admin_api.rs) and against Synapse 1.163
(tests/integration/synapse.rs): what it checks is what both servers answer.

    admin_api.py BASE_URL SERVER_NAME (--admin-token TOKEN | --shared-secret SECRET)

With --shared-secret the admin account is registered through Synapse's shared-secret
registration; otherwise the token is a server admin's. Exits non-zero on the first failed
assertion, printing it.
"""

import argparse
import hashlib
import hmac
import json
import sys
import time
import uuid

import requests
import urllib3

urllib3.disable_warnings()


class Server:
    def __init__(self, base, server_name):
        self.base = base.rstrip("/")
        self.server_name = server_name
        self.http = requests.Session()

    def call(self, method, path, token=None, body=None, expect=None):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        # verify=False on each request: a session-wide setting loses to REQUESTS_CA_BUNDLE.
        # (The test Synapse has a self-signed certificate.)
        response = self.http.request(
            method, self.base + path, headers=headers, json=body, timeout=30, verify=False
        )
        try:
            answer = response.json()
        except ValueError:
            answer = {"_raw": response.text}
        if expect is not None:
            check(
                response.status_code == expect,
                f"{method} {path}: expected {expect}, got {response.status_code}: {answer}",
            )
        return response.status_code, answer

    def user(self, localpart):
        return f"@{localpart}:{self.server_name}"

    def login(self, user_id, password, expect=200):
        return self.call(
            "POST",
            "/_matrix/client/v3/login",
            body={
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": user_id},
                "password": password,
            },
            expect=expect,
        )[1]


def check(condition, message):
    if not condition:
        import traceback

        print(f"FAILED: {message}", file=sys.stderr)
        traceback.print_stack(file=sys.stderr)
        sys.exit(1)


def error(result, status, errcode, what):
    code, body = result
    check(
        code == status and body.get("errcode") == errcode,
        f"{what}: expected {status} {errcode}, got {code} {body}",
    )


def refused(result, what):
    """A bad request: 400 (the errcodes differ between servers)."""
    code, body = result
    check(code == 400 and "errcode" in body, f"{what}: expected 400, got {code} {body}")


def shared_secret_admin(server, secret, localpart, password):
    """Synapse's shared-secret registration of an admin (Synapse only)."""
    _, body = server.call("GET", "/_synapse/admin/v1/register", expect=200)
    nonce = body["nonce"]
    mac = hmac.new(secret.encode(), digestmod=hashlib.sha1)
    mac.update(b"\x00".join([nonce.encode(), localpart.encode(), password.encode(), b"admin"]))
    _, body = server.call(
        "POST",
        "/_synapse/admin/v1/register",
        body={
            "nonce": nonce,
            "username": localpart,
            "password": password,
            "admin": True,
            "mac": mac.hexdigest(),
        },
        expect=200,
    )
    return body["access_token"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("base")
    parser.add_argument("server_name")
    parser.add_argument("--admin-token")
    parser.add_argument("--shared-secret")
    args = parser.parse_args()
    server = Server(args.base, args.server_name)
    # Names unique to this run, so a listing filtered by them sees only what this run made.
    run = uuid.uuid4().hex[:8]
    if args.shared_secret:
        admin = shared_secret_admin(server, args.shared_secret, f"root{run}", "root-password-1")
    else:
        admin = args.admin_token
    admin_id = server.call("GET", "/_matrix/client/v3/account/whoami", admin, expect=200)[1][
        "user_id"
    ]
    users_path = "/_synapse/admin/v2/users"

    # The version (asked without a token: it is public).
    _, body = server.call("GET", "/_synapse/admin/v1/server_version", expect=200)
    check(isinstance(body.get("server_version"), str), f"server_version: {body}")

    # Create an account (201), then change it (200); the answer is the account.
    ann = server.user(f"ann{run}")
    started = time.time()
    _, body = server.call(
        "PUT",
        f"{users_path}/{ann}",
        admin,
        {"password": "ann-password-1", "displayname": "Ann Admin-Made"},
        expect=201,
    )
    for field, value in {
        "name": ann,
        "displayname": "Ann Admin-Made",
        "admin": False,
        "deactivated": False,
        "locked": False,
        "suspended": False,
        "is_guest": False,
        "shadow_banned": False,
        "erased": False,
        "user_type": None,
        "avatar_url": None,
        "threepids": [],
        "external_ids": [],
    }.items():
        check(body.get(field) == value, f"created account: {field} = {body.get(field)!r} in {body}")
    check("password_hash" not in json.dumps(body), f"no password hash: {body}")
    ann_session = server.login(ann, "ann-password-1")
    _, body = server.call(
        "PUT", f"{users_path}/{ann}", admin, {"displayname": "Ann", "admin": True}, expect=200
    )
    check(body["displayname"] == "Ann" and body["admin"] is True, f"modified: {body}")
    _, body = server.call("GET", f"/_synapse/admin/v1/users/{ann}/admin", admin, expect=200)
    check(body == {"admin": True}, f"admin flag: {body}")
    server.call("PUT", f"/_synapse/admin/v1/users/{ann}/admin", admin, {"admin": False}, expect=200)
    _, body = server.call("GET", f"{users_path}/{ann}", admin, expect=200)
    check(body["admin"] is False and body["displayname"] == "Ann", f"after demotion: {body}")
    _, profile = server.call("GET", f"/_matrix/client/v3/profile/{ann}", ann_session["access_token"])
    check(profile.get("displayname") == "Ann", f"the profile follows: {profile}")

    # Errors: unknown, remote and invalid users; bad bodies.
    error(
        server.call("GET", f"{users_path}/{server.user('nobody' + run)}", admin),
        404,
        "M_NOT_FOUND",
        "an unknown user",
    )
    check(
        server.call("GET", f"{users_path}/@someone:elsewhere.example", admin)[0] == 400,
        "a remote user is refused",
    )
    error(
        server.call("PUT", f"{users_path}/{server.user('Bad Name' + run)}", admin, {}),
        400,
        "M_INVALID_USERNAME",
        "an invalid user name",
    )
    refused(
        server.call("PUT", f"{users_path}/{ann}", admin, {"password": 12}),
        "a password that is no string",
    )
    refused(
        server.call("PUT", f"{users_path}/{ann}", admin, {"admin": "yes"}),
        "an admin flag that is no boolean",
    )

    # Listing: paginated by next_token, filtered by name, admins, guests, deactivated, locked.
    made = [server.user(f"lister{run}{i}") for i in range(5)]
    for user in made:
        server.call("PUT", f"{users_path}/{user}", admin, {"password": "lister-password-1"}, expect=201)
    seen = []
    token = None
    pages = 0
    while True:
        query = f"?name=lister{run}&limit=2" + (f"&from={token}" if token else "")
        _, page = server.call("GET", users_path + query, admin, expect=200)
        check(page["total"] == 5, f"total of the filtered listing: {page}")
        seen += [u["name"] for u in page["users"]]
        pages += 1
        token = page.get("next_token")
        if token is None:
            break
        check(pages < 10, "pagination ends")
    check(seen == sorted(made), f"every listed once, by name: {seen}")
    check(pages == 3, f"5 users in pages of 2: {pages} pages")
    for entry in page["users"]:
        for field in ["name", "admin", "deactivated", "is_guest", "locked", "displayname", "creation_ts"]:
            check(field in entry, f"listed user has {field}: {entry}")
        check(entry["creation_ts"] > (started - 3600) * 1000, f"creation_ts in ms: {entry}")
    _, page = server.call("GET", f"{users_path}?admins=true&limit=1000", admin, expect=200)
    names = [u["name"] for u in page["users"]]
    check(admin_id in names and made[0] not in names, f"admins only: {names}")
    _, page = server.call("GET", f"{users_path}?user_id=lister{run}1", admin, expect=200)
    check([u["name"] for u in page["users"]] == [made[1]], f"user_id filter: {page}")
    # A locked account: left out unless asked for.
    server.call("PUT", f"{users_path}/{made[0]}", admin, {"locked": True}, expect=200)
    _, page = server.call("GET", f"{users_path}?name=lister{run}", admin, expect=200)
    check(made[0] not in [u["name"] for u in page["users"]], f"locked left out: {page}")
    _, page = server.call("GET", f"{users_path}?name=lister{run}&locked=true", admin, expect=200)
    check(made[0] in [u["name"] for u in page["users"]], f"locked asked for: {page}")
    server.login(made[0], "lister-password-1", expect=401)
    server.call("PUT", f"{users_path}/{made[0]}", admin, {"locked": False}, expect=200)
    server.login(made[0], "lister-password-1")

    # Sessions: devices and whois.
    _, devices = server.call("GET", f"{users_path}/{ann}/devices", admin, expect=200)
    check(devices["total"] == 1, f"one device: {devices}")
    device = devices["devices"][0]
    check(device["device_id"] == ann_session["device_id"], f"the login's device: {device}")
    check(device["user_id"] == ann, f"device user: {device}")
    device_path = f"{users_path}/{ann}/devices/{ann_session['device_id']}"
    server.call("PUT", device_path, admin, {"display_name": "Ann's phone"}, expect=200)
    _, device = server.call("GET", device_path, admin, expect=200)
    check(device["display_name"] == "Ann's phone", f"renamed device: {device}")
    error(
        server.call("GET", f"{users_path}/{ann}/devices/NOSUCHDEVICE", admin),
        404,
        "M_NOT_FOUND",
        "an unknown device",
    )
    _, whois = server.call("GET", f"/_synapse/admin/v1/whois/{ann}", admin, expect=200)
    check(whois["user_id"] == ann and isinstance(whois["devices"], dict), f"whois: {whois}")
    second = server.login(ann, "ann-password-1")
    third = server.login(ann, "ann-password-1")
    server.call(
        "POST",
        f"{users_path}/{ann}/delete_devices",
        admin,
        {"devices": [second["device_id"]]},
        expect=200,
    )
    server.call("DELETE", f"{users_path}/{ann}/devices/{third['device_id']}", admin, {}, expect=200)
    for gone in [second, third]:
        error(
            server.call("GET", "/_matrix/client/v3/account/whoami", gone["access_token"]),
            401,
            "M_UNKNOWN_TOKEN",
            "a deleted device's token",
        )
    _, devices = server.call("GET", f"{users_path}/{ann}/devices", admin, expect=200)
    check(devices["total"] == 1, f"one device left: {devices}")

    # Rooms of a user.
    ann_token = ann_session["access_token"]
    _, room = server.call(
        "POST", "/_matrix/client/v3/createRoom", ann_token, {"name": f"Ann's room {run}"}, expect=200
    )
    room_id = room["room_id"]
    _, joined = server.call("GET", f"/_synapse/admin/v1/users/{ann}/joined_rooms", admin, expect=200)
    check(joined == {"joined_rooms": [room_id], "total": 1}, f"joined rooms: {joined}")
    _, memberships = server.call(
        "GET", f"/_synapse/admin/v1/users/{ann}/memberships", admin, expect=200
    )
    check(memberships == {"memberships": {room_id: "join"}}, f"memberships: {memberships}")

    # Rooms: listed, searched, paginated, described; members and state.
    _, other = server.call(
        "POST",
        "/_matrix/client/v3/createRoom",
        ann_token,
        {"name": f"Ann's other room {run}", "topic": "elsewhere"},
        expect=200,
    )
    other_id = other["room_id"]
    _, rooms = server.call("GET", f"/_synapse/admin/v1/rooms?search_term={run}", admin, expect=200)
    check(rooms["total_rooms"] == 2, f"two rooms found: {rooms}")
    check(
        [r["room_id"] for r in rooms["rooms"]] == [other_id, room_id],
        f"by name: {rooms}",
    )
    listed_room = rooms["rooms"][1]
    for field, value in {
        "name": f"Ann's room {run}",
        "joined_members": 1,
        "joined_local_members": 1,
        "creator": ann,
        "federatable": True,
        "public": False,
    }.items():
        check(listed_room.get(field) == value, f"listed room: {field} in {listed_room}")
    for field in ["version", "join_rules", "history_visibility", "state_events", "canonical_alias"]:
        check(field in listed_room, f"listed room has {field}: {listed_room}")
    _, first = server.call(
        "GET", f"/_synapse/admin/v1/rooms?search_term={run}&limit=1", admin, expect=200
    )
    check(first["next_batch"] == 1 and len(first["rooms"]) == 1, f"first page: {first}")
    _, second = server.call(
        "GET", f"/_synapse/admin/v1/rooms?search_term={run}&limit=1&from=1", admin, expect=200
    )
    check([r["room_id"] for r in second["rooms"]] == [room_id], f"second page: {second}")
    check("next_batch" not in second, f"no third page: {second}")
    _, details = server.call("GET", f"/_synapse/admin/v1/rooms/{other_id}", admin, expect=200)
    check(details["topic"] == "elsewhere", f"details: {details}")
    check(details["joined_local_devices"] == 1, f"ann's one device: {details}")
    _, members = server.call(
        "GET", f"/_synapse/admin/v1/rooms/{room_id}/members", admin, expect=200
    )
    check(members == {"members": [ann], "total": 1}, f"members: {members}")
    _, state = server.call("GET", f"/_synapse/admin/v1/rooms/{room_id}/state", admin, expect=200)
    types = sorted(e["type"] for e in state["state"])
    for wanted in ["m.room.create", "m.room.member", "m.room.name", "m.room.power_levels"]:
        check(wanted in types, f"state has {wanted}: {types}")
    error(
        server.call("GET", f"/_synapse/admin/v1/rooms/!nosuchroom{run}:{server.server_name}", admin),
        404,
        "M_NOT_FOUND",
        "an unknown room",
    )
    refused(
        server.call("GET", "/_synapse/admin/v1/rooms?order_by=shoe_size", admin),
        "an unknown room order",
    )

    # Blocking a room: this server's users can no longer join it; unblocked, they can.
    _, public = server.call(
        "POST",
        "/_matrix/client/v3/createRoom",
        ann_token,
        {"name": f"Public {run}", "preset": "public_chat"},
        expect=200,
    )
    public_id = public["room_id"]
    block_path = f"/_synapse/admin/v1/rooms/{public_id}/block"
    _, block = server.call("GET", block_path, admin, expect=200)
    check(block == {"block": False}, f"not blocked: {block}")
    _, block = server.call("PUT", block_path, admin, {"block": True}, expect=200)
    check(block == {"block": True}, f"blocked: {block}")
    _, block = server.call("GET", block_path, admin, expect=200)
    check(block == {"block": True, "user_id": admin_id}, f"blocked by: {block}")
    joiner = server.login(made[2], "lister-password-1")["access_token"]
    # (403; Synapse's errcode is M_UNKNOWN, culvert's M_FORBIDDEN.)
    status, body = server.call("POST", f"/_matrix/client/v3/join/{public_id}", joiner, {})
    check(status == 403, f"joining a blocked room: {status} {body}")
    server.call("PUT", block_path, admin, {"block": False}, expect=200)
    server.call("POST", f"/_matrix/client/v3/join/{public_id}", joiner, {}, expect=200)

    # Deleting a room in the background: its members leave, it is blocked and purged, and
    # its status is polled until complete.
    _, started = server.call(
        "DELETE", f"/_synapse/admin/v2/rooms/{public_id}", admin, {"block": True}, expect=200
    )
    delete_id = started["delete_id"]
    check(isinstance(delete_id, str) and delete_id, f"a delete ID: {started}")
    for _ in range(200):
        _, status = server.call(
            "GET", f"/_synapse/admin/v2/rooms/delete_status/{delete_id}", admin, expect=200
        )
        if status["status"] in ("complete", "failed"):
            break
        time.sleep(0.1)
    check(status["status"] == "complete", f"deleted: {status}")
    kicked = sorted(status["shutdown_room"]["kicked_users"])
    check(kicked == sorted([ann, made[2]]), f"the members left: {status}")
    _, of_room = server.call(
        "GET", f"/_synapse/admin/v2/rooms/{public_id}/delete_status", admin, expect=200
    )
    check(
        [r["delete_id"] for r in of_room["results"]] == [delete_id]
        and of_room["results"][0]["status"] == "complete",
        f"the room's deletions: {of_room}",
    )
    error(
        server.call("GET", f"/_synapse/admin/v1/rooms/{public_id}", admin),
        404,
        "M_NOT_FOUND",
        "a purged room",
    )
    _, block = server.call("GET", block_path, admin, expect=200)
    check(block["block"] is True, f"the deleted room stays blocked: {block}")
    status, body = server.call("POST", f"/_matrix/client/v3/join/{public_id}", joiner, {})
    check(status == 403, f"joining the deleted room: {status} {body}")
    error(
        server.call("GET", f"/_synapse/admin/v2/rooms/delete_status/nosuch{run}", admin),
        404,
        "M_NOT_FOUND",
        "an unknown delete ID",
    )

    # A room's history read by an admin who is no member; then made the room's admin (the
    # room is private: invited, with the most powerful local member's level).
    server.call(
        "PUT",
        f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/h1",
        ann_token,
        {"msgtype": "m.text", "body": f"history {run}"},
        expect=200,
    )
    _, history = server.call(
        "GET", f"/_synapse/admin/v1/rooms/{room_id}/messages?dir=b&limit=5", admin, expect=200
    )
    bodies = [e["content"].get("body") for e in history["chunk"]]
    check(bodies and bodies[0] == f"history {run}", f"the admin reads the history: {history}")
    check("start" in history and "end" in history, f"pagination tokens: {history}")
    _, older = server.call(
        "GET",
        f"/_synapse/admin/v1/rooms/{room_id}/messages?dir=b&limit=5&from={history['end']}",
        admin,
        expect=200,
    )
    check(
        all(e["event_id"] not in [h["event_id"] for h in history["chunk"]] for e in older["chunk"]),
        f"the next page is older: {older}",
    )
    server.call(
        "POST", f"/_synapse/admin/v1/rooms/{room_id}/make_room_admin", admin, {}, expect=200
    )
    _, state = server.call("GET", f"/_synapse/admin/v1/rooms/{room_id}/state", admin, expect=200)
    by_key = {(e["type"], e["state_key"]): e for e in state["state"]}
    power = by_key[("m.room.power_levels", "")]["content"]
    check(power["users"].get(admin_id) == 100, f"the admin's power: {power}")
    check(
        by_key[("m.room.member", admin_id)]["content"]["membership"] == "invite",
        f"the admin is invited: {by_key.get(('m.room.member', admin_id))}",
    )

    # Media: a user's uploads listed; quarantined (not served), released, protected (then
    # quarantine has no effect); the media of a room; deleted.
    def upload(content, name):
        response = server.http.post(
            f"{server.base}/_matrix/media/v3/upload?filename={name}",
            headers={"Authorization": f"Bearer {ann_token}", "Content-Type": "text/plain"},
            data=content,
            timeout=30,
            verify=False,
        )
        check(response.status_code == 200, f"upload: {response.status_code} {response.text}")
        return response.json()["content_uri"]

    def download(mxc):
        server_name, media_id = mxc[len("mxc://"):].split("/", 1)
        return server.http.get(
            f"{server.base}/_matrix/client/v1/media/download/{server_name}/{media_id}",
            headers={"Authorization": f"Bearer {ann_token}"},
            timeout=30,
            verify=False,
        ).status_code

    first_mxc = upload(b"first file", f"first{run}.txt")
    second_mxc = upload(b"second file", f"second{run}.txt")
    first_id = first_mxc.rsplit("/", 1)[1]
    second_id = second_mxc.rsplit("/", 1)[1]
    _, media = server.call("GET", f"/_synapse/admin/v1/users/{ann}/media", admin, expect=200)
    check(media["total"] == 2, f"two uploads: {media}")
    check(
        [m["media_id"] for m in media["media"]] == [second_id, first_id],
        f"newest first: {media}",
    )
    listed_media = media["media"][1]
    for field, value in {
        "media_length": 10,
        "upload_name": f"first{run}.txt",
        "quarantined_by": None,
        "safe_from_quarantine": False,
    }.items():
        check(listed_media.get(field) == value, f"media listing: {field} in {listed_media}")
    _, media = server.call(
        "GET",
        f"/_synapse/admin/v1/users/{ann}/media?limit=1&order_by=created_ts&dir=f",
        admin,
        expect=200,
    )
    check(
        [m["media_id"] for m in media["media"]] == [first_id] and media["next_token"] == 1,
        f"oldest first, a page: {media}",
    )
    _, stats = server.call(
        "GET", f"/_synapse/admin/v1/statistics/users/media?search_term=ann{run}", admin, expect=200
    )
    check(
        stats["total"] == 1
        and stats["users"][0]["user_id"] == ann
        and stats["users"][0]["media_count"] == 2
        and stats["users"][0]["media_length"] == 21,
        f"media statistics: {stats}",
    )
    quarantine_path = f"/_synapse/admin/v1/media/quarantine/{server.server_name}/{first_id}"
    server.call("POST", quarantine_path, admin, {}, expect=200)
    check(download(first_mxc) == 404, "quarantined media is not served")
    _, media = server.call("GET", f"/_synapse/admin/v1/users/{ann}/media", admin, expect=200)
    check(media["media"][1]["quarantined_by"] == admin_id, f"quarantined by: {media}")
    server.call(
        "POST",
        f"/_synapse/admin/v1/media/unquarantine/{server.server_name}/{first_id}",
        admin,
        {},
        expect=200,
    )
    check(download(first_mxc) == 200, "released media is served")
    server.call("POST", f"/_synapse/admin/v1/media/protect/{first_id}", admin, {}, expect=200)
    server.call("POST", quarantine_path, admin, {}, expect=200)
    check(download(first_mxc) == 200, "protected media is not quarantined")
    server.call("POST", f"/_synapse/admin/v1/media/unprotect/{first_id}", admin, {}, expect=200)
    server.call(
        "PUT",
        f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/m1",
        ann_token,
        {"msgtype": "m.file", "body": "a file", "url": second_mxc},
        expect=200,
    )
    _, in_room = server.call("GET", f"/_synapse/admin/v1/room/{room_id}/media", admin, expect=200)
    check(in_room == {"local": [second_mxc], "remote": []}, f"the room's media: {in_room}")
    _, quarantined = server.call(
        "POST", f"/_synapse/admin/v1/room/{room_id}/media/quarantine", admin, {}, expect=200
    )
    check(quarantined == {"num_quarantined": 1}, f"the room's media quarantined: {quarantined}")
    check(download(second_mxc) == 404, "the room's media is not served")
    _, deleted = server.call(
        "DELETE", f"/_synapse/admin/v1/media/{server.server_name}/{second_id}", admin, expect=200
    )
    check(deleted == {"deleted_media": [second_id], "total": 1}, f"deleted: {deleted}")
    _, media = server.call("GET", f"/_synapse/admin/v1/users/{ann}/media", admin, expect=200)
    check([m["media_id"] for m in media["media"]] == [first_id], f"one upload left: {media}")
    error(
        server.call("DELETE", f"/_synapse/admin/v1/media/{server.server_name}/{second_id}", admin),
        404,
        "M_NOT_FOUND",
        "deleting deleted media",
    )
    error(
        server.call("POST", "/_synapse/admin/v1/purge_media_cache?before_ts=1", admin, {}),
        400,
        "M_INVALID_PARAM",
        "a time in seconds, not milliseconds",
    )
    a_year_ago = int(time.time() * 1000) - 365 * 24 * 3600 * 1000
    _, purged = server.call(
        "POST", f"/_synapse/admin/v1/purge_media_cache?before_ts={a_year_ago}", admin, {}, expect=200
    )
    check(purged == {"deleted": 0}, f"no remote media: {purged}")

    # Event reports: listed, shown with the event, deleted.
    _, sent = server.call(
        "PUT",
        f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/r1",
        ann_token,
        {"msgtype": "m.text", "body": "report me"},
        expect=200,
    )
    server.call(
        "POST",
        f"/_matrix/client/v3/rooms/{room_id}/report/{sent['event_id']}",
        ann_token,
        {"reason": f"spam {run}"},
        expect=200,
    )
    _, reports = server.call(
        "GET", f"/_synapse/admin/v1/event_reports?room_id={room_id}", admin, expect=200
    )
    check(reports["total"] == 1, f"one report: {reports}")
    report = reports["event_reports"][0]
    for field, value in {
        "event_id": sent["event_id"],
        "room_id": room_id,
        "user_id": ann,
        "sender": ann,
        "reason": f"spam {run}",
        "name": f"Ann's room {run}",
    }.items():
        check(report.get(field) == value, f"report: {field} in {report}")
    _, shown = server.call(
        "GET", f"/_synapse/admin/v1/event_reports/{report['id']}", admin, expect=200
    )
    check(shown["event_json"]["content"]["body"] == "report me", f"reported event: {shown}")
    server.call("DELETE", f"/_synapse/admin/v1/event_reports/{report['id']}", admin, expect=200)
    error(
        server.call("GET", f"/_synapse/admin/v1/event_reports/{report['id']}", admin),
        404,
        "M_NOT_FOUND",
        "a deleted report",
    )

    # Registration tokens: made, listed, changed, deleted; bad ones refused.
    tokens = "/_synapse/admin/v1/registration_tokens"
    token = f"tok{run}"
    _, made_token = server.call(
        "POST", f"{tokens}/new", admin, {"token": token, "uses_allowed": 1}, expect=200
    )
    check(
        made_token
        == {"token": token, "uses_allowed": 1, "pending": 0, "completed": 0, "expiry_time": None},
        f"new token: {made_token}",
    )
    _, random_token = server.call("POST", f"{tokens}/new", admin, {"length": 10}, expect=200)
    check(len(random_token["token"]) == 10, f"a random token of 10: {random_token}")
    for bad, what in [
        ({"token": token}, "a token that exists"),
        ({"token": "bad token!"}, "a token with a space"),
        ({"uses_allowed": -1}, "negative uses"),
        ({"expiry_time": 1000}, "an expiry in the past"),
    ]:
        refused(server.call("POST", f"{tokens}/new", admin, bad), what)
    _, shown = server.call("GET", f"{tokens}/{token}", admin, expect=200)
    check(shown == made_token, f"token shown: {shown}")
    far = 4102444800000
    _, changed = server.call(
        "PUT", f"{tokens}/{token}", admin, {"uses_allowed": 5, "expiry_time": far}, expect=200
    )
    check(changed["uses_allowed"] == 5 and changed["expiry_time"] == far, f"changed: {changed}")
    _, changed = server.call("PUT", f"{tokens}/{token}", admin, {"uses_allowed": None}, expect=200)
    check(
        changed["uses_allowed"] is None and changed["expiry_time"] == far,
        f"unlimited uses, same expiry: {changed}",
    )
    _, valid = server.call("GET", f"{tokens}?valid=true", admin, expect=200)
    check(token in [t["token"] for t in valid["registration_tokens"]], f"valid: {valid}")
    _, invalid = server.call("GET", f"{tokens}?valid=false", admin, expect=200)
    check(token not in [t["token"] for t in invalid["registration_tokens"]], f"invalid: {invalid}")
    server.call("DELETE", f"{tokens}/{token}", admin, expect=200)
    error(server.call("GET", f"{tokens}/{token}", admin), 404, "M_NOT_FOUND", "a deleted token")
    error(server.call("DELETE", f"{tokens}/{token}", admin), 404, "M_NOT_FOUND", "deleted twice")
    server.call("DELETE", f"{tokens}/{random_token['token']}", admin, expect=200)

    # Account data and pushers.
    server.call(
        "PUT",
        f"/_matrix/client/v3/user/{ann}/account_data/org.example.setting",
        ann_token,
        {"on": True},
        expect=200,
    )
    _, data = server.call("GET", f"/_synapse/admin/v1/users/{ann}/accountdata", admin, expect=200)
    check(
        data["account_data"]["global"].get("org.example.setting") == {"on": True},
        f"account data: {data}",
    )
    check(isinstance(data["account_data"]["rooms"], dict), f"room account data: {data}")
    _, pushers = server.call("GET", f"/_synapse/admin/v1/users/{ann}/pushers", admin, expect=200)
    check(pushers == {"pushers": [], "total": 0}, f"pushers: {pushers}")

    # Name availability.
    _, body = server.call(
        "GET", f"/_synapse/admin/v1/username_available?username=free{run}", admin, expect=200
    )
    check(body == {"available": True}, f"available: {body}")
    error(
        server.call("GET", f"/_synapse/admin/v1/username_available?username=ann{run}", admin),
        400,
        "M_USER_IN_USE",
        "a name in use",
    )

    # Suspension: writes refused, reads allowed.
    _, body = server.call(
        "PUT", f"/_synapse/admin/v1/suspend/{ann}", admin, {"suspend": True}, expect=200
    )
    check(body == {f"user_{ann}_suspended": True}, f"suspended: {body}")
    error(
        server.call(
            "PUT",
            f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/t1",
            ann_token,
            {"msgtype": "m.text", "body": "hi"},
        ),
        403,
        "M_USER_SUSPENDED",
        "a suspended user sends",
    )
    server.call("GET", "/_matrix/client/v3/joined_rooms", ann_token, expect=200)
    _, body = server.call("GET", f"{users_path}/{ann}", admin, expect=200)
    check(body["suspended"] is True, f"suspended shown: {body}")
    server.call("PUT", f"/_synapse/admin/v1/suspend/{ann}", admin, {"suspend": False}, expect=200)
    server.call(
        "PUT",
        f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/t2",
        ann_token,
        {"msgtype": "m.text", "body": "hi"},
        expect=200,
    )

    # A new password: the old one no longer works, and the devices are logged out.
    server.call(
        "POST",
        f"/_synapse/admin/v1/reset_password/{ann}",
        admin,
        {"new_password": "ann-password-2"},
        expect=200,
    )
    server.login(ann, "ann-password-1", expect=403)
    error(
        server.call("GET", "/_matrix/client/v3/account/whoami", ann_token),
        401,
        "M_UNKNOWN_TOKEN",
        "logged out by the new password",
    )
    ann_token = server.login(ann, "ann-password-2")["access_token"]
    refused(
        server.call("POST", f"/_synapse/admin/v1/reset_password/{ann}", admin, {}),
        "no new password",
    )

    # Purging history (local events kept without delete_local_events): polled to its end.
    _, started = server.call(
        "POST",
        f"/_synapse/admin/v1/purge_history/{room_id}",
        admin,
        {"purge_up_to_ts": int(time.time() * 1000)},
        expect=200,
    )
    for _ in range(100):
        _, purge = server.call(
            "GET",
            f"/_synapse/admin/v1/purge_history_status/{started['purge_id']}",
            admin,
            expect=200,
        )
        if purge["status"] != "active":
            break
        time.sleep(0.1)
    check(purge["status"] == "complete", f"the purge: {purge}")
    refused(
        server.call("POST", f"/_synapse/admin/v1/purge_history/{room_id}", admin, {}),
        "a purge with no point",
    )

    # A user's own rate limit: none, set (0: unlimited), removed.
    limit_path = f"/_synapse/admin/v1/users/{made[3]}/override_ratelimit"
    _, limit = server.call("GET", limit_path, admin, expect=200)
    check(limit == {}, f"no override yet: {limit}")
    _, limit = server.call(
        "POST", limit_path, admin, {"messages_per_second": 0, "burst_count": 0}, expect=200
    )
    check(limit == {"messages_per_second": 0, "burst_count": 0}, f"the override: {limit}")
    _, limit = server.call("GET", limit_path, admin, expect=200)
    check(limit == {"messages_per_second": 0, "burst_count": 0}, f"the override read: {limit}")
    server.call("DELETE", limit_path, admin, expect=200)
    _, limit = server.call("GET", limit_path, admin, expect=200)
    check(limit == {}, f"the override removed: {limit}")

    # Acting as a user: a token of theirs (not for oneself).
    _, puppet = server.call(
        "POST", f"/_synapse/admin/v1/users/{made[3]}/login", admin, {}, expect=200
    )
    _, who = server.call(
        "GET", "/_matrix/client/v3/account/whoami", puppet["access_token"], expect=200
    )
    check(who["user_id"] == made[3], f"the token acts as the user: {who}")
    refused(
        server.call("POST", f"/_synapse/admin/v1/users/{admin_id}/login", admin, {}),
        "logging in as oneself",
    )

    # Deactivation with erasure: no login, no profile, out of the room.
    _, body = server.call(
        "POST", f"/_synapse/admin/v1/deactivate/{ann}", admin, {"erase": True}, expect=200
    )
    check("id_server_unbind_result" in body, f"deactivated: {body}")
    server.login(ann, "ann-password-2", expect=403)
    _, body = server.call("GET", f"{users_path}/{ann}", admin, expect=200)
    check(body["deactivated"] is True and body["erased"] is True, f"deactivated shown: {body}")
    check(body["displayname"] is None, f"erased profile: {body}")
    # (Synapse leaves the rooms in the background.)
    for _ in range(100):
        _, joined = server.call(
            "GET", f"/_synapse/admin/v1/users/{ann}/joined_rooms", admin, expect=200
        )
        if joined["total"] == 0:
            break
        time.sleep(0.1)
    check(joined == {"joined_rooms": [], "total": 0}, f"left the rooms: {joined}")
    _, page = server.call("GET", f"{users_path}?name=ann{run}", admin, expect=200)
    check(page["total"] == 0, f"v2 leaves deactivated accounts out: {page}")
    _, page = server.call("GET", f"{users_path}?name=ann{run}&deactivated=true", admin, expect=200)
    check(page["total"] == 1, f"v2 with deactivated=true: {page}")
    _, page = server.call(
        "GET", f"/_synapse/admin/v3/users?name=ann{run}&deactivated=true", admin, expect=200
    )
    check([u["name"] for u in page["users"]] == [ann], f"v3 deactivated only: {page}")
    _, page = server.call("GET", f"/_synapse/admin/v3/users?name={run}", admin, expect=200)
    everyone = len(made) + 1 + (1 if run in admin_id else 0)
    check(page["total"] == everyone, f"v3 without the flag lists everyone: {page}")
    # (Reactivation is left out: the test Synapse answers it with a 500 at times;
    # tests/integration/admin_api.rs covers it on culvert.)

    # Not an admin: every endpoint refuses.
    plain = server.login(made[1], "lister-password-1")["access_token"]
    for method, path in [
        ("GET", users_path),
        ("GET", "/_synapse/admin/v3/users"),
        ("GET", f"{users_path}/{ann}"),
        ("PUT", f"{users_path}/{made[2]}"),
        ("GET", f"/_synapse/admin/v1/users/{ann}/admin"),
        ("PUT", f"/_synapse/admin/v1/users/{made[1]}/admin"),
        ("GET", f"/_synapse/admin/v1/whois/{ann}"),
        ("GET", f"/_synapse/admin/v1/users/{ann}/joined_rooms"),
        ("GET", f"/_synapse/admin/v1/users/{ann}/memberships"),
        ("GET", f"{users_path}/{ann}/devices"),
        ("POST", f"{users_path}/{ann}/delete_devices"),
        ("GET", f"/_synapse/admin/v1/users/{ann}/accountdata"),
        ("GET", f"/_synapse/admin/v1/users/{ann}/pushers"),
        ("PUT", f"/_synapse/admin/v1/suspend/{ann}"),
        ("POST", f"/_synapse/admin/v1/reset_password/{ann}"),
        ("POST", f"/_synapse/admin/v1/deactivate/{ann}"),
        ("GET", f"/_synapse/admin/v1/username_available?username=x{run}"),
        ("GET", "/_synapse/admin/v1/rooms"),
        ("GET", f"/_synapse/admin/v1/rooms/{room_id}"),
        ("GET", f"/_synapse/admin/v1/rooms/{room_id}/members"),
        ("GET", f"/_synapse/admin/v1/rooms/{room_id}/state"),
        ("GET", "/_synapse/admin/v1/event_reports"),
        ("GET", f"/_synapse/admin/v1/rooms/{room_id}/block"),
        ("PUT", f"/_synapse/admin/v1/rooms/{room_id}/block"),
        ("DELETE", f"/_synapse/admin/v2/rooms/{room_id}"),
        ("GET", f"/_synapse/admin/v1/users/{ann}/media"),
        ("GET", f"/_synapse/admin/v1/rooms/{room_id}/messages"),
        ("GET", "/_synapse/admin/v1/statistics/users/media"),
        ("GET", "/_synapse/admin/v1/federation/destinations"),
        ("POST", f"/_synapse/admin/v1/rooms/{room_id}/make_room_admin"),
        ("POST", f"/_synapse/admin/v1/users/{ann}/shadow_ban"),
        ("POST", f"/_synapse/admin/v1/users/{ann}/login"),
        ("POST", f"/_synapse/admin/v1/purge_history/{room_id}"),
        ("GET", f"/_synapse/admin/v1/users/{ann}/override_ratelimit"),
        ("POST", f"/_synapse/admin/v1/media/quarantine/{server.server_name}/abc"),
        ("POST", f"/_synapse/admin/v1/media/protect/abc"),
        ("DELETE", f"/_synapse/admin/v1/media/{server.server_name}/abc"),
        ("GET", f"/_synapse/admin/v1/room/{room_id}/media"),
        ("POST", "/_synapse/admin/v1/purge_media_cache?before_ts=1"),
        ("GET", f"/_synapse/admin/v2/rooms/{room_id}/delete_status"),
        ("GET", "/_synapse/admin/v1/registration_tokens"),
        ("POST", "/_synapse/admin/v1/registration_tokens/new"),
    ]:
        body = {} if method in ("PUT", "POST", "DELETE") else None
        error(server.call(method, path, plain, body), 403, "M_FORBIDDEN", f"{method} {path}")
        error(server.call(method, path, None, body), 401, "M_MISSING_TOKEN", f"{method} {path}")
    print("admin API: all checks passed")


if __name__ == "__main__":
    main()
