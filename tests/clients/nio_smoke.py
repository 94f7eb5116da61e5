#!/usr/bin/env python3
"""Smoke test of a homeserver with the real third-party client library matrix-nio.

Run by the Rust integration test tests/integration/clients.rs against an in-process culvert:

    nio_smoke.py --homeserver URL --username NAME --password PW [--registration-token TOKEN]

Steps: register, log in a second client (device "nio-smoke"), whoami, set and read
back the display name, list devices, check a wrong password is refused, log out
and check the old token is dead. nio returns *Error objects instead of raising, so
every response is checked with isinstance. Prints "nio smoke: ok" and exits 0 on
success; otherwise prints the reason to stderr and exits 1.
"""

import argparse
import asyncio
import logging
import sys

import aiohttp
from nio import (
    AsyncClient,
    AsyncClientConfig,
    DevicesResponse,
    LoginError,
    LoginResponse,
    LogoutResponse,
    ProfileGetDisplayNameResponse,
    ProfileSetDisplayNameResponse,
    RegisterResponse,
    WhoamiError,
    WhoamiResponse,
)

DEVICE_NAME = "nio-smoke"
DISPLAY_NAME = "Nio Smoke"
# nio's defaults retry connection errors and 429s forever; fail fast instead.
CONFIG = AsyncClientConfig(max_timeouts=1, max_limit_exceeded=0, request_timeout=30)


class SmokeFailure(Exception):
    pass


def expect(resp, cls, step):
    """Return resp if it is a cls, else fail with what the server actually sent."""
    if not isinstance(resp, cls):
        status = getattr(resp.transport_response, "status", "?")
        raise SmokeFailure(f"{step}: expected {cls.__name__}, got HTTP {status} {resp}")
    return resp


def check(cond, step, msg):
    if not cond:
        raise SmokeFailure(f"{step}: {msg}")


async def smoke(args, clients):
    # nio concatenates homeserver + "/_matrix/...", so a trailing slash would give "//".
    hs, name, pw = args.homeserver.rstrip("/"), args.username, args.password

    # a. register (nio logs this client in with the returned token)
    reg = AsyncClient(hs, name, config=CONFIG)
    clients.append(reg)
    if args.registration_token:
        # 3 POSTs: auth without "type" (expects 401 + session), the token stage
        # (must still be 401, so the flow needs a later stage), then m.login.dummy.
        resp = await reg.register_with_token(name, pw, args.registration_token)
    else:
        resp = await reg.register(name, pw)
    expect(resp, RegisterResponse, "register")
    prefix = f"@{name}:"
    check(resp.user_id.startswith(prefix) and len(resp.user_id) > len(prefix),
          "register", f"user_id {resp.user_id!r} is not {prefix}<server>")
    check(resp.access_token, "register", "no access_token returned")
    user_id = resp.user_id

    # b. password login from a second client
    cli = AsyncClient(hs, name, config=CONFIG)
    clients.append(cli)
    login = expect(await cli.login(pw, device_name=DEVICE_NAME), LoginResponse, "login")
    check(login.user_id == user_id, "login", f"user_id {login.user_id!r} != {user_id!r}")
    check(login.device_id, "login", "no device_id returned")

    # c. whoami
    who = expect(await cli.whoami(), WhoamiResponse, "whoami")
    check(who.user_id == user_id, "whoami", f"user_id {who.user_id!r} != {user_id!r}")
    check(who.device_id in (None, login.device_id), "whoami",
          f"device_id {who.device_id!r} != {login.device_id!r}")

    # d. display name round trip
    expect(await cli.set_displayname(DISPLAY_NAME), ProfileSetDisplayNameResponse, "set_displayname")
    got = expect(await cli.get_displayname(), ProfileGetDisplayNameResponse, "get_displayname")
    check(got.displayname == DISPLAY_NAME, "get_displayname",
          f"got {got.displayname!r}, want {DISPLAY_NAME!r}")

    # e. devices: the registration device plus the login device
    devs = expect(await cli.devices(), DevicesResponse, "devices").devices
    listing = [(d.id, d.display_name) for d in devs]
    check(len(devs) >= 2, "devices", f"want >= 2 devices, got {listing}")
    check((login.device_id, DEVICE_NAME) in listing, "devices",
          f"no device ({login.device_id!r}, {DEVICE_NAME!r}) in {listing}")

    # f. wrong password, from a fresh client that sends no access token
    bad = AsyncClient(hs, name, config=CONFIG)
    clients.append(bad)
    resp = expect(await bad.login(pw + "-wrong", device_name=DEVICE_NAME), LoginError, "login with wrong password")
    check(resp.status_code == "M_FORBIDDEN", "login with wrong password", f"want M_FORBIDDEN, got {resp}")

    # g. logout, then the old token must be rejected
    old_token = cli.access_token
    expect(await cli.logout(), LogoutResponse, "logout")
    cli.access_token = old_token  # nio forgets the token on logout; resend it on purpose
    resp = expect(await cli.whoami(), WhoamiError, "whoami with logged-out token")
    check(resp.status_code == "M_UNKNOWN_TOKEN", "whoami with logged-out token",
          f"want M_UNKNOWN_TOKEN, got {resp}")
    # ...while the registration device's token still works.
    expect(await reg.whoami(), WhoamiResponse, "whoami with other device's token after logout")


async def run(args):
    clients = []
    try:
        await smoke(args, clients)
    except SmokeFailure as e:
        print(f"nio smoke: FAILED: {e}", file=sys.stderr)
        return 1
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
        print(f"nio smoke: FAILED: cannot talk to {args.homeserver}: {type(e).__name__}: {e}",
              file=sys.stderr)
        return 1
    finally:
        for client in clients:  # h. close every client
            await client.close()
    print("nio smoke: ok")
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--homeserver", required=True, help="base URL, e.g. http://127.0.0.1:8008")
    p.add_argument("--username", required=True, help="localpart to register")
    p.add_argument("--password", required=True)
    p.add_argument("--registration-token", help="use m.login.registration_token UIA")
    p.add_argument("--verbose", action="store_true", help="show nio's debug log (incl. response bodies)")
    args = p.parse_args()
    # nio logs a warning for every error body it parses (expected in steps f and g).
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.ERROR)
    sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
