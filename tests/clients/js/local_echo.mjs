// matrix-js-sdk's local echo against a homeserver: each message a client sends shows once. Run
// by tests/integration/clients.rs as `node local_echo.mjs --homeserver URL`.
//
// The server's answer to each send is held back until the client's own /sync has delivered the
// event: the SDK then meets the event while its local echo is still pending, with no event ID
// to match, and only `unsigned.transaction_id` tells it the two are one (what nheko and Element
// rely on; without it a message shows twice, the copy "failed to send").
import { sdk, api, assert, login, register, run, startClient, step, waitFor } from "./lib.mjs";

const synced = new Map(); // event ID → unsigned, as the client's syncs delivered it

/** fetch, with sends held until their event came through the sync. */
async function watchingFetch(url, init) {
  const response = await fetch(url, init);
  const path = String(url);
  if (path.includes("/sync") && response.ok) {
    const body = await response.clone().json();
    for (const room of Object.values(body.rooms?.join ?? {})) {
      for (const event of room.timeline?.events ?? []) synced.set(event.event_id, event.unsigned ?? {});
    }
  }
  if (init?.method === "PUT" && path.includes("/send/") && response.ok) {
    const { event_id: eventId } = await response.clone().json();
    await waitFor(`the sync to deliver ${eventId} before its send answer`, () => synced.has(eventId), 10_000);
  }
  return response;
}

run(async () => {
  step("register echo and log in a second device");
  const session = await register("jsecho");
  const other = await login("jsecho", "jsecho second device");
  const client = await startClient(session, {
    crypto: false,
    clientOptions: { fetchFn: watchingFetch },
    startOptions: { pendingEventOrdering: sdk.PendingEventOrdering.Detached },
  });

  step("create a room");
  const { room_id: roomId } = await client.createRoom({ name: "local echo" });
  await waitFor("the room in the client", () => client.getRoom(roomId));
  const room = client.getRoom(roomId);

  step("send three messages, each answered only after the sync delivered it");
  const bodies = ["echo one", "echo two", "echo three"];
  const sent = [];
  for (const body of bodies) {
    const { event_id: eventId } = await client.sendTextMessage(roomId, body);
    sent.push(eventId);
  }

  step("each message is in the timeline once, nothing is pending");
  await waitFor("no pending events", () => room.getPendingEvents().length === 0);
  const timeline = room.getLiveTimeline().getEvents();
  for (const [i, body] of bodies.entries()) {
    const copies = timeline.filter((e) => e.getContent()?.body === body);
    assert(copies.length === 1, `"${body}" shows ${copies.length} times`);
    assert(copies[0].getId() === sent[i], `"${body}" has the server's event ID`);
    assert(copies[0].status === null, `"${body}" is sent, not ${copies[0].status}`);
  }
  step("the sync carried each event's transaction ID to this device");
  for (const eventId of sent) {
    assert(synced.get(eventId)?.transaction_id, `${eventId} came without transaction_id: ${JSON.stringify(synced.get(eventId))}`);
  }

  step("another device of the same user sees no transaction IDs");
  const theirs = await api("GET", "/sync?timeout=0", other.access_token);
  const events = theirs.body.rooms.join[roomId].timeline.events;
  for (const eventId of sent) {
    const event = events.find((e) => e.event_id === eventId);
    assert(event, `the other device's sync has ${eventId}`);
    assert(event.unsigned?.transaction_id === undefined, `no transaction_id for the other device: ${JSON.stringify(event.unsigned)}`);
  }

  console.log("js local echo: ok");
});
