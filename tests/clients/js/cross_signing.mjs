// matrix-js-sdk (Rust crypto) cross-signing a user's own devices, and another user seeing them
// as verified by their owner. Run by tests/integration/clients.rs as
// `node cross_signing.mjs --homeserver URL`.
//
// When a device cross-signs another device of its user, the SDK uploads that device's key
// object as /keys/query gave it — with the device's own signature still on it — plus the new
// self-signing-key signature: the server must keep the new signature and take the old one as
// the one it already has.
import { PASSWORD, api, assert, login, register, run, startClient, step, waitFor } from "./lib.mjs";

async function bootstrap(client) {
  await client.getCrypto().bootstrapCrossSigning({
    setupNewCrossSigning: true,
    authUploadDeviceSigningKeys: async (makeRequest) => {
      try {
        await makeRequest(null);
      } catch (error) {
        if (error.httpStatus !== 401 || !error.data?.flows) throw error;
        await makeRequest({
          type: "m.login.password",
          identifier: { type: "m.id.user", user: client.getUserId() },
          password: PASSWORD,
          session: error.data.session,
        });
      }
    },
  });
}

run(async () => {
  step("register alice and bob; alice bootstraps cross-signing on her first device");
  const aliceSession = await register("jsxalice");
  const bobSession = await register("jsxbob");
  const alice = await startClient(aliceSession);
  await bootstrap(alice);
  await waitFor("alice's cross-signing to be ready", () => alice.getCrypto().isCrossSigningReady());

  step("alice logs in a second device");
  const second = await startClient(await login("jsxalice", "jsxalice js 2"));
  await waitFor("the first device to see the second one", async () => {
    const devices = await alice.getCrypto().getUserDeviceInfo([alice.getUserId()], true);
    return devices.get(alice.getUserId())?.has(second.getDeviceId());
  });

  step("the first device cross-signs the second");
  await alice.getCrypto().crossSignDevice(second.getDeviceId());
  const query = await waitFor("the server to hold the self-signing key's signature of the second device", async () => {
    const answer = await api("POST", "/keys/query", bobSession.access_token, {
      device_keys: { [alice.getUserId()]: [] },
    });
    const selfSigning = Object.keys(answer.body.self_signing_keys?.[alice.getUserId()]?.keys ?? {})[0];
    const signatures = answer.body.device_keys?.[alice.getUserId()]?.[second.getDeviceId()]?.signatures?.[alice.getUserId()];
    return selfSigning && signatures?.[selfSigning] && signatures?.[`ed25519:${second.getDeviceId()}`] ? answer : null;
  });
  assert(query.body.failures === undefined || Object.keys(query.body.failures).length === 0,
    `no failures: ${JSON.stringify(query.body.failures)}`);

  step(`bob sees both of alice's devices (${alice.getDeviceId()}, ${second.getDeviceId()}) signed by her`);
  const bob = await startClient(bobSession);
  // Bob's client tracks the devices of the users it shares an encrypted room with.
  const { room_id: roomId } = await alice.createRoom({
    name: "cross-signing",
    invite: [bob.getUserId()],
    initial_state: [{ type: "m.room.encryption", state_key: "", content: { algorithm: "m.megolm.v1.aes-sha2" } }],
  });
  await waitFor("bob's invite", () => bob.getRoom(roomId)?.getMyMembership() === "invite");
  await bob.joinRoom(roomId);
  await waitFor("bob to see alice's cross-signing keys", () =>
    bob.getCrypto().userHasCrossSigningKeys(alice.getUserId(), true));
  for (const deviceId of [alice.getDeviceId(), second.getDeviceId()]) {
    try {
      await waitFor(`bob to see ${deviceId} cross-signed by alice`, async () => {
        await bob.getCrypto().getUserDeviceInfo([alice.getUserId()], true);
        const status = await bob.getCrypto().getDeviceVerificationStatus(alice.getUserId(), deviceId);
        return status?.signedByOwner;
      });
    } catch (error) {
      const keys = await api("POST", "/keys/query", bobSession.access_token, {
        device_keys: { [alice.getUserId()]: [] },
      });
      console.error(`what /keys/query shows bob: ${JSON.stringify(keys.body)}`);
      const status = await bob.getCrypto().getDeviceVerificationStatus(alice.getUserId(), deviceId);
      console.error(`bob's client says: ${JSON.stringify(status)}`);
      throw error;
    }
  }

  console.log("js cross-signing: ok");
});
