// matrix-js-sdk's MatrixRTC session (what Element Call runs on) against delayed events: alice's
// client joins a call — its membership manager schedules a delayed "leave", sends the join and
// keeps restarting the leave — and bob's client sees her in the call. Then alice's process is
// killed, as a phone's app is: nobody restarts the leave any more, the server sends it, and bob's
// client sees her gone. Run by tests/integration/clients.rs as
// `node rtc.mjs --homeserver URL`; it runs itself again with `--member` for alice's process.
import { fork } from "node:child_process";
import { api, assert, baseUrl, register, run, startClient, step, waitFor } from "./lib.mjs";

const CALL_MEMBER = "org.matrix.msc3401.call.member";
const FOCUS = { type: "livekit", livekit_service_url: "https://lk.test.local" };
const MEMBER_CONFIG = {
  useNewMembershipManager: true,
  // The server sends the leave 4 s after the client stops restarting it (every second).
  membershipServerSideExpiryTimeout: 4000,
  membershipKeepAlivePeriod: 1000,
  manageMediaKeys: false,
};

async function delayedEvents(token) {
  const response = await fetch(`${baseUrl}/_matrix/client/unstable/org.matrix.msc4140/delayed_events`, {
    headers: { authorization: `Bearer ${token}` },
  });
  assert(response.status === 200, `delayed_events: ${response.status}`);
  return (await response.json()).delayed_events;
}

/** Alice's process: joins the call and stays until it is killed. */
async function member() {
  const args = process.argv.slice(2);
  const session = JSON.parse(args[args.indexOf("--member") + 1]);
  const roomId = args[args.indexOf("--room") + 1];
  const client = await startClient(session, { crypto: false });
  const room = await waitFor("the room in alice's client", () => client.getRoom(roomId));
  const rtc = client.matrixRTC.getRoomSession(room);
  rtc.joinRoomSession([FOCUS], { type: "livekit", focus_selection: "oldest_membership" }, MEMBER_CONFIG);
  await waitFor("alice's session to be joined", () => rtc.isJoined());
  process.send?.("joined");
  await new Promise(() => {});
}

if (process.argv.includes("--member")) {
  member().catch((error) => {
    console.error(error?.stack || String(error));
    process.exit(1);
  });
} else {
  run(async () => {
    step("alice and bob in a room where members may join calls");
    const alice = await register("jsrtcalice");
    const bobSession = await register("jsrtcbob");
    const created = await api("POST", "/createRoom", alice.access_token, {
      name: "call",
      invite: [bobSession.user_id],
      power_level_content_override: { events: { [CALL_MEMBER]: 0 } },
    });
    assert(created.status === 200, JSON.stringify(created));
    const roomId = created.body.room_id;
    const joined = await api("POST", `/rooms/${encodeURIComponent(roomId)}/join`, bobSession.access_token, {});
    assert(joined.status === 200, JSON.stringify(joined));
    const bob = await startClient(bobSession, { crypto: false });
    // Element Call shows a room's summary (MSC3266) before joining its call.
    const summary = await bob.getRoomSummary(roomId);
    assert(summary.room_id === roomId && summary.name === "call", JSON.stringify(summary));
    const bobRoom = await waitFor("the room in bob's client", () => bob.getRoom(roomId));
    const bobRtc = bob.matrixRTC.getRoomSession(bobRoom);

    step("alice's client joins the call in a process of its own");
    const child = fork(new URL(import.meta.url).pathname, [
      "--homeserver", baseUrl, "--member", JSON.stringify(alice), "--room", roomId,
    ], { stdio: ["ignore", "inherit", "inherit", "ipc"] });
    const exited = new Promise((resolve) => child.on("exit", resolve));
    // Should this process fail, alice's must not outlive it: it holds the test's output open.
    process.on("exit", () => child.kill("SIGKILL"));
    // One listener from the start: a listener added per poll missed a message that came
    // between two polls, and the wait timed out on a loaded machine.
    let aliceJoined = false;
    child.on("message", (message) => { aliceJoined ||= message === "joined"; });
    await waitFor("alice's process to join", () => aliceJoined, 60_000);

    step("bob's client sees alice in the call; her leave is scheduled and kept alive");
    await waitFor("alice among bob's call memberships", () =>
      bobRtc.memberships.some((m) => m.sender === alice.user_id));
    const [leave] = await waitFor("alice's delayed leave", async () => {
      const events = await delayedEvents(alice.access_token);
      return events.length === 1 && events;
    });
    assert(leave.type === CALL_MEMBER && leave.state_key !== undefined, JSON.stringify(leave));
    assert(JSON.stringify(leave.content) === "{}", `the delayed event is the leave: ${JSON.stringify(leave)}`);
    await waitFor("the leave to be restarted by alice's client", async () => {
      const [now] = await delayedEvents(alice.access_token);
      return now && now.delay_id === leave.delay_id && now.running_since > leave.running_since;
    });

    step("alice's process is killed: the server sends her leave, bob's client sees her gone");
    child.kill("SIGKILL");
    await exited;
    await waitFor("alice gone from bob's call memberships", () =>
      !bobRtc.memberships.some((m) => m.sender === alice.user_id), 20_000);
    const left = await delayedEvents(alice.access_token);
    assert(left.length === 0, `nothing left scheduled: ${JSON.stringify(left)}`);

    console.log("js rtc: ok");
  });
}
