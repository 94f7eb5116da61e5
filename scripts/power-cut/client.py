"""The one HTTP helper of the crash, power-cut and soak scripts (standard library only)."""

import json
import urllib.error
import urllib.request


def request(base, method, path, token=None, body=None, raw=None, timeout=10):
    """`method path` on `base`: (status, the JSON answer as a dict, or the bytes of any other).
    `raw` is sent as an octet stream (media), `body` as JSON."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(base + path, data=data, method=method)
    req.add_header("Content-Type", "application/octet-stream" if raw is not None
                   else "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            content = resp.read()
            status = resp.status
    except urllib.error.HTTPError as e:
        content = e.read()
        status = e.code
    if content[:1] == b"{":
        try:
            return status, json.loads(content)
        except ValueError:
            pass
    return status, content if content else {}


def send_until(stop, base, room, token, tag, acknowledged, give_up_on_error=True, pause=0.0):
    """Sends messages to `room` as fast as they are answered (or every `pause` seconds) until
    `stop` is set, appending the ID of each one answered 200 to `acknowledged`. Transaction
    IDs are `{tag}n{n}`. A request that gets no answer (the server was killed) ends the loop,
    unless `give_up_on_error` is false."""
    import time
    n = 0
    while not stop.is_set():
        n += 1
        try:
            status, answer = request(
                base, "PUT", f"/_matrix/client/v3/rooms/{room}/send/m.room.message/{tag}n{n}",
                token, {"msgtype": "m.text", "body": f"{tag} {n}"}, timeout=5)
        except OSError:
            if give_up_on_error:
                return
            continue
        if status == 200:
            acknowledged.append(answer["event_id"])
        if pause:
            time.sleep(pause)
