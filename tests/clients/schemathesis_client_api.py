#!/usr/bin/env python3
"""Schema-driven fuzzing of culvert's client API with schemathesis (PyPI).

schemathesis reads the spec's own OpenAPI files (../shared/matrix-spec/data/api/client-server/)
and sends each operation generated requests — valid ones, and ones that break the schema — and
fails on any 5xx answer or dropped connection (its `not_a_server_error` check). Every file gets
a fresh account (so `logout` or `deactivate` in one file cannot blind the next) that owns a room
with a message; the path parameters `roomId`, `userId`, `eventId` and `deviceId` are that
room's, that user's and that device's most of the time, so the fuzzing reaches the handlers and
not only the 404s of made-up IDs.

Driven in the suite by tests/integration/fuzz_client_api.rs (few examples) and at length by
scripts/fuzz-client-api. Prints `fuzz ok: …` when no operation failed.

usage: schemathesis_client_api.py BASE_URL SPEC_DIR [--max-examples N] [--files a,b,...]
       [--phases examples,coverage,fuzzing] [--seed N]
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request

SCHEMATHESIS = os.path.join(os.path.dirname(sys.executable), "schemathesis")


def call(base, method, path, token=None, body=None):
    request = urllib.request.Request(
        base + path,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def fresh_account(base, n):
    """A new user with a room holding one message: the IDs the fuzzing uses."""
    name = f"fuzz{n}_{int(time.time() * 1000) % 100000000}"
    session = call(
        base,
        "POST",
        "/_matrix/client/v3/register",
        body={"username": name, "password": "a fuzzing password", "auth": {"type": "m.login.dummy"}},
    )
    token = session["access_token"]
    room = call(base, "POST", "/_matrix/client/v3/createRoom", token, {"name": "fuzzed"})["room_id"]
    txn = f"t{n}"
    event = call(
        base,
        "PUT",
        f"/_matrix/client/v3/rooms/{urllib.request.quote(room)}/send/m.room.message/{txn}",
        token,
        {"msgtype": "m.text", "body": "fuzz me"},
    )["event_id"]
    return token, session["user_id"], session["device_id"], room, event


def base_path(spec_file):
    """The file's `servers` basePath default (e.g. /_matrix/client/v3)."""
    text = open(spec_file).read()
    match = re.search(r"basePath:\s*\n\s*default:\s*(\S+)", text)
    return match.group(1) if match else ""


def config_file(directory, user, device, room, event):
    """schemathesis.toml binding the path parameters to real IDs with probability 0.8."""
    values = {"rooms": room, "users": user, "devices": device, "events": event}
    lines = []
    for name, value in values.items():
        lines += [f"[dictionaries.{name}]", f"values = [{json.dumps(value)}]", ""]
    lines.append("[parameters]")
    for parameter, dictionary in [
        ("roomId", "rooms"),
        ("userId", "users"),
        ("deviceId", "devices"),
        ("eventId", "events"),
    ]:
        lines.append(f'"path.{parameter}" = {{ dictionary = "{dictionary}", probability = 0.8 }}')
    path = os.path.join(directory, "schemathesis.toml")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def summary_line(output):
    match = re.search(r"(\d+) generated, .*", output)
    return match.group(0) if match else "no test cases"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("base")
    parser.add_argument("spec_dir")
    parser.add_argument("--max-examples", type=int, default=10)
    parser.add_argument("--files", default="")
    parser.add_argument("--phases", default="examples,coverage,fuzzing")
    parser.add_argument("--seed", default="")
    args = parser.parse_args()
    base = args.base.rstrip("/")

    files = sorted(f for f in os.listdir(args.spec_dir) if f.endswith(".yaml"))
    if args.files:
        wanted = set(args.files.split(","))
        files = [f for f in files if f.removesuffix(".yaml") in wanted]
        missing = wanted - {f.removesuffix(".yaml") for f in files}
        if missing:
            sys.exit(f"no such spec files: {sorted(missing)}")

    failed = []
    cases = 0
    with tempfile.TemporaryDirectory() as scratch:
        for n, name in enumerate(files):
            spec = os.path.join(args.spec_dir, name)
            token, user, device, room, event = fresh_account(base, n)
            config = config_file(scratch, user, device, room, event)
            command = [
                SCHEMATHESIS,
                "--config-file",
                config,
                "run",
                spec,
                "--url",
                base + base_path(spec),
                "--header",
                f"Authorization: Bearer {token}",
                "--checks",
                "not_a_server_error",
                "--max-examples",
                str(args.max_examples),
                "--phases",
                args.phases,
                "--workers",
                "1",
                "--suppress-health-check",
                "all",
                "--request-timeout",
                "30",
                "--no-color",
            ]
            if args.seed:
                command += ["--seed", args.seed]
            # In the scratch directory: schemathesis keeps a cache in its working directory.
            run = subprocess.run(command, capture_output=True, text=True, cwd=scratch)
            output = run.stdout + run.stderr
            generated = re.search(r"(\d+) generated", output)
            cases += int(generated.group(1)) if generated else 0
            verdict = "ok" if run.returncode == 0 else f"FAILED (exit {run.returncode})"
            print(f"{name}: {verdict}: {summary_line(output)}", flush=True)
            if run.returncode != 0:
                failed.append(name)
                print(output, flush=True)
            # The server must still answer after every file.
            call(base, "GET", "/_matrix/client/versions")

    if failed:
        print(f"fuzz FAILED in {len(failed)} of {len(files)} files: {', '.join(failed)}")
        sys.exit(1)
    print(f"fuzz ok: {len(files)} spec files, {cases} requests, no server error")


if __name__ == "__main__":
    main()
