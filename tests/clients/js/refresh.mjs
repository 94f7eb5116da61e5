// matrix-js-sdk and refresh tokens (spec v1.3): the client logs in asking for a refresh token,
// gets an access token that lives two seconds (the test server's `access_token_lifetime_ms`),
// and keeps creating rooms, sending and syncing across several expiries through its own
// refresh logic (a soft-logout `M_UNKNOWN_TOKEN`, then its `tokenRefreshFunction` calling
// `POST /refresh`). Run by tests/integration/clients.rs.
import { api, assert, baseUrl, register, run, sdk, startClient, step, waitFor } from "./lib.mjs";

const LIFETIME_MS = 2000;

run(async () => {
  step("register, then log in asking for a refresh token");
  await register("jsrefresh");
  const login = await api("POST", "/login", null, {
    type: "m.login.password",
    identifier: { type: "m.id.user", user: "jsrefresh" },
    password: "js-client-password-1",
    refresh_token: true,
  });
  assert(login.status === 200, JSON.stringify(login));
  assert(login.body.refresh_token, `a refresh token: ${JSON.stringify(login.body)}`);
  assert(login.body.expires_in_ms === LIFETIME_MS, `expires_in_ms: ${JSON.stringify(login.body)}`);

  // The app's refresh function, as the SDK asks for one: no expiry is handed back, so the
  // SDK learns of each expiry from the server's soft logout.
  let refreshes = 0;
  const refresher = sdk.createClient({ baseUrl });
  const tokenRefreshFunction = async (refreshToken) => {
    refreshes += 1;
    const answer = await refresher.refreshToken(refreshToken);
    return { accessToken: answer.access_token, refreshToken: answer.refresh_token };
  };
  const client = await startClient(login.body, {
    crypto: false,
    clientOptions: { refreshToken: login.body.refresh_token, tokenRefreshFunction },
  });

  step("a room, then messages across three expiries");
  const { room_id: roomId } = await client.createRoom({ name: "refresh" });
  for (let round = 1; round <= 3; round++) {
    await new Promise((resolve) => setTimeout(resolve, LIFETIME_MS + 300));
    const body = `after expiry ${round}`;
    await client.sendTextMessage(roomId, body);
    await waitFor(`"${body}" in the client's own timeline (sync kept going)`, () =>
      client.getRoom(roomId)?.getLiveTimeline().getEvents()
        .some((event) => event.getContent().body === body));
  }
  assert(refreshes >= 3, `the SDK refreshed its token (${refreshes} times)`);
  const me = await client.whoami();
  assert(me.user_id === login.body.user_id, JSON.stringify(me));

  step("the first access token is gone for good");
  const old = await api("GET", "/account/whoami", login.body.access_token);
  assert(old.status === 401 && old.body.errcode === "M_UNKNOWN_TOKEN", JSON.stringify(old));

  console.log(`refreshed ${refreshes} times`);
  console.log("js refresh: ok");
});
