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
