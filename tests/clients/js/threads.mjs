// matrix-js-sdk's own thread support against the server: replies sent through the SDK get their
// m.thread relation, an edit and a reaction ride along, and a client started afterwards builds
// the thread from what the server gives it: the bundled `unsigned["m.relations"]["m.thread"]`
// summary, /relations (recursive) for the thread's events, /threads for the thread list; and the
// SDK's search finds a reply. Run as
// `node threads.mjs --homeserver URL`.
import { Feature, ServerSupport } from "matrix-js-sdk/lib/feature.js";
import { api, assert, login, register, run, sdk, startClient, step, waitFor } from "./lib.mjs";

// Set up as Element runs the SDK: local echoes detached (chronological ordering offers a thread
// reply's echo to the main timeline first, which refuses it with a warning) and timelineSupport,
// which lets the SDK open a thread at a given event (getEventTimeline).
const THREADS = {
  crypto: false,
  clientOptions: { timelineSupport: true },
  startOptions: { threadSupport: true, pendingEventOrdering: sdk.PendingEventOrdering.Detached },
};
const suffix = Math.random().toString(36).slice(2, 8);
const text = (body) => ({ msgtype: "m.text", body });

run(async () => {
  step("alice and bob in a room");
  const aliceName = `jsthreadalice${suffix}`;
  const aliceSession = await register(aliceName);
  const bobSession = await register(`jsthreadbob${suffix}`);
  const created = await api("POST", "/createRoom", aliceSession.access_token, { name: "threads", invite: [bobSession.user_id] });
  assert(created.status === 200, JSON.stringify(created));
  const roomId = created.body.room_id;
  const joined = await api("POST", `/rooms/${encodeURIComponent(roomId)}/join`, bobSession.access_token, {});
  assert(joined.status === 200, JSON.stringify(joined));

  step("both clients start with thread support; /versions makes it stable server-side");
  const alice = await startClient(aliceSession, THREADS);
  const bob = await startClient(bobSession, THREADS);
  assert(alice.supportsThreads() && bob.supportsThreads(), "threadSupport is on");
  // The SDK sets these from /versions (v1.4 or later: threads, /threads and forward pagination).
  const { Thread, FeatureSupport } = sdk;
  assert(Thread.hasServerSideSupport === FeatureSupport.Stable, `thread support ${Thread.hasServerSideSupport}`);
  assert(Thread.hasServerSideListSupport === FeatureSupport.Stable, `thread list support ${Thread.hasServerSideListSupport}`);
  // v1.10: the SDK asks /relations for the thread with recurse=true.
  assert(alice.canSupport.get(Feature.RelationsRecursion) === ServerSupport.Stable, "relations recursion (v1.10)");

  step("alice posts the root, bob answers twice in the thread");
  const { event_id: rootId } = await alice.sendTextMessage(roomId, "thread root");
  const bobRoom = bob.getRoom(roomId);
  const root = await waitFor("the root in bob's client", () => bobRoom.findEventById(rootId));
  // "Reply in thread", as Element does it: the thread object first (the SDK fetches the root
  // through /event for its m.thread summary), then messages with its ID. Without the object the
  // SDK files neither the echo nor the synced reply (matched by transaction_id) in any thread.
  const bobThread = bobRoom.createThread(rootId, root, [], false);
  await waitFor("bob's thread to be set up", () => bobThread.initialEventsFetched);
  const { event_id: reply1 } = await bob.sendMessage(roomId, rootId, text("first reply"));
  const { event_id: reply2 } = await bob.sendMessage(roomId, rootId, text("second reply"));
  const sent = await api("GET", `/rooms/${encodeURIComponent(roomId)}/event/${encodeURIComponent(reply2)}`, bobSession.access_token);
  const relation = sent.body.content?.["m.relates_to"];
  assert(relation?.rel_type === "m.thread" && relation.event_id === rootId, `the SDK threaded the reply: ${JSON.stringify(sent.body)}`);
  await waitFor("bob's client to count two replies", () => bobThread.length === 2);

  step("bob edits his first reply; alice's edit of bob's second reply must not count");
  // An edit is only valid from the original sender: the server must not bundle alice's.
  const edit = (target, body) => ({
    ...text(`* ${body}`),
    "m.new_content": text(body),
    "m.relates_to": { rel_type: "m.replace", event_id: target },
  });
  const { event_id: editId } = await bob.sendEvent(roomId, rootId, "m.room.message", edit(reply1, "first reply, edited"));
  await alice.sendEvent(roomId, rootId, "m.room.message", edit(reply2, "forged by alice"));

  step("bob reacts 👍 to the root; the same reaction again is M_DUPLICATE_ANNOTATION");
  const thumbsUp = () => ({ "m.relates_to": { rel_type: "m.annotation", event_id: rootId, key: "👍" } });
  const { event_id: reactionId } = await bob.sendEvent(roomId, "m.reaction", thumbsUp());
  // The second one by hand: sent through the SDK, its refusal races with the first one's
  // echo in bob's sync, and the SDK, having dropped the local echo as a duplicate, then fails
  // on its own ("updatePendingEventStatus called on an event which is not a local echo").
  const duplicate = await api(
    "PUT",
    `/rooms/${encodeURIComponent(roomId)}/send/m.reaction/again`,
    bobSession.access_token,
    thumbsUp(),
  );
  assert(duplicate.status === 400 && duplicate.body.errcode === "M_DUPLICATE_ANNOTATION",
    `the second 👍 was refused: ${duplicate.status} ${JSON.stringify(duplicate.body)}`);

  step("a fresh client for alice builds the thread from the server");
  const fresh = await startClient(await login(aliceName, "alice fresh js"), THREADS);
  const room = await waitFor("the room in the fresh client", () => fresh.getRoom(roomId));
  const thread = await waitFor("the thread in the fresh client", () => room.getThread(rootId));
  // The SDK fetches the root (/event) for its bundled m.thread summary, then the thread's events.
  await waitFor("the thread's first page", () => thread.initialEventsFetched);
  const summary = thread.rootEvent?.getServerAggregatedRelation("m.thread");
  assert(summary?.count === 2 && summary.latest_event?.event_id === reply2 && summary.current_user_participated === true,
    `bundled m.thread on the root: ${JSON.stringify(summary)}`);
  assert(thread.length === 2, `thread length ${thread.length}`);
  assert(thread.hasCurrentUserParticipated, "alice wrote the root, so she took part");
  assert(thread.replyToEvent?.getId() === reply2, `the latest reply is ${thread.replyToEvent?.getId()}, not bob's second`);

  // Root first, both replies, reply 1 edited (bundled by the server), reply 2 not (alice's "edit").
  const checkThread = (events, how) => {
    const ids = events.map((e) => e.getId());
    assert(ids[0] === rootId && ids.includes(reply1) && ids.includes(reply2), `${how}: ${JSON.stringify(ids)}`);
    const [first, second] = [reply1, reply2].map((id) => events.find((e) => e.getId() === id));
    assert(first.getServerAggregatedRelation("m.replace")?.event_id === editId && first.replacingEventId() === editId
      && first.getContent().body === "first reply, edited", `${how}: reply 1 ${JSON.stringify(first.getUnsigned())}`);
    assert(!second.getServerAggregatedRelation("m.replace") && !second.replacingEvent()
      && second.getContent().body === "second reply", `${how}: reply 2 ${JSON.stringify(second.getUnsigned())}`);
  };
  checkThread(thread.events, "the SDK's first page");

  step("the thread paged one event at a time through /relations (recurse=true, from, limit)");
  thread.timelineSet.resetLiveTimeline(); // forget that page, walk back from the newest event
  for (let pages = 0; await fresh.paginateEventTimeline(thread.liveTimeline, { backwards: true, limit: 1 }); pages++) {
    assert(pages < 20, "/relations keeps returning next_batch");
  }
  checkThread(thread.events, "paged one by one");

  step("the thread opened at reply 1, as a permalink does: /relations from /context's tokens");
  thread.timelineSet.resetLiveTimeline();
  const around = await fresh.getEventTimeline(thread.timelineSet, reply1);
  assert(around, "a thread timeline around reply 1");
  checkThread(around.getEvents(), "around reply 1");

  step("the thread list, which the SDK takes from /threads");
  await room.createThreadsTimelineSets();
  await room.fetchRoomThreads();
  const [all, mine] = room.threadsTimelineSets;
  assert(all.getLiveTimeline().getEvents().some((e) => e.getId() === rootId), "include=all lists the root");
  assert(mine.getLiveTimeline().getEvents().some((e) => e.getId() === rootId), "include=participated lists alice's thread");

  step("the 👍 shows once among the root's annotations");
  const { events: reactions } = await fresh.relations(roomId, rootId, "m.annotation", "m.reaction");
  assert(reactions.length === 1 && reactions[0].getId() === reactionId, `reactions: ${reactions.map((e) => e.getId())}`);

  step("search, as Element's search box does it: searchRoomEvents finds the second reply by a word");
  const found = await fresh.searchRoomEvents({ term: "SECOND" });
  const hits = found.results.map((r) => r.context.getEvent().getId());
  assert(hits.length === 1 && hits[0] === reply2, `search results: ${JSON.stringify(hits)}`);
  assert(found.highlights.includes("second"), `highlights: ${JSON.stringify(found.highlights)}`);
  // The SDK asks for one event of context either side, with profiles.
  assert(found.results[0].context.getTimeline().length >= 2, "the result comes with its context");

  console.log("js threads: ok");
});
