// matrix-js-sdk (Rust crypto) across two homeservers: a user on each, in an encrypted room,
// decrypt each other's messages. Keys are queried and claimed, and room keys sent to-device,
// over federation. Run by tests/integration/synapse.rs as
//   node e2ee_federated.mjs --homeserver-a URL --homeserver-b URL
// (self-signed TLS: run with NODE_TLS_REJECT_UNAUTHORIZED=0). Prints "js federated e2ee: ok".
import * as sdk from "matrix-js-sdk";
import { logger } from "matrix-js-sdk/lib/logger.js";

const args = process.argv.slice(2);
const arg = (name) => (args.indexOf(name) >= 0 ? args[args.indexOf(name) + 1] : undefined);
const urlA = arg("--homeserver-a");
const urlB = arg("--homeserver-b");
if (!urlA || !urlB) {
  console.error("usage: node e2ee_federated.mjs --homeserver-a URL --homeserver-b URL");
  process.exit(2);
}
logger.setLevel(process.env.JS_SDK_LOG || "warn");
if (!process.env.JS_SDK_LOG) console.debug = () => {};

const PASSWORD = "js-e2ee-password-1";
const TIMEOUT_MS = 45_000;

function step(text) {
  console.log(`-- ${text}`);
}

function assert(condition, message) {
  if (!condition) throw new Error(`assertion failed: ${message}`);
}

async function api(baseUrl, method, path, token, body) {
  const response = await fetch(`${baseUrl}/_matrix/client/v3${path}`, {
    method,
    headers: {
      "content-type": "application/json",
      ...(token ? { authorization: `Bearer ${token}` } : {}),
    },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return { status: response.status, body: await response.json() };
}

async function waitFor(what, probe, timeoutMs = TIMEOUT_MS) {
  const deadline = Date.now() + timeoutMs;
  let lastError;
  while (Date.now() < deadline) {
    try {
      const value = await probe();
      if (value) return value;
    } catch (error) {
      lastError = error;
    }
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
  throw new Error(`timed out waiting for ${what}${lastError ? `: ${lastError}` : ""}`);
}

/** Registers through the dummy stage of user-interactive auth. */
async function register(baseUrl, username) {
  const first = await api(baseUrl, "POST", "/register", null, { username, password: PASSWORD });
  assert(first.status === 401 && first.body.session, `register opens UIA: ${JSON.stringify(first)}`);
  const done = await api(baseUrl, "POST", "/register", null, {
    username,
    password: PASSWORD,
    auth: { type: "m.login.dummy", session: first.body.session },
  });
  assert(done.status === 200, `register ${username}: ${JSON.stringify(done)}`);
  return done.body;
}

const clients = [];

async function startClient(baseUrl, session) {
  const client = sdk.createClient({
    baseUrl,
    userId: session.user_id,
    deviceId: session.device_id,
    accessToken: session.access_token,
  });
  await client.initRustCrypto({ useIndexedDB: false });
  const prepared = new Promise((resolve, reject) => {
    client.on(sdk.ClientEvent.Sync, (state, _prev, data) => {
      if (state === "PREPARED") resolve();
      if (state === "ERROR") reject(new Error(`sync failed: ${data?.error}`));
    });
  });
  client.startClient({ initialSyncLimit: 50 });
  await prepared;
  clients.push(client);
  return client;
}

async function waitForDecrypted(client, roomId, body) {
  return waitFor(`${client.getUserId()} to decrypt "${body}"`, async () => {
    const room = client.getRoom(roomId);
    if (!room) return null;
    for (const event of room.getLiveTimeline().getEvents()) {
      if (!event.isEncrypted()) continue;
      if (event.isDecryptionFailure()) {
        await client.decryptEventIfNeeded(event, { isRetry: true });
      }
      if (event.getType() === "m.room.message" && event.getClearContent()?.body === body) {
        return event;
      }
    }
    return null;
  });
}

async function main() {
  step("register alice on A and bob on B");
  const alice = await startClient(urlA, await register(urlA, "fedalice"));
  const bob = await startClient(urlB, await register(urlB, "fedbob"));

  step("alice creates an encrypted room on A and invites bob");
  const { room_id: roomId } = await alice.createRoom({
    name: "federated e2ee",
    invite: [bob.getUserId()],
    initial_state: [
      { type: "m.room.encryption", state_key: "", content: { algorithm: "m.megolm.v1.aes-sha2" } },
    ],
  });
  await waitFor("bob's invite", () => bob.getRoom(roomId)?.getMyMembership() === "invite");
  await bob.joinRoom(roomId);
  await waitFor("alice to see bob joined", () =>
    alice.getRoom(roomId)?.getMember(bob.getUserId())?.membership === "join");
  await waitFor("both clients to know the room is encrypted", async () =>
    (await alice.getCrypto().isEncryptionEnabledInRoom(roomId)) &&
    (await bob.getCrypto().isEncryptionEnabledInRoom(roomId)));

  step("alice's device list includes bob's device (keys queried over federation)");
  await waitFor("alice to know bob's device", async () => {
    const devices = await alice.getCrypto().getUserDeviceInfo([bob.getUserId()], true);
    return devices.get(bob.getUserId())?.size > 0;
  });

  step("alice sends; bob decrypts");
  await alice.sendMessage(roomId, { msgtype: "m.text", body: "secret from A" });
  const fromAlice = await waitForDecrypted(bob, roomId, "secret from A");
  assert(fromAlice.getWireType() === "m.room.encrypted", "the message travelled encrypted");

  step("bob sends; alice decrypts");
  await bob.sendMessage(roomId, { msgtype: "m.text", body: "secret from B" });
  await waitForDecrypted(alice, roomId, "secret from B");

  console.log("js federated e2ee: ok");
}

main()
  .then(() => {
    for (const client of clients) client.stopClient();
    process.exit(0);
  })
  .catch((error) => {
    console.error(error);
    for (const client of clients) client.stopClient();
    process.exit(1);
  });
