"""Pulls the plug on culvert, many times, and counts what it had acknowledged and then lost.

Each cycle: culvert runs on a database inside a `powercut_fs.py` mount (unsynced data lives
only in memory there); 8 senders send messages into one room, each remembering every event ID
answered 200; mid-stream the server is killed (SIGKILL) and the power is cut at once (every
unsynced write dropped); the filesystem is mounted again over what "reached the disk", culvert
starts on it, and every acknowledged event is looked up. A lost event is one answered 200 that
is not there after the restart.

Usage: power_cut_test.py CULVERT_BINARY DURABILITY CYCLES WORKDIR
Prints one line per cycle and a summary; exits 1 if anything acknowledged was lost.
"""

import os
import signal
import subprocess
import sys
import threading
import time

from client import request, send_until

HERE = os.path.dirname(os.path.abspath(__file__))
SENDERS = 8


class Mount:
    """A powercut_fs mount of `backing` at `mountpoint`."""

    def __init__(self, backing, mountpoint, log):
        self.mountpoint = mountpoint
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "powercut_fs.py"), backing, mountpoint],
            stdout=log, stderr=subprocess.STDOUT)
        for _ in range(100):
            if os.path.ismount(mountpoint):
                return
            time.sleep(0.05)
        raise RuntimeError("the power-cut filesystem did not mount")

    def cut_and_unmount(self):
        try:
            os.mkdir(os.path.join(self.mountpoint, ".power-cut"))
        except OSError:
            pass  # the cut happened; the directory is never made
        self.unmount()

    def unmount(self):
        subprocess.run(["umount", self.mountpoint], check=True)
        self.proc.wait(timeout=30)


class Server:
    def __init__(self, binary, config, log):
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("CULVERT_", "CONDUIT_"))}
        self.proc = subprocess.Popen([binary, "--config", config], stdout=log,
                                     stderr=subprocess.STDOUT, env=env)

    def wait_ready(self, base):
        for _ in range(600):
            try:
                status, _ = request(base, "GET", "/_matrix/client/versions", timeout=1)
                if status == 200:
                    return
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError("culvert exited at start-up")
            time.sleep(0.05)
        raise RuntimeError("culvert did not start")

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)


def register(base, name):
    body = {"username": name, "password": "power-cut-password", "auth": {"type": "m.login.dummy"}}
    status, answer = request(base, "POST", "/_matrix/client/v3/register", body=body)
    if status == 401:
        body["auth"]["session"] = answer["session"]
        status, answer = request(base, "POST", "/_matrix/client/v3/register", body=body)
    if status != 200:
        raise RuntimeError(f"register {name}: {status} {answer}")
    return answer["access_token"]


def login(base, name):
    status, answer = request(base, "POST", "/_matrix/client/v3/login", body={
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": name},
        "password": "power-cut-password"})
    if status != 200:
        raise RuntimeError(f"login {name}: {status} {answer}")
    return answer["access_token"]


def main():
    binary, durability, cycles, work = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    backing, mountpoint = os.path.join(work, "disk"), os.path.join(work, "mnt")
    os.makedirs(backing, exist_ok=True)
    os.makedirs(mountpoint, exist_ok=True)
    port = 18650
    base = f"http://127.0.0.1:{port}"
    config = os.path.join(work, "culvert.toml")
    with open(config, "w") as f:
        f.write(f'[global]\nserver_name = "power.cut"\ndatabase_path = "{mountpoint}/db"\n'
                f'address = "127.0.0.1"\nport = {port}\nallow_registration = true\n'
                f'rate_limits = {{ enabled = false }}\nlog = "warn"\n'
                f'durability = "{durability}"\n')
    log = open(os.path.join(work, "log"), "ab")
    acknowledged = []  # event IDs answered 200, all cycles
    lost_ever = set()
    last_sent = []

    def missing(events, token):
        return {e for e in events
                if request(base, "GET", f"/_matrix/client/v3/rooms/{room}/event/{e}",
                           token)[0] != 200}
    # Set-up, then an orderly shutdown and unmount: the accounts and the room are on disk.
    mount = Mount(backing, mountpoint, log)
    server = Server(binary, config, log)
    server.wait_ready(base)
    tokens = [register(base, f"sender{i}") for i in range(SENDERS)]
    status, answer = request(base, "POST", "/_matrix/client/v3/createRoom", tokens[0],
                             {"preset": "public_chat"})
    room = answer["room_id"]
    for token in tokens[1:]:
        request(base, "POST", f"/_matrix/client/v3/join/{room}", token, {})
    server.stop()
    mount.unmount()
    for cycle in range(1, cycles + 1):
        mount = Mount(backing, mountpoint, log)
        server = Server(binary, config, log)
        server.wait_ready(base)
        tokens = [login(base, f"sender{i}") for i in range(SENDERS)]
        # What the last cycle acknowledged is there (every cycle's is checked again at the end).
        lost = missing(last_sent, tokens[0]) if cycle > 1 else set()
        lost_ever |= lost
        # Send, and pull the plug mid-stream.
        stop = threading.Event()
        sent = []

        threads = [threading.Thread(target=send_until,
                                    args=(stop, base, room, tokens[i], f"c{cycle}s{i}", sent))
                   for i in range(SENDERS)]
        for t in threads:
            t.start()
        time.sleep(1.0 + (cycle % 5) * 0.1)
        server.kill()
        mount.cut_and_unmount()
        stop.set()
        for t in threads:
            t.join()
        if cycle > 1:
            print(f"  after power cut {cycle - 1}: {len(lost)} of its {len(last_sent)} "
                  f"acknowledged events lost", flush=True)
        acknowledged.extend(sent)
        last_sent = sent
    # A last start: the last cycle's events, then every cycle's again.
    mount = Mount(backing, mountpoint, log)
    server = Server(binary, config, log)
    server.wait_ready(base)
    token = login(base, "sender0")
    lost = missing(last_sent, token)
    print(f"  after power cut {cycles}: {len(lost)} of its {len(last_sent)} acknowledged "
          f"events lost", flush=True)
    lost_ever |= lost | missing(acknowledged, token)
    server.kill()
    mount.unmount()
    print(f"durability = \"{durability}\": {cycles} power cuts under {SENDERS} senders, "
          f"{len(acknowledged)} events acknowledged, {len(lost_ever)} lost")
    sys.exit(1 if lost_ever else 0)


if __name__ == "__main__":
    main()
