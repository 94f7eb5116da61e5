// matrix-js-sdk (with its Rust crypto, matrix-sdk-crypto-wasm) against culvert: the real-client
// acceptance scenario of end-to-end encryption. Run by tests/integration/clients.rs as
//   node e2ee.mjs --homeserver http://127.0.0.1:PORT
// Every step asserts what it expects; the last line printed on success is "js e2ee: ok".
import * as sdk from "matrix-js-sdk";
import { logger } from "matrix-js-sdk/lib/logger.js";

const args = process.argv.slice(2);
const baseUrl = args[args.indexOf("--homeserver") + 1];
if (!baseUrl || args.indexOf("--homeserver") < 0) {
  console.error("usage: node e2ee.mjs --homeserver URL");
  process.exit(2);
}
// The SDK logs every request at debug level; keep only warnings so failures stay readable.
// The Rust crypto turns its own tracing on at debug level (through console.debug): quiet it too.
logger.setLevel(process.env.JS_SDK_LOG || "warn");
if (!process.env.JS_SDK_LOG) console.debug = () => {};

const PASSWORD = "js-e2ee-password-1";
const TIMEOUT_MS = 30_000;

function step(text) {
  console.log(`-- ${text}`);
}

function assert(condition, message) {
  if (!condition) throw new Error(`assertion failed: ${message}`);
}

async function api(method, path, token, body) {
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

/** Polls `probe` until it returns a truthy value; fails with `what` after the timeout. */
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
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  throw new Error(`timed out waiting for ${what}${lastError ? `: ${lastError}` : ""}`);
}

/** Registers through the user-interactive auth dummy stage, as a browser client would. */
async function register(username) {
  const first = await api("POST", "/register", null, { username, password: PASSWORD });
  assert(first.status === 401 && first.body.session, `register opens UIA: ${JSON.stringify(first)}`);
  const done = await api("POST", "/register", null, {
    username,
    password: PASSWORD,
    initial_device_display_name: `${username} js 1`,
    auth: { type: "m.login.dummy", session: first.body.session },
  });
  assert(done.status === 200, `register ${username}: ${JSON.stringify(done)}`);
  return done.body;
}

async function login(username, label) {
  const done = await api("POST", "/login", null, {
    type: "m.login.password",
    identifier: { type: "m.id.user", user: username },
    password: PASSWORD,
    initial_device_display_name: label,
  });
  assert(done.status === 200, `login ${username}: ${JSON.stringify(done)}`);
  return done.body;
}

const clients = [];
/** Alice's secret storage key once step 5 made it; what a user would type in as recovery key. */
let recoveryKey = null;
const cryptoCallbacks = {
  getSecretStorageKey: async ({ keys }) => {
    const keyId = Object.keys(keys)[0];
    return recoveryKey && keyId ? [keyId, recoveryKey.privateKey] : null;
  },
};

/** A started client with Rust crypto in memory, synced once. */
async function startClient(session) {
  // Watches the client's traffic: the syncs that announce a change of its own user's keys, and
  // its /keys/query requests, to know when the query it makes after such a sync has finished.
  const keyQueries = { started: 0, finished: 0, ownChanges: 0, startedAtOwnChange: 0 };
  const fetchFn = async (url, init) => {
    const isQuery = String(url).includes("/keys/query");
    if (isQuery) keyQueries.started += 1;
    try {
      const response = await fetch(url, init);
      if (String(url).includes("/sync") && response.ok) {
        // Read before the SDK sees the response, so the query it triggers is counted after.
        const body = await response.clone().json();
        if (body.device_lists?.changed?.includes(session.user_id)) {
          keyQueries.ownChanges += 1;
          keyQueries.startedAtOwnChange = keyQueries.started;
        }
      }
      return response;
    } finally {
      if (isQuery) keyQueries.finished += 1;
    }
  };
  const client = sdk.createClient({
    fetchFn,
    baseUrl,
    userId: session.user_id,
    deviceId: session.device_id,
    accessToken: session.access_token,
    cryptoCallbacks,
  });
  await client.initRustCrypto({ useIndexedDB: false });
  if (!pushRulesBuilt) {
    // Push rules are not part of culvert yet (another issue) and the SDK will not sync without
    // them: give it the empty rule set a fresh account has, the SDK adds its defaults to it.
    client.getPushRules = async () => {
      client.setPushRules({ global: {} });
      return client.pushRules;
    };
  }
  const prepared = new Promise((resolve, reject) => {
    client.on(sdk.ClientEvent.Sync, (state, _prev, data) => {
      if (state === "PREPARED") resolve();
      if (state === "ERROR") reject(new Error(`sync failed: ${data?.error}`));
    });
  });
  client.startClient({ initialSyncLimit: 50 });
  await prepared;
  clients.push(client);
  client.keyQueries = keyQueries;
  return client;
}

/** Waits until `client` has the message `body` in `roomId`, decrypted. */
async function waitForDecrypted(client, roomId, body) {
  return waitFor(`${client.getUserId()}/${client.getDeviceId()} to decrypt "${body}"`, async () => {
    const room = client.getRoom(roomId);
    if (!room) return null;
    for (const event of room.getLiveTimeline().getEvents()) {
      if (!event.isEncrypted()) continue;
      if (event.isDecryptionFailure()) {
        // Keys may have arrived since the first attempt (to-device, or a backup restore).
        await client.decryptEventIfNeeded(event, { isRetry: true });
      }
      if (event.getType() === "m.room.message" && event.getClearContent()?.body === body) {
        return event;
      }
    }
    return null;
  });
}

async function waitForJoined(client, roomId, userId) {
  await waitFor(`${client.getUserId()} to see ${userId} joined`, () =>
    client.getRoom(roomId)?.getMember(userId)?.membership === "join");
}

let pushRulesBuilt = true;

async function main() {
  // 1. Two users in an encrypted room, each decrypting the other.
  step("register alice and bob");
  const aliceSession = await register("jsalice");
  const bobSession = await register("jsbob");
  pushRulesBuilt = (await api("GET", "/pushrules/", aliceSession.access_token)).status !== 404;
  const alice = await startClient(aliceSession);
  const bob = await startClient(bobSession);

  step("alice creates an encrypted room and invites bob");
  const { room_id: roomId } = await alice.createRoom({
    name: "js e2ee",
    invite: [bob.getUserId()],
    initial_state: [
      {
        type: "m.room.encryption",
        state_key: "",
        content: { algorithm: "m.megolm.v1.aes-sha2" },
      },
    ],
  });
  await waitFor("bob's invite", () => bob.getRoom(roomId)?.getMyMembership() === "invite");
  await bob.joinRoom(roomId);
  await waitForJoined(alice, roomId, bob.getUserId());
  await waitFor("both clients to know the room is encrypted", async () =>
    (await alice.getCrypto().isEncryptionEnabledInRoom(roomId)) &&
    (await bob.getCrypto().isEncryptionEnabledInRoom(roomId)));

  step("each sends a message; each decrypts the other's");
  const sent1 = await alice.sendTextMessage(roomId, "hello from alice");
  const sent2 = await bob.sendTextMessage(roomId, "hello from bob");
  const raw = await api("GET", `/rooms/${encodeURIComponent(roomId)}/event/${encodeURIComponent(sent1.event_id)}`,
    aliceSession.access_token);
  assert(raw.body.type === "m.room.encrypted", `the server stores ciphertext: ${JSON.stringify(raw.body)}`);
  await waitForDecrypted(bob, roomId, "hello from alice");
  await waitForDecrypted(alice, roomId, "hello from bob");
  assert(sent2.event_id, "bob's message has an id");

  // 2. A later device of bob receives the keys of messages sent after it appeared.
  step("bob logs in another device (the third in the room)");
  const bob3Session = await login("jsbob", "jsbob js 3");
  const bob3 = await startClient(bob3Session);
  step("alice learns of the new device through device_lists");
  await waitFor("alice to see bob's third device", async () => {
    const devices = await alice.getCrypto().getUserDeviceInfo([bob.getUserId()], true);
    return devices.get(bob.getUserId())?.has(bob3Session.device_id);
  });
  await alice.sendTextMessage(roomId, "after the third device");
  await waitForDecrypted(bob3, roomId, "after the third device");
  await waitForDecrypted(bob, roomId, "after the third device");

  // 3. Cross-signing: alice bootstraps it, bob sees her keys and her device signed by them.
  step("alice bootstraps cross-signing");
  let passwordAsked = 0;
  const bootstrap = () => alice.getCrypto().bootstrapCrossSigning({
    setupNewCrossSigning: true,
    authUploadDeviceSigningKeys: async (makeRequest) => {
      try {
        // The spec lets a first upload go without auth; a replacement must be authorised.
        await makeRequest(null);
      } catch (error) {
        if (error.httpStatus !== 401 || !error.data?.flows) throw error;
        passwordAsked += 1;
        await makeRequest({
          type: "m.login.password",
          identifier: { type: "m.id.user", user: alice.getUserId() },
          password: PASSWORD,
          session: error.data.session,
        });
      }
    },
  });
  const ownChangesBefore = alice.keyQueries.ownChanges;
  await bootstrap();
  const firstMasterId = await alice.getCrypto().getCrossSigningKeyId();
  assert(firstMasterId, "alice has a master key id after the first bootstrap");
  // The upload announces a change of alice's own keys (device_lists.changed in her sync) and her
  // client re-queries them. A reset while that query is in flight sees its answer (the first
  // keys, correctly) after having made new private keys, and drops those as not matching
  // ("Removed some or all of our private cross signing keys" in the Rust crypto): a client-side
  // race, so wait for that query, then give the client a moment to process its answer.
  const q = alice.keyQueries;
  await waitFor("alice's sync to announce her new keys and her client to re-query them", () =>
    q.ownChanges > ownChangesBefore && q.started > q.startedAtOwnChange && q.finished === q.started);
  // The upload of the keys and of the device's signature may be announced in two syncs; wait
  // until no query has been in flight for a while (the answer is processed after it arrives).
  let quietSince = Date.now();
  let seen = q.started;
  await waitFor("alice's key queries to settle", () => {
    if (q.started !== seen || q.finished !== q.started) {
      seen = q.started;
      quietSince = Date.now();
    }
    return Date.now() - quietSince >= 700;
  });
  step("alice resets cross-signing, which needs her password (user-interactive auth)");
  await bootstrap();
  assert(passwordAsked === 1, `the replacement, and only it, asked for the password (${passwordAsked})`);
  await waitFor("alice's cross-signing to be ready", () => alice.getCrypto().isCrossSigningReady());
  const masterId = await alice.getCrypto().getCrossSigningKeyId();
  assert(masterId && masterId !== firstMasterId, "alice has a new master key id");
  const query = await api("POST", "/keys/query", bobSession.access_token, {
    device_keys: { [alice.getUserId()]: [] },
  });
  const master = query.body.master_keys?.[alice.getUserId()];
  assert(master && Object.values(master.keys).includes(masterId),
    `bob's /keys/query shows alice's master key: ${JSON.stringify(query.body)}`);
  step("bob's client sees alice verified-capable");
  await waitFor("bob to see alice's cross-signing keys", () =>
    bob.getCrypto().userHasCrossSigningKeys(alice.getUserId(), true));
  await waitFor("bob to see alice's device signed by her self-signing key", async () => {
    await bob.getCrypto().getUserDeviceInfo([alice.getUserId()], true);
    const status = await bob.getCrypto().getDeviceVerificationStatus(alice.getUserId(), alice.getDeviceId());
    return status?.signedByOwner;
  });
  const aliceStatus = await bob.getCrypto().getUserVerificationStatus(alice.getUserId());
  assert(!aliceStatus.isCrossSigningVerified(), "bob has not verified alice (yet): verified-capable only");

  // 4. Key backup: alice backs up her room keys; a fresh device restores them and decrypts old messages.
  step("alice creates a key backup and uploads her keys");
  await alice.getCrypto().resetKeyBackup();
  const version = await waitFor("the backup to become active", () =>
    alice.getCrypto().getActiveSessionBackupVersion());
  const backupKey = await alice.getCrypto().getSessionBackupPrivateKey();
  assert(backupKey, "alice holds the backup decryption key");
  await waitFor("alice's room keys in the server's backup", async () => {
    const info = await api("GET", "/room_keys/version", aliceSession.access_token);
    return info.status === 200 && info.body.version === version && info.body.count >= 2;
  });

  step("a fresh device of alice restores the backup and decrypts old messages");
  const fresh = await startClient(await login("jsalice", "jsalice js fresh"));
  await fresh.getCrypto().storeSessionBackupPrivateKey(backupKey, version);
  const restored = await fresh.getCrypto().restoreKeyBackup();
  assert(restored.imported >= 2, `restored keys: ${JSON.stringify(restored)}`);
  await waitForDecrypted(fresh, roomId, "hello from bob");
  await waitForDecrypted(fresh, roomId, "hello from alice");

  // 5. Secret storage, as Element sets up "recovery": the cross-signing keys and a new backup key
  // go into account data, encrypted; a device that only knows the recovery key gets both.
  step("alice sets up secret storage with her cross-signing keys and a new key backup");
  recoveryKey = await alice.getCrypto().createRecoveryKeyFromPassphrase();
  await alice.getCrypto().bootstrapSecretStorage({
    createSecretStorageKey: async () => recoveryKey,
    setupNewSecretStorage: true,
    setupNewKeyBackup: true,
  });
  assert(await alice.getCrypto().isSecretStorageReady(), "alice's secret storage is ready");
  const version2 = await waitFor("the new backup to become active", async () => {
    const active = await alice.getCrypto().getActiveSessionBackupVersion();
    return active && active !== version ? active : null;
  });
  await waitFor("alice's room keys in the new backup", async () => {
    const info = await api("GET", "/room_keys/version", aliceSession.access_token);
    return info.status === 200 && info.body.version === version2 && info.body.count >= 2;
  });

  step("a device of alice with only the recovery key restores cross-signing and the backup");
  const recovered = await startClient(await login("jsalice", "jsalice js recovered"));
  // The private keys in secret storage are checked against the public ones this device has
  // downloaded: wait until it has them (its first /keys/query runs after the first sync, and
  // bootstrapping before it ends fails to import the keys — as Element waits, so does this).
  await waitFor("the recovered device to know alice's cross-signing keys", async () => {
    await recovered.getCrypto().getUserDeviceInfo([alice.getUserId()], true);
    return (await recovered.getCrypto().getCrossSigningStatus()).publicKeysOnDevice;
  });
  // Finds the private keys in secret storage, caches them and signs this device with them.
  await recovered.getCrypto().bootstrapCrossSigning({});
  await waitFor("the recovered device's cross-signing to be ready", () =>
    recovered.getCrypto().isCrossSigningReady());
  assert(await recovered.getCrypto().getCrossSigningKeyId() === masterId, "the same master key");
  await recovered.getCrypto().loadSessionBackupPrivateKeyFromSecretStorage();
  const restored2 = await recovered.getCrypto().restoreKeyBackup();
  assert(restored2.imported >= 2, `restored from secret storage: ${JSON.stringify(restored2)}`);
  await waitForDecrypted(recovered, roomId, "hello from bob");
  await waitFor("bob to see the recovered device signed by alice", async () => {
    await bob.getCrypto().getUserDeviceInfo([alice.getUserId()], true);
    const status = await bob.getCrypto().getDeviceVerificationStatus(alice.getUserId(), recovered.getDeviceId());
    return status?.signedByOwner;
  });

  console.log("js e2ee: ok");
}

try {
  await main();
} catch (error) {
  console.error(error?.stack || String(error));
  if (error?.data) console.error(`response: ${JSON.stringify(error.data)}`);
  process.exitCode = 1;
} finally {
  for (const client of clients) client.stopClient();
  // Rust crypto and pending long-polls keep the event loop alive; the verdict is already set.
  setTimeout(() => process.exit(), 100);
}
