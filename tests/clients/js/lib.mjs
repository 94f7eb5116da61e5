// What the matrix-js-sdk scripts share: the command line, assertions, the raw API for set-up,
// polling, registration and a started client. Each script prints its own "…: ok" line last.
import * as sdk from "matrix-js-sdk";
import { logger } from "matrix-js-sdk/lib/logger.js";

export { sdk };

const args = process.argv.slice(2);
export const baseUrl = args[args.indexOf("--homeserver") + 1];
if (!baseUrl || args.indexOf("--homeserver") < 0) {
  console.error("usage: node SCRIPT.mjs --homeserver URL");
  process.exit(2);
}
// The SDK logs every request at debug level; keep only warnings so failures stay readable.
// The Rust crypto turns its own tracing on at debug level (through console.debug): quiet it too.
logger.setLevel(process.env.JS_SDK_LOG || "warn");
if (!process.env.JS_SDK_LOG) console.debug = () => {};

export const PASSWORD = "js-client-password-1";
export const TIMEOUT_MS = 30_000;

export function step(text) {
  console.log(`-- ${text}`);
}

export function assert(condition, message) {
  if (!condition) throw new Error(`assertion failed: ${message}`);
}

/** One request to the client-server API (v3), for set-up and for checks behind the SDK's back. */
export async function api(method, path, token, body) {
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
export async function waitFor(what, probe, timeoutMs = TIMEOUT_MS) {
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
export async function register(username) {
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

export async function login(username, label) {
  const done = await api("POST", "/login", null, {
    type: "m.login.password",
    identifier: { type: "m.id.user", user: username },
    password: PASSWORD,
    initial_device_display_name: label,
  });
  assert(done.status === 200, `login ${username}: ${JSON.stringify(done)}`);
  return done.body;
}

export const clients = [];

/** A started client (with Rust crypto in memory unless `crypto` is false), synced once. */
export async function startClient(session, { crypto = true, cryptoCallbacks, clientOptions, startOptions } = {}) {
  const client = sdk.createClient({
    baseUrl,
    userId: session.user_id,
    deviceId: session.device_id,
    accessToken: session.access_token,
    cryptoCallbacks,
    ...clientOptions,
  });
  if (crypto) await client.initRustCrypto({ useIndexedDB: false });
  const prepared = new Promise((resolve, reject) => {
    client.on(sdk.ClientEvent.Sync, (state, _prev, data) => {
      if (state === "PREPARED") resolve();
      if (state === "ERROR") reject(new Error(`sync failed: ${data?.error}`));
    });
  });
  client.startClient({ initialSyncLimit: 50, ...startOptions });
  await prepared;
  clients.push(client);
  return client;
}

/** Runs `main`, prints errors, and ends the process (crypto and long-polls keep it alive). */
export async function run(main) {
  try {
    await main();
  } catch (error) {
    console.error(error?.stack || String(error));
    if (error?.data) console.error(`response: ${JSON.stringify(error.data)}`);
    process.exitCode = 1;
  } finally {
    for (const client of clients) client.stopClient();
    setTimeout(() => process.exit(), 100);
  }
}
