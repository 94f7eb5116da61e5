"""Kills culvert with SIGKILL, many times, under load, and checks that nothing it acknowledged
was lost: messages, to-device messages, one-time key uploads, media uploads — and the traffic
of a federation peer, another culvert that stays up and shares the room.

Each cycle: the victim starts on its database; what the last cycle acknowledged is checked;
8 senders send messages, one client sends to-device messages, one uploads keys, one uploads
media, and a user of the peer sends messages into the room; after 1–1.5 s the victim is
killed (SIGKILL). At the end the victim starts once more and everything acknowledged in any
cycle is checked again, on the victim and — for the messages — on the peer too (federation
both ways must catch up after the crashes).

Usage: kill_loop.py CULVERT_BINARY CYCLES WORKDIR
Prints one line per cycle and a summary; exits 1 if anything acknowledged was lost.
"""

import hashlib
import os
import subprocess
import sys
import threading
import time
import urllib.parse

from client import request, send_until
from power_cut_test import Server, register

SENDERS = 8


def server_config(work, name, port, log_level):
    """A federating server on loopback with a self-signed certificate."""
    directory = os.path.join(work, name)
    os.makedirs(directory, exist_ok=True)
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj",
                    "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                    "-keyout", key, "-out", cert], check=True, capture_output=True)
    config = os.path.join(directory, "culvert.toml")
    with open(config, "w") as f:
        f.write(f'[global]\nserver_name = "localhost:{port}"\n'
                f'database_path = "{directory}/db"\naddress = "127.0.0.1"\nport = {port}\n'
                f'allow_registration = true\nallow_federation = true\n'
                f'allow_invalid_tls_certificates = true\nip_range_denylist = []\n'
                f'trusted_servers = []\nrate_limits = {{ enabled = false }}\nlog = "{log_level}"\n'
                f'admin_room = false\n'
                f'tls = {{ certs = "{cert}", key = "{key}" }}\n')
    return config, f"https://localhost:{port}"


def main():
    binary, cycles, work = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    # The servers present self-signed certificates.
    import ssl
    ssl._create_default_https_context = ssl._create_unverified_context
    level = os.environ.get("KILL_LOOP_LOG", "warn")
    victim_config, victim = server_config(work, "victim", 18670, level)
    peer_config, peer = server_config(work, "peer", 18671, level)
    peer_server = Server(binary, peer_config, open(os.path.join(work, "peer.log"), "ab"))
    peer_server.wait_ready(peer)
    log = open(os.path.join(work, "victim.log"), "ab")
    server = Server(binary, victim_config, log)
    server.wait_ready(victim)
    try:
        run(binary, victim_config, victim, peer, server, cycles, log)
    finally:
        peer_server.kill()


def run(binary, victim_config, victim, peer, server, cycles, log):
    senders = [register(victim, f"sender{i}") for i in range(SENDERS)]
    status, answer = request(victim, "POST", "/_matrix/client/v3/createRoom", senders[0],
                             {"preset": "public_chat"})
    room = answer["room_id"]
    for token in senders[1:]:
        request(victim, "POST", f"/_matrix/client/v3/join/{room}", token, {})
    courier = register(victim, "courier")
    status, recipient = request(victim, "POST", "/_matrix/client/v3/register", body={
        "username": "recipient", "password": "power-cut-password",
        "auth": {"type": "m.login.dummy"}})
    keyholder = register(victim, "keyholder")
    uploader = register(victim, "uploader")
    remote = register(peer, "remote")
    status, answer = request(peer, "POST",
                             f"/_matrix/client/v3/join/{urllib.parse.quote(room)}"
                             f"?server_name={victim.removeprefix('https://')}", remote, {})
    assert status == 200, answer

    acked = {"events": [], "to_device": set(), "keys": 0, "media": {}, "remote": []}
    lost = {"events": set(), "to_device": set(), "keys": 0, "media": set()}
    delivered = set()
    since = [None]

    def missing_events(base, token, events):
        return {e for e in events
                if request(base, "GET", f"/_matrix/client/v3/rooms/{room}/event/{e}",
                           token)[0] != 200}

    def collect_to_device():
        """The recipient's to-device messages, acknowledged as a client does (next since)."""
        for _ in range(1000):
            path = "/_matrix/client/v3/sync?timeout=0" + (f"&since={since[0]}" if since[0] else "")
            status, answer = request(victim, "GET", path, recipient["access_token"])
            if status != 200:
                raise RuntimeError(f"sync: {status}")
            events = answer.get("to_device", {}).get("events", [])
            delivered.update(e["content"]["n"] for e in events)
            since[0] = answer["next_batch"]
            if not events:
                return

    def one_time_keys():
        status, answer = request(victim, "POST", "/_matrix/client/v3/keys/upload", keyholder, {})
        return answer.get("one_time_key_counts", {}).get("signed_curve25519", 0)

    def missing_media(files):
        gone = set()
        for mxc, digest in files.items():
            status, body = request(victim, "GET", f"/_matrix/client/v1/media/download/{mxc}",
                                   uploader)
            if status != 200 or hashlib.sha256(body).hexdigest() != digest:
                gone.add(mxc)
        return gone

    last = {"events": [], "to_device": set(), "media": {}}
    for cycle in range(1, cycles + 1):
        if cycle > 1:
            server = Server(binary, victim_config, log)
            server.wait_ready(victim)
            # The last cycle's acknowledged writes are there.
            gone = missing_events(victim, senders[0], last["events"])
            collect_to_device()
            gone_to_device = last["to_device"] - delivered
            keys = one_time_keys()
            gone_media = missing_media(last["media"])
            lost["events"] |= gone
            lost["to_device"] |= gone_to_device
            lost["media"] |= gone_media
            if keys < acked["keys"]:
                lost["keys"] = max(lost["keys"], acked["keys"] - keys)
            print(f"  after kill {cycle - 1}: lost {len(gone)} of {len(last['events'])} messages, "
                  f"{len(gone_to_device)} of {len(last['to_device'])} to-device, "
                  f"{max(0, acked['keys'] - keys)} of {acked['keys']} one-time keys, "
                  f"{len(gone_media)} of {len(last['media'])} files", flush=True)
        stop = threading.Event()
        last = {"events": [], "to_device": set(), "media": {}}
        guard = threading.Lock()

        def courier_loop():
            n = 0
            while not stop.is_set():
                n += 1
                tag = f"c{cycle}n{n}"
                try:
                    status, _ = request(victim, "PUT", f"/_matrix/client/v3/sendToDevice/m.test/{tag}",
                                        courier, {"messages": {recipient["user_id"]: {
                                            recipient["device_id"]: {"n": tag}}}}, timeout=5)
                except OSError:
                    return
                if status == 200:
                    with guard:
                        last["to_device"].add(tag)

        def keys_loop():
            n = 0
            while not stop.is_set():
                n += 1
                keys = {f"signed_curve25519:c{cycle}n{n}k{k}": {"key": f"{cycle}-{n}-{k}",
                                                                "signatures": {}}
                        for k in range(5)}
                try:
                    status, _ = request(victim, "POST", "/_matrix/client/v3/keys/upload",
                                        keyholder, {"one_time_keys": keys}, timeout=5)
                except OSError:
                    return
                if status == 200:
                    with guard:
                        acked["keys"] += 5

        def media_loop():
            while not stop.is_set():
                data = os.urandom(20000)
                try:
                    status, answer = request(victim, "POST", "/_matrix/media/v3/upload",
                                             uploader, raw=data, timeout=5)
                except OSError:
                    return
                if status == 200:
                    with guard:
                        last["media"][answer["content_uri"].removeprefix("mxc://")] = \
                            hashlib.sha256(data).hexdigest()

        threads = [threading.Thread(target=send_until, args=(
            stop, victim, room, senders[i], f"c{cycle}s{i}", last["events"]))
            for i in range(SENDERS)]
        # The peer's user: the peer stays up, so a failed request is tried again.
        threads.append(threading.Thread(target=send_until, args=(
            stop, peer, room, remote, f"c{cycle}r", acked["remote"]),
            kwargs={"give_up_on_error": False, "pause": 0.1}))
        threads += [threading.Thread(target=f) for f in (courier_loop, keys_loop, media_loop)]
        for t in threads:
            t.start()
        time.sleep(1.0 + (cycle % 5) * 0.1)
        server.kill()
        stop.set()
        for t in threads:
            t.join()
        acked["events"].extend(last["events"])
        acked["to_device"] |= last["to_device"]
        acked["media"].update(last["media"])

    # A last start: everything of every cycle, on the victim and on the peer.
    server = Server(binary, victim_config, log)
    server.wait_ready(victim)
    collect_to_device()
    lost["events"] |= missing_events(victim, senders[0], acked["events"])
    lost["to_device"] |= acked["to_device"] - delivered
    lost["keys"] = max(lost["keys"], acked["keys"] - one_time_keys())
    lost["media"] |= missing_media(acked["media"])
    # A restarted server speaks to its peers soon (its users do): that ends their back-off
    # from it (`heard_from`), and federation catches up both ways.
    status, answer = request(victim, "PUT",
                             f"/_matrix/client/v3/rooms/{room}/send/m.room.message/back",
                             senders[0], {"msgtype": "m.text", "body": "back"})
    if status == 200:
        acked["events"].append(answer["event_id"])
    deadline = time.time() + 300
    remote_missing = set(acked["remote"])
    at_peer_missing = set(acked["events"])
    while time.time() < deadline and (remote_missing or at_peer_missing):
        remote_missing = missing_events(victim, senders[0], remote_missing)
        at_peer_missing = missing_events(peer, remote, at_peer_missing)
        if remote_missing or at_peer_missing:
            time.sleep(5)
    for event in sorted(remote_missing):
        # What the peer has of it, and whether the victim has it in the room's timeline at
        # all (the admin API reads history whatever the visibility; sender0 is the admin).
        status, seen = request(peer, "GET", f"/_matrix/client/v3/rooms/{room}/event/{event}",
                               remote)
        status_v, found = request(victim, "GET", f"/_matrix/client/v3/rooms/{room}/event/{event}",
                                  senders[0])
        _, page = request(victim, "GET",
                          f"/_synapse/admin/v1/rooms/{room}/messages?dir=b&limit=1000",
                          senders[0])
        in_history = isinstance(page, dict) and any(
            e.get("event_id") == event for e in page.get("chunk", []))
        print(f"  never arrived: {event}: on the peer {status} "
              f"{seen.get('content', {}).get('body') if isinstance(seen, dict) else seen!r}, "
              f"origin_server_ts {seen.get('origin_server_ts') if isinstance(seen, dict) else '-'}; "
              f"the victim answers {status_v} {found!r:.200}; in its last 1,000 events: "
              f"{in_history}", flush=True)
    server.kill()
    for event in sorted(at_peer_missing):
        print(f"  never reached the peer: {event}")
    print(f"{cycles} kills under {SENDERS} senders: "
          f"{len(acked['events'])} messages acknowledged, {len(lost['events'])} lost; "
          f"{len(acked['to_device'])} to-device, {len(lost['to_device'])} lost; "
          f"{acked['keys']} one-time keys, {lost['keys']} lost; "
          f"{len(acked['media'])} files, {len(lost['media'])} lost; "
          f"federation: {len(acked['remote'])} of the peer's messages, "
          f"{len(remote_missing)} never arrived; {len(acked['events'])} of the victim's, "
          f"{len(at_peer_missing)} never reached the peer")
    bad = (lost["events"] or lost["to_device"] or lost["keys"] or lost["media"]
           or remote_missing or at_peer_missing)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
