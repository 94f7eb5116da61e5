// matrix-js-sdk 37.5's sliding sync (it speaks MSC4186 at
// /_matrix/client/unstable/org.matrix.simplified_msc3575/sync, without a conn_id) against a
// homeserver: a list of rooms, their timelines, a new message, an invite. Run by
// tests/integration/clients.rs as `node sliding_sync.mjs --homeserver URL`.
import { SlidingSync } from "matrix-js-sdk/lib/sliding-sync.js";
import { api, assert, baseUrl, register, run, sdk, step, waitFor, clients } from "./lib.mjs";

function bodies(room) {
  return room
    .getLiveTimeline()
    .getEvents()
    .filter((e) => e.getType() === "m.room.message")
    .map((e) => e.getContent().body);
}

async function say(session, roomId, body, txn) {
  const sent = await api("PUT", `/rooms/${encodeURIComponent(roomId)}/send/m.room.message/${txn}`,
    session.access_token, { msgtype: "m.text", body });
  assert(sent.status === 200, `send: ${JSON.stringify(sent)}`);
}

run(async () => {
  step("alice makes two rooms with bob in them and talks");
  const alice = await register("jsssalice");
  const bob = await register("jsssbob");
  const rooms = [];
  for (const name of ["first", "second"]) {
    const created = await api("POST", "/createRoom", alice.access_token, { name, invite: [bob.user_id] });
    assert(created.status === 200, `createRoom: ${JSON.stringify(created)}`);
    const joined = await api("POST", `/rooms/${encodeURIComponent(created.body.room_id)}/join`, bob.access_token, {});
    assert(joined.status === 200, `join: ${JSON.stringify(joined)}`);
    await say(alice, created.body.room_id, `hello in ${name}`, `t-${name}`);
    rooms.push(created.body.room_id);
  }

  step("bob's client syncs with sliding sync");
  const client = sdk.createClient({
    baseUrl,
    userId: bob.user_id,
    deviceId: bob.device_id,
    accessToken: bob.access_token,
  });
  const lists = new Map([
    ["all", { ranges: [[0, 19]], timeline_limit: 5, required_state: [["*", "*"]] }],
  ]);
  const slidingSync = new SlidingSync(baseUrl, lists, { timeline_limit: 20, required_state: [["*", "*"]] }, client, 3000);
  client.startClient({ slidingSync });
  clients.push(client);
  for (const [i, name] of ["first", "second"].entries()) {
    await waitFor(`room "${name}" with its message`, () => {
      const room = client.getRoom(rooms[i]);
      return room && room.name === name && bodies(room).includes(`hello in ${name}`);
    });
  }
  await waitFor("the list's count", () => slidingSync.getListData("all")?.joinedCount === 2);

  step("a new message reaches the client");
  await say(alice, rooms[0], "news", "t-news");
  await waitFor("the new message", () => bodies(client.getRoom(rooms[0])).includes("news"));
  const copies = bodies(client.getRoom(rooms[0])).filter((b) => b === "news").length;
  assert(copies === 1, `the message shows once, not ${copies} times`);

  step("an invite shows as one");
  const invite = await api("POST", "/createRoom", alice.access_token, { name: "invitation", invite: [bob.user_id] });
  assert(invite.status === 200, `createRoom: ${JSON.stringify(invite)}`);
  await waitFor("the invite", () => client.getRoom(invite.body.room_id)?.getMyMembership() === "invite");

  console.log("js sliding sync: ok");
});
