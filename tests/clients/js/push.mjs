// matrix-js-sdk and push: the client registers a pusher (to the test's gateway, given with
// --gateway), sees the unread count of a room rise through its own sync, and fall again when it
// sends a read receipt. Run by tests/integration/clients.rs as
// `node push.mjs --homeserver URL --gateway URL`; the test then checks what the gateway got.
import { api, assert, register, run, sdk, startClient, step, waitFor } from "./lib.mjs";

const args = process.argv.slice(2);
const gateway = args[args.indexOf("--gateway") + 1];
assert(args.includes("--gateway") && gateway, "usage: node push.mjs --homeserver URL --gateway URL");

run(async () => {
  step("alice and bob in a room");
  const alice = await register("jspushalice");
  const bobSession = await register("jspushbob");
  const created = await api("POST", "/createRoom", alice.access_token, { name: "push", invite: [bobSession.user_id] });
  assert(created.status === 200, JSON.stringify(created));
  const roomId = created.body.room_id;
  const joined = await api("POST", `/rooms/${encodeURIComponent(roomId)}/join`, bobSession.access_token, {});
  assert(joined.status === 200, JSON.stringify(joined));
  const bob = await startClient(bobSession, { crypto: false });

  step("bob's client registers a pusher");
  await bob.setPusher({
    kind: "http",
    app_id: "org.culvert.js",
    pushkey: "js-pushkey",
    app_display_name: "culvert js",
    device_display_name: "node",
    lang: "en",
    data: { url: gateway, format: "event_id_only" },
  });
  const { pushers } = await bob.getPushers();
  assert(pushers.length === 1 && pushers[0].pushkey === "js-pushkey", JSON.stringify(pushers));

  step("alice writes: bob's client sees one unread notification");
  const sent = await api("PUT", `/rooms/${encodeURIComponent(roomId)}/send/m.room.message/js-push-1`,
    alice.access_token, { msgtype: "m.text", body: "ring ring" });
  assert(sent.status === 200, JSON.stringify(sent));
  await waitFor("the count to be 1", () =>
    bob.getRoom(roomId)?.getUnreadNotificationCount(sdk.NotificationCountType.Total) === 1);

  step("bob reads it: the count goes back to 0");
  const room = bob.getRoom(roomId);
  const event = await waitFor("the message in bob's timeline", () =>
    room.getLiveTimeline().getEvents().find((e) => e.getId() === sent.body.event_id));
  await bob.sendReadReceipt(event);
  await waitFor("the count to be 0", () =>
    room.getUnreadNotificationCount(sdk.NotificationCountType.Total) === 0);

  console.log(`pushed event: ${sent.body.event_id}`);
  console.log("js push: ok");
});
