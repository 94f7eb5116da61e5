"""A long run under a mixed client load, with culvert's memory sampled throughout.

20 users in 4 rooms: each sends a message every second or so, long-polls /sync, now and then
sets typing, sends a read receipt, uploads and downloads a small file, changes its display
name, sends a to-device message and uploads one-time keys. Every 10 s the server's RSS (and
its anonymous part) is sampled. At the end: what was done, the samples per tenth of the run,
and a verdict: memory must level off — the anonymous RSS less what RocksDB reports for its
block cache (which fills towards its capacity) and its open tables' readers (bounded by the
open-files limit; they grow with the database) and less what culvert reports for its own
caches (each bounded; some fill slowly), its peak in the last quarter no higher than
in the second quarter plus 10 % — and no request may have failed with a 5xx or gone
unanswered. (The memtables stay in: RocksDB reports the arena blocks it allocated, most of
them untouched and not resident at first.)

Usage: soak.py CULVERT_BINARY MINUTES WORKDIR
"""

import os
import random
import sys
import threading
import time

from client import request
from power_cut_test import Server

USERS = 20
ROOMS = 4


# What culvert's metrics say about its memory, sampled beside the RSS (short name: metric).
FIGURES = {
    "memtables": "culvert_rocksdb_memtable_bytes",
    "block cache": "culvert_rocksdb_block_cache_bytes",
    "table readers": "culvert_rocksdb_table_readers_bytes",
    "mimalloc committed": "culvert_allocator_rust_committed_bytes",
    "malloc in use": "culvert_allocator_c_in_use_bytes",
    "malloc free": "culvert_allocator_c_free_held_bytes",
    # culvert's own caches, summed over the `cache` label.
    "culvert caches": "culvert_cache_bytes",
}


def figures(metrics):
    """The FIGURES now, MiB (0 for one culvert does not report; a labelled one summed)."""
    values = dict.fromkeys(FIGURES, 0.0)
    status, text = request(metrics, "GET", "/metrics")
    for line in (text.decode() if isinstance(text, bytes) else "").splitlines():
        for short, name in FIGURES.items():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                values[short] += float(line.split()[-1]) / 1048576
    return values


def resident_by_allocator(pid):
    """Anonymous resident memory of `pid` by who mapped it (MiB), from /proc/PID/smaps:
    mimalloc reserves its arenas by the GiB (culvert's own allocations); glibc's malloc
    (RocksDB's) has the `[heap]` and, per thread, heaps aligned to 64 MiB; thread stacks are
    8 MiB; the rest are single large blocks glibc mapped on their own, and small mappings."""
    totals = {"mimalloc resident": 0, "malloc heaps": 0, "other": 0}
    size = start = name = None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split()
            if "-" in head[0] and len(head) >= 5:
                low, high = (int(x, 16) for x in head[0].split("-"))
                size, start, name = high - low, low, head[5] if len(head) > 5 else ""
            elif head[0] == "Anonymous:" and int(head[1]):
                kib = int(head[1])
                if not name and size >= 256 << 20:
                    totals["mimalloc resident"] += kib
                elif name == "[heap]" or (not name and start % (64 << 20) == 0):
                    totals["malloc heaps"] += kib
                else:
                    totals["other"] += kib
    return {k: v / 1024 for k, v in totals.items()}


def memory(pid):
    """RSS and anonymous RSS of `pid`, MiB."""
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon"):
                fields[key] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["RssAnon"]


def main():
    binary, minutes, work = sys.argv[1], float(sys.argv[2]), sys.argv[3]
    port = int(os.environ.get("SOAK_PORT", "18660"))
    base = f"http://127.0.0.1:{port}"
    config = os.path.join(work, "culvert.toml")
    with open(config, "w") as f:
        f.write(f'[global]\nserver_name = "soak.localhost"\ndatabase_path = "{work}/db"\n'
                f'address = "127.0.0.1"\nport = {port}\nallow_registration = true\n'
                f'rate_limits = {{ enabled = false }}\nlog = "warn"\nadmin_room = false\n'
                f'metrics = {{ address = "127.0.0.1:{port + 1}" }}\n'
                + os.environ.get("SOAK_CONFIG", "").replace("\\n", "\n") + "\n")
    server = Server(binary, config, open(os.path.join(work, "log"), "ab"))
    try:
        server.wait_ready(base)
        run(base, f"http://127.0.0.1:{port + 1}", server.proc, minutes)
    finally:
        server.kill()


def run(base, metrics, server, minutes):
    users = []
    for i in range(USERS):
        status, answer = request(base, "POST", "/_matrix/client/v3/register", body={
            "username": f"soak{i}", "password": "soak-password",
            "auth": {"type": "m.login.dummy"}})
        assert status == 200, answer
        users.append(answer)
    rooms = []
    for r in range(ROOMS):
        owner = users[r]
        status, answer = request(base, "POST", "/_matrix/client/v3/createRoom", owner["access_token"],
                                 {"preset": "public_chat", "name": f"soak {r}"})
        assert status == 200, answer
        rooms.append(answer["room_id"])
    for i, user in enumerate(users):
        for room in rooms[:2] if i % 2 else rooms[2:]:
            request(base, "POST", f"/_matrix/client/v3/join/{room}", user["access_token"], {})
    stop = threading.Event()
    counts = {}
    failures = []
    lock = threading.Lock()

    def count(what, status):
        with lock:
            counts[what] = counts.get(what, 0) + 1
            if status >= 500:
                failures.append(f"{what}: {status}")

    def client(i):
        user = users[i]
        token = user["access_token"]
        mine = rooms[:2] if i % 2 else rooms[2:]
        rng = random.Random(i)
        since = None
        n = 0
        while not stop.is_set():
            n += 1
            room = rng.choice(mine)
            try:
                status, _ = request(base, "PUT",
                                    f"/_matrix/client/v3/rooms/{room}/send/m.room.message/s{n}",
                                    token, {"msgtype": "m.text", "body": f"soak {i}/{n}"})
                count("send", status)
                path = "/_matrix/client/v3/sync?timeout=1000" + (f"&since={since}" if since else "")
                status, answer = request(base, "GET", path, token)
                count("sync", status)
                if status == 200:
                    since = answer["next_batch"]
                    events = answer.get("rooms", {}).get("join", {}).get(room, {}) \
                        .get("timeline", {}).get("events", [])
                    if events and rng.random() < 0.3:
                        last = events[-1]["event_id"]
                        status, _ = request(base, "POST",
                                            f"/_matrix/client/v3/rooms/{room}/receipt/m.read/{last}",
                                            token, {})
                        count("receipt", status)
                roll = rng.random()
                if roll < 0.1:
                    status, _ = request(base, "PUT",
                                        f"/_matrix/client/v3/rooms/{room}/typing/{user['user_id']}",
                                        token, {"typing": True, "timeout": 3000})
                    count("typing", status)
                elif roll < 0.13:
                    status, answer = request(base, "POST", "/_matrix/media/v3/upload", token,
                                             raw=os.urandom(rng.randrange(1000, 50000)))
                    count("upload", status)
                    if status == 200:
                        mxc = answer["content_uri"].removeprefix("mxc://")
                        status, _ = request(base, "GET",
                                            f"/_matrix/client/v1/media/download/{mxc}", token)
                        count("download", status)
                elif roll < 0.15:
                    status, _ = request(base, "PUT",
                                        f"/_matrix/client/v3/profile/{user['user_id']}/displayname",
                                        token, {"displayname": f"soak {i} #{n}"})
                    count("profile", status)
                elif roll < 0.2:
                    other = users[rng.randrange(USERS)]
                    status, _ = request(base, "PUT", f"/_matrix/client/v3/sendToDevice/m.test/t{i}n{n}",
                                        token, {"messages": {other["user_id"]: {
                                            other["device_id"]: {"n": n}}}})
                    count("to-device", status)
                elif roll < 0.22:
                    keys = {f"signed_curve25519:K{i}n{n}k{k}": {"key": f"{i}-{n}-{k}",
                                                                "signatures": {}}
                            for k in range(5)}
                    status, _ = request(base, "POST", "/_matrix/client/v3/keys/upload", token,
                                        {"one_time_keys": keys})
                    count("keys", status)
                    status, _ = request(base, "POST", "/_matrix/client/v3/keys/claim", token,
                                        {"one_time_keys": {user["user_id"]: {
                                            user["device_id"]: "signed_curve25519"}}})
                    count("claim", status)
            except OSError as e:
                with lock:
                    failures.append(f"no answer: {e}")
            time.sleep(rng.uniform(0.5, 1.5))

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(USERS)]
    started = time.time()
    for t in threads:
        t.start()
    samples = []
    end = started + minutes * 60
    while time.time() < end and server.poll() is None:
        rss, anon = memory(server.pid)
        now = figures(metrics)
        now.update(resident_by_allocator(server.pid))
        samples.append((time.time() - started, rss, anon, now))
        print(f"  {samples[-1][0] / 60:5.1f} min: RSS {rss:6.1f} MiB, anonymous {anon:6.1f} ("
              + ", ".join(f"{k} {v:5.1f}" for k, v in now.items())
              + f"), {sum(counts.values())} requests", flush=True)
        time.sleep(10)
    stop.set()
    for t in threads:
        t.join(timeout=120)
    if server.poll() is not None:
        print(f"culvert exited during the soak ({server.returncode})")
        sys.exit(1)
    print(f"requests: {sum(counts.values())} "
          f"({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))})")
    tenth = max(1, len(samples) // 10)
    for k in range(0, len(samples), tenth):
        part = samples[k:k + tenth]
        print(f"  {part[0][0] / 60:5.1f}-{part[-1][0] / 60:5.1f} min: RSS peak "
              f"{max(s[1] for s in part):6.1f} MiB, anonymous peak {max(s[2] for s in part):6.1f}; at "
              f"the end: "
              + ", ".join(f"{k} {v:5.1f}" for k, v in part[-1][3].items()))
    # Three figures have bounds of their own: RocksDB's block cache fills towards its
    # capacity as the data is read back, the open tables' readers (index tops, properties)
    # grow with the database up to the open-files limit, and culvert's own caches fill
    # towards theirs (state snapshots, member events and display names accumulate as members
    # rename themselves). Those are bounds, not leaks: what must level off is the rest. (Not
    # the memtables: their figure is the arena blocks allocated, resident only as they fill,
    # so it would take off too much.)
    bounded = ("block cache", "table readers", "culvert caches")
    quarter = max(1, len(samples) // 4)
    rest = [s[2] - sum(s[3][k] for k in bounded) for s in samples]
    second = max(rest[quarter:2 * quarter] or rest)
    last = max(rest[-quarter:])
    level = last <= second * 1.10
    print(f"anonymous RSS less RocksDB's {', '.join(bounded)}, peak: second quarter "
          f"{second:.1f} MiB, last quarter {last:.1f} MiB: "
          f"{'levelled off' if level else 'STILL GROWING'} "
          f"(at the end: " + ", ".join(f"{k} {samples[-1][3][k]:.1f}" for k in bounded)
          + f" MiB; RSS peak {max(s[1] for s in samples):.1f} MiB)")
    print(f"server errors or unanswered requests: {len(failures)}"
          + (f" (first: {failures[:5]})" if failures else ""))
    sys.exit(0 if level and not failures else 1)


if __name__ == "__main__":
    main()
