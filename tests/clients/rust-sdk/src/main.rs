//! A real client against a homeserver's simplified sliding sync (MSC4186): matrix-sdk and
//! matrix-sdk-ui 0.18 used the way Element X uses them — `SyncService` (the room-list and the
//! encryption connections), `RoomListService`'s sorted room list, room subscriptions and the
//! `Timeline` of an opened room.
//!
//! ```text
//! sdk-sliding-sync --homeserver http://127.0.0.1:8008
//! ```
//!
//! The scenario:
//! 1. alice and bob register (UIA, `m.login.dummy`); alice creates three rooms, bob joins them,
//!    alice sends a message in each, oldest room first;
//! 2. bob starts his `SyncService`: his room list holds the three rooms, most recent first;
//! 3. alice writes in the oldest room: it moves to the top of bob's list, and bob's timeline of
//!    the room (opened with a room subscription) shows the message after the first one;
//! 4. alice creates a fourth room inviting bob: bob's list shows the invite, bob joins through
//!    the SDK, the list shows the room joined;
//! 5. alice starts her own `SyncService`, creates an encrypted room, invites bob, bob joins,
//!    alice sends an encrypted message, bob's timeline shows it decrypted (to-device and the
//!    e2ee extension at work);
//! 6. thread subscriptions (MSC4306/MSC4308; the server runs with `thread_subscriptions`): a
//!    second device of bob's subscribes to a thread alice started; bob's syncing client learns
//!    it through the sliding-sync extension; bob unsubscribes through the SDK, whose automatic
//!    subscription for an older reply the server then skips; a newer reply's automatic
//!    subscription from the other device reaches bob's client as automatic.
//!
//! Build (its own workspace and Cargo.lock, not culvert's):
//! `cargo build --manifest-path tests/clients/rust-sdk/Cargo.toml`. With `RUST_LOG` set (e.g.
//! `RUST_LOG=matrix_sdk::sliding_sync=debug,matrix_sdk_ui=debug`) the SDK logs on stderr.
//!
//! Every wait is bounded ([`WAIT`]) and names what it waited for. The last line is
//! `sdk sliding sync: ok` on success; a failure exits 1 with the reason on stderr.

// matrix-sdk-ui's futures are deep.
#![recursion_limit = "256"]

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::Write as _,
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use futures_util::{StreamExt as _, pin_mut};
use matrix_sdk::{
    Client, Room, RoomState, ThreadingSupport,
    ruma::{
        OwnedDeviceId, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UserId,
        api::client::{
            account::register,
            keys::get_keys,
            room::create_room::{self, v3::RoomPreset},
            threads::subscribe_thread,
            uiaa,
        },
        events::{
            InitialStateEvent,
            room::{
                encryption::RoomEncryptionEventContent, member::MembershipState,
                message::RoomMessageEventContent,
            },
        },
    },
    sliding_sync::VersionBuilder,
    store::{StoredThreadSubscription, ThreadSubscriptionStatus},
};
use matrix_sdk_ui::{
    eyeball_im::Vector,
    room_list_service::{RoomListItem, filters},
    sync_service::{State as SyncState, SyncService},
    timeline::{RoomExt as _, Timeline},
};
use tokio::{sync::watch, task::JoinHandle};

/// The bound of every wait and every single request.
const WAIT: Duration = Duration::from_secs(30);
/// How often a wait looks again.
const POLL: Duration = Duration::from_millis(100);

fn main() -> ExitCode {
    let homeserver = match parse_args() {
        Ok(homeserver) => homeserver,
        Err(message) => {
            eprintln!("{message}\nusage: sdk-sliding-sync --homeserver http://127.0.0.1:PORT");
            return ExitCode::from(2);
        }
    };
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let outcome = runtime.block_on(async {
        // A backstop only: every step below has its own, shorter bound.
        match tokio::time::timeout(Duration::from_secs(300), run(&homeserver)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(anyhow!("the whole scenario took more than 300 s")),
        }
    });
    let code = match outcome {
        Ok(()) => {
            println!("sdk sliding sync: ok");
            0
        }
        Err(error) => {
            eprintln!("sdk sliding sync: FAILED: {error:#}");
            1
        }
    };
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // The SDK's background tasks are of no further interest: do not wait for them.
    std::process::exit(code);
}

fn parse_args() -> Result<String, String> {
    let mut args = std::env::args().skip(1);
    let mut homeserver = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => return Err("a matrix-sdk sliding sync client test".to_owned()),
            "--homeserver" => {
                homeserver = Some(args.next().ok_or("--homeserver needs a URL")?);
            }
            other => match other.strip_prefix("--homeserver=") {
                Some(url) => homeserver = Some(url.to_owned()),
                None => return Err(format!("unknown argument {other:?}")),
            },
        }
    }
    homeserver.ok_or_else(|| "--homeserver is required".to_owned())
}

/// Prints one progress line with the time since the start.
struct Progress(Instant);

impl Progress {
    fn say(&self, message: impl std::fmt::Display) {
        println!("[{:>6.2}s] {message}", self.0.elapsed().as_secs_f64());
    }
}

/// What one look at the world found: done (with a value), or not yet (and what was seen).
enum Look<T> {
    Done(T),
    NotYet(String),
}

/// The running sync services, checked by every wait: a failed one ends the run at once with
/// its error instead of a time-out.
#[derive(Default)]
struct Services(Vec<(&'static str, Arc<SyncService>)>);

impl Services {
    fn check(&self) -> Result<()> {
        for (who, service) in &self.0 {
            match service.state().get() {
                SyncState::Idle | SyncState::Running => {}
                SyncState::Error(error) => bail!("{who}'s SyncService failed: {error}"),
                SyncState::Terminated => bail!("{who}'s SyncService terminated unexpectedly"),
                SyncState::Offline => bail!("{who}'s SyncService went offline"),
            }
        }
        Ok(())
    }

    /// Waits (at most [`WAIT`]) until `look` finds what it looks for.
    async fn wait_for<T>(
        &self,
        what: &str,
        mut look: impl AsyncFnMut() -> Result<Look<T>>,
    ) -> Result<T> {
        let deadline = Instant::now() + WAIT;
        let mut seen: String;
        loop {
            self.check()
                .with_context(|| format!("while waiting for {what}"))?;
            let remaining = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(remaining.max(POLL), look()).await {
                Ok(Ok(Look::Done(value))) => return Ok(value),
                Ok(Ok(Look::NotYet(now))) => seen = now,
                Ok(Err(error)) => return Err(error.context(format!("while waiting for {what}"))),
                Err(_) => seen = "(the check itself did not finish)".to_owned(),
            }
            if Instant::now() >= deadline {
                bail!(
                    "timed out after {} s waiting for {what}; last seen: {seen}",
                    WAIT.as_secs()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// One request (or other single SDK call), bounded by [`WAIT`].
async fn bounded<T, E>(what: &str, call: impl IntoFuture<Output = Result<T, E>>) -> Result<T>
where
    E: Into<anyhow::Error>,
{
    match tokio::time::timeout(WAIT, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(error.into().context(format!("{what} failed"))),
        Err(_) => bail!("{what} did not finish within {} s", WAIT.as_secs()),
    }
}

/// Human names for room IDs in messages.
#[derive(Default)]
struct Names(BTreeMap<OwnedRoomId, String>);

impl Names {
    fn add(&mut self, room: &RoomId, name: &str) {
        self.0.insert(room.to_owned(), name.to_owned());
    }

    fn of(&self, room: &RoomId) -> String {
        self.0
            .get(room)
            .cloned()
            .unwrap_or_else(|| room.to_string())
    }

    fn list(&self, rooms: &[OwnedRoomId]) -> String {
        let names: Vec<String> = rooms.iter().map(|room| self.of(room)).collect();
        format!("[{}]", names.join(", "))
    }
}

/// A user's SDK client.
struct User {
    client: Client,
    localpart: String,
    user_id: OwnedUserId,
    device_id: OwnedDeviceId,
}

/// Registers `localpart` through user-interactive auth with the `m.login.dummy` stage, on an SDK
/// client that chose sliding sync from the server's `/versions`.
async fn register(homeserver: &str, localpart: &str) -> Result<User> {
    let client = bounded(
        &format!(
            "building an SDK client for {homeserver} (VersionBuilder::DiscoverNative: GET \
             /_matrix/client/versions must list org.matrix.simplified_msc3575: true in \
             unstable_features)"
        ),
        Client::builder()
            .homeserver_url(homeserver)
            .sliding_sync_version_builder(VersionBuilder::DiscoverNative)
            .with_threading_support(ThreadingSupport::Enabled {
                with_subscriptions: true,
            })
            .build(),
    )
    .await?;
    let password = format!("{localpart}-password");
    let request = |auth: Option<uiaa::AuthData>| {
        let mut request = register::v3::Request::new();
        request.username = Some(localpart.to_owned());
        request.password = Some(password.clone());
        request.initial_device_display_name = Some("sdk-sliding-sync".to_owned());
        request.auth = auth;
        request
    };
    let first = tokio::time::timeout(WAIT, client.matrix_auth().register(request(None)))
        .await
        .map_err(|_| {
            anyhow!(
                "registering {localpart} did not finish within {} s",
                WAIT.as_secs()
            )
        })?;
    match first {
        Ok(_) => {} // a server that needs no auth for this: fine
        Err(error) => {
            let Some(info) = error.as_uiaa_response() else {
                return Err(anyhow::Error::from(error)
                    .context(format!("registering {localpart}: expected a UIA 401")));
            };
            ensure!(
                info.flows
                    .iter()
                    .any(|flow| flow.stages == [uiaa::AuthType::Dummy]),
                "registering {localpart}: no m.login.dummy flow offered (flows: {:?})",
                info.flows
            );
            let mut dummy = uiaa::Dummy::new();
            dummy.session = info.session.clone();
            bounded(
                &format!("registering {localpart} with the m.login.dummy stage"),
                client
                    .matrix_auth()
                    .register(request(Some(uiaa::AuthData::Dummy(dummy)))),
            )
            .await?;
        }
    }
    let user_id = client
        .user_id()
        .context("no user ID after registration")?
        .to_owned();
    let device_id = client
        .device_id()
        .context("no device ID after registration")?
        .to_owned();
    // The event cache must listen to sync responses before the first sync (timelines, latest
    // events and the room list's order are built on it).
    client
        .event_cache()
        .subscribe()
        .context("subscribing the event cache")?;
    Ok(User {
        client,
        localpart: localpart.to_owned(),
        user_id,
        device_id,
    })
}

/// Logs `localpart` in on a new device (a client that does not sync), as [`register`] set
/// the password.
async fn login(homeserver: &str, localpart: &str) -> Result<Client> {
    let client = bounded(
        &format!("building a second SDK client for {localpart}"),
        Client::builder().homeserver_url(homeserver).build(),
    )
    .await?;
    let password = format!("{localpart}-password");
    bounded(
        &format!("logging {localpart} in on a second device"),
        client
            .matrix_auth()
            .login_username(localpart, &password)
            .initial_device_display_name("sdk-sliding-sync phone")
            .into_future(),
    )
    .await?;
    Ok(client)
}

/// Builds and starts a user's `SyncService` (room-list and encryption connections).
async fn start_sync(user: &User) -> Result<Arc<SyncService>> {
    let service = bounded(
        "building the SyncService",
        SyncService::builder(user.client.clone()).build(),
    )
    .await?;
    let service = Arc::new(service);
    service.start().await;
    Ok(service)
}

/// Keeps the current order of a user's room list (as the app shows it: sorted by the SDK,
/// left rooms filtered out) in a watch channel.
async fn watch_room_list(
    service: &SyncService,
) -> Result<(watch::Receiver<Vec<OwnedRoomId>>, JoinHandle<()>)> {
    let room_list = service
        .room_list_service()
        .all_rooms()
        .await
        .context("RoomListService::all_rooms")?;
    let (sender, receiver) = watch::channel(Vec::new());
    let task = tokio::spawn(async move {
        let (entries, controller) = room_list.entries_with_dynamic_adapters(200);
        controller.set_filter(Box::new(filters::new_filter_non_left()));
        pin_mut!(entries);
        let mut items: Vector<RoomListItem> = Vector::new();
        while let Some(diffs) = entries.next().await {
            for diff in diffs {
                diff.apply(&mut items);
            }
            let order = items.iter().map(|item| item.room_id().to_owned()).collect();
            if sender.send(order).is_err() {
                break;
            }
        }
    });
    Ok((receiver, task))
}

/// A user's own membership in a room as the client's store knows it (from sync, not from the
/// local bookkeeping of a join request).
async fn own_membership(room: &Room, user: &UserId) -> Result<Option<MembershipState>> {
    Ok(room
        .get_member_no_sync(user)
        .await?
        .map(|member| member.membership().clone()))
}

/// The messages of a timeline, oldest first: (body, was encrypted). Undecryptable events
/// appear as `<unable to decrypt>`.
async fn timeline_messages(timeline: &Timeline) -> Vec<(String, bool)> {
    let mut messages = Vec::new();
    for item in timeline.items().await.iter() {
        let Some(event) = item.as_event() else {
            continue;
        };
        if let Some(message) = event.content().as_message() {
            messages.push((message.body().to_owned(), event.encryption_info().is_some()));
        } else if event.content().is_unable_to_decrypt() {
            messages.push(("<unable to decrypt>".to_owned(), true));
        }
    }
    messages
}

fn bodies(messages: &[(String, bool)]) -> String {
    let bodies: Vec<&str> = messages.iter().map(|(body, _)| body.as_str()).collect();
    format!("{bodies:?}")
}

/// Checks that the server has a user's device keys (uploaded by the SDK's encryption loop).
async fn device_keys_uploaded(asker: &User, owner: &User) -> Result<Look<()>> {
    let mut request = get_keys::v3::Request::new();
    request
        .device_keys
        .insert(owner.user_id.clone(), vec![owner.device_id.clone()]);
    let response = bounded("/keys/query", asker.client.send(request)).await?;
    Ok(
        match response
            .device_keys
            .get(&owner.user_id)
            .and_then(|d| d.get(&owner.device_id))
        {
            Some(_) => Look::Done(()),
            None => Look::NotYet(format!(
                "no device keys for {} {}",
                owner.user_id, owner.device_id
            )),
        },
    )
}

async fn run(homeserver: &str) -> Result<()> {
    let progress = Progress(Instant::now());
    let mut names = Names::default();
    let mut services = Services::default();

    // 1. Accounts and three rooms with a message each, oldest first.
    let suffix = {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        format!(
            "{:x}",
            (nanos as u64) ^ u64::from(std::process::id()).rotate_left(40)
        )
    };
    let alice = register(homeserver, &format!("alice-{suffix}")).await?;
    let bob = register(homeserver, &format!("bob-{suffix}")).await?;
    progress.say(format_args!(
        "1. registered {} ({}) and {} ({})",
        alice.user_id, alice.device_id, bob.user_id, bob.device_id
    ));

    let mut rooms = Vec::new();
    for n in 1..=3 {
        let name = format!("sdk room {n}");
        let mut request = create_room::v3::Request::new();
        request.name = Some(name.clone());
        request.preset = Some(RoomPreset::PrivateChat);
        request.invite = vec![bob.user_id.clone()];
        let room = bounded(
            &format!("alice creating {name}"),
            alice.client.create_room(request),
        )
        .await?;
        bounded(
            &format!("bob joining {name}"),
            bob.client.join_room_by_id(room.room_id()),
        )
        .await?;
        names.add(room.room_id(), &name);
        rooms.push(room);
    }
    for (n, room) in rooms.iter().enumerate() {
        let body = format!("hello {}", n + 1);
        bounded(
            &format!("alice sending {body:?} in {}", names.of(room.room_id())),
            room.send(RoomMessageEventContent::text_plain(body.clone())),
        )
        .await?;
        // Distinct timestamps, so "most recent" is never a tie.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let [r1, r2, r3] = [0, 1, 2].map(|i| rooms[i].room_id().to_owned());
    progress.say(format_args!(
        "1. alice created {} with a message each, bob joined",
        names.list(&[r1.clone(), r2.clone(), r3.clone()])
    ));

    // 2. Bob's SyncService and room list: the three rooms, most recent first.
    let bob_sync = start_sync(&bob).await?;
    services.0.push(("bob", bob_sync.clone()));
    let (bob_list, _bob_list_task) = watch_room_list(&bob_sync).await?;
    let expected = vec![r3.clone(), r2.clone(), r1.clone()];
    services
        .wait_for(
            &format!(
                "bob's room list to be {} (most recent first)",
                names.list(&expected)
            ),
            async || {
                let order = bob_list.borrow().clone();
                Ok(if order == expected {
                    Look::Done(())
                } else {
                    Look::NotYet(names.list(&order))
                })
            },
        )
        .await?;
    for room_id in &expected {
        let want = names.of(room_id);
        services
            .wait_for(
                &format!("bob's client to know the name of {want} (m.room.name in required_state)"),
                async || {
                    let name = bob.client.get_room(room_id).and_then(|room| room.name());
                    Ok(match name {
                        Some(name) if name == want => Look::Done(()),
                        other => Look::NotYet(format!("name {other:?}")),
                    })
                },
            )
            .await?;
    }
    progress.say(format_args!(
        "2. bob's room list: {}",
        names.list(&bob_list.borrow())
    ));

    // 3. A new message in the oldest room moves it to the top, and reaches bob's timeline.
    bounded(
        "alice sending \"hello again\" in sdk room 1",
        rooms[0].send(RoomMessageEventContent::text_plain("hello again")),
    )
    .await?;
    let expected = vec![r1.clone(), r3.clone(), r2.clone()];
    services
        .wait_for(
            &format!(
                "sdk room 1 to move to the top of bob's room list: {}",
                names.list(&expected)
            ),
            async || {
                let order = bob_list.borrow().clone();
                Ok(if order == expected {
                    Look::Done(())
                } else {
                    Look::NotYet(names.list(&order))
                })
            },
        )
        .await?;
    progress.say(format_args!(
        "3. bob's room list: {}",
        names.list(&bob_list.borrow())
    ));

    // Bob opens the room as the app does: a room subscription, then its timeline.
    let bob_r1 = bob
        .client
        .get_room(&r1)
        .context("bob's client does not know sdk room 1")?;
    bob_sync
        .room_list_service()
        .subscribe_to_rooms(&[&r1])
        .await;
    let timeline = bounded("building bob's timeline of sdk room 1", bob_r1.timeline()).await?;
    services
        .wait_for(
            "\"hello again\" in bob's timeline of sdk room 1",
            async || {
                let messages = timeline_messages(&timeline).await;
                Ok(if messages.iter().any(|(body, _)| body == "hello again") {
                    Look::Done(())
                } else {
                    Look::NotYet(bodies(&messages))
                })
            },
        )
        .await?;
    // The earlier message, paginating back (the server's `prev_batch` and /messages) if the
    // synced timeline does not reach it.
    services
        .wait_for(
            "\"hello 1\" before \"hello again\" in bob's timeline of sdk room 1",
            async || {
                let messages = timeline_messages(&timeline).await;
                let position = |wanted: &str| messages.iter().position(|(body, _)| body == wanted);
                match (position("hello 1"), position("hello again")) {
                    (Some(first), Some(again)) if first < again => return Ok(Look::Done(())),
                    (Some(_), Some(_)) => bail!(
                        "messages out of order in the timeline: {}",
                        bodies(&messages)
                    ),
                    _ => {}
                }
                bounded(
                    "back-paginating bob's timeline of sdk room 1",
                    timeline.paginate_backwards(20),
                )
                .await?;
                Ok(Look::NotYet(bodies(&messages)))
            },
        )
        .await?;
    progress.say(format_args!(
        "3. bob's timeline of sdk room 1: {}",
        bodies(&timeline_messages(&timeline).await)
    ));
    drop(timeline);

    // 4. An invite shows as an invite; bob joins through the SDK; it shows as joined.
    let mut request = create_room::v3::Request::new();
    request.name = Some("sdk room 4".to_owned());
    request.preset = Some(RoomPreset::PrivateChat);
    request.invite = vec![bob.user_id.clone()];
    let r4 = bounded(
        "alice creating sdk room 4",
        alice.client.create_room(request),
    )
    .await?
    .room_id()
    .to_owned();
    names.add(&r4, "sdk room 4");
    let invited = wait_for_invite(&services, &bob, &bob_list, &names, &r4, "sdk room 4").await?;
    progress.say(format_args!(
        "4. bob's room list shows sdk room 4 as an invite: {}",
        names.list(&bob_list.borrow())
    ));
    bounded("bob joining sdk room 4 (Room::join)", invited.join()).await?;
    wait_for_joined(&services, &bob, &bob_list, &r4, "sdk room 4").await?;
    progress.say(format_args!(
        "4. bob's room list shows sdk room 4 joined: {}",
        names.list(&bob_list.borrow())
    ));

    // 5. End-to-end encryption: alice syncs too, an encrypted room, a message bob decrypts.
    let alice_sync = start_sync(&alice).await?;
    services.0.push(("alice", alice_sync.clone()));
    let mut request = create_room::v3::Request::new();
    request.name = Some("sdk encrypted room".to_owned());
    request.preset = Some(RoomPreset::PrivateChat);
    request.invite = vec![bob.user_id.clone()];
    request.initial_state = vec![
        InitialStateEvent::with_empty_state_key(
            RoomEncryptionEventContent::with_recommended_defaults(),
        )
        .to_raw_any(),
    ];
    let alice_r5 = bounded(
        "alice creating sdk encrypted room",
        alice.client.create_room(request),
    )
    .await?;
    let r5 = alice_r5.room_id().to_owned();
    names.add(&r5, "sdk encrypted room");
    let invited = wait_for_invite(
        &services,
        &bob,
        &bob_list,
        &names,
        &r5,
        "sdk encrypted room",
    )
    .await?;
    bounded(
        "bob joining sdk encrypted room (Room::join)",
        invited.join(),
    )
    .await?;
    let bob_r5 = wait_for_joined(&services, &bob, &bob_list, &r5, "sdk encrypted room").await?;
    services
        .wait_for(
            "bob's client to see sdk encrypted room as encrypted (m.room.encryption in required_state)",
            async || {
                let state = bob_r5.encryption_state();
                Ok(if state.is_encrypted() { Look::Done(()) } else { Look::NotYet(format!("{state:?}")) })
            },
        )
        .await?;
    progress.say("5. bob joined sdk encrypted room and sees it encrypted");
    // Both devices' keys must be on the server (the encryption loops upload them) before alice
    // can share a room key with bob's device.
    services
        .wait_for("bob's device keys on the server", async || {
            device_keys_uploaded(&alice, &bob).await
        })
        .await?;
    services
        .wait_for("alice's device keys on the server", async || {
            device_keys_uploaded(&bob, &alice).await
        })
        .await?;
    let secret = format!("secret {suffix}");
    let sent = bounded(
        "alice sending an encrypted message in sdk encrypted room",
        alice_r5.send(RoomMessageEventContent::text_plain(secret.clone())),
    )
    .await?;
    ensure!(
        sent.encryption_info.is_some(),
        "alice's SDK sent the message in sdk encrypted room unencrypted"
    );
    progress.say(format_args!(
        "5. alice sent an encrypted message ({})",
        sent.response.event_id
    ));
    bob_sync
        .room_list_service()
        .subscribe_to_rooms(&[&r5])
        .await;
    let timeline = bounded(
        "building bob's timeline of sdk encrypted room",
        bob_r5.timeline(),
    )
    .await?;
    services
        .wait_for(
            "bob's timeline of sdk encrypted room to show alice's message decrypted",
            async || {
                let messages = timeline_messages(&timeline).await;
                match messages.iter().find(|(body, _)| *body == secret) {
                    Some((_, true)) => Ok(Look::Done(())),
                    Some((_, false)) => bail!("alice's message reached bob unencrypted"),
                    None => Ok(Look::NotYet(bodies(&messages))),
                }
            },
        )
        .await?;
    progress.say(format_args!(
        "5. bob's timeline of sdk encrypted room: {}",
        bodies(&timeline_messages(&timeline).await)
    ));
    drop(timeline);

    // 6. Thread subscriptions.
    let send_text =
        async |room: &Room, content: serde_json::Value, what: &str| -> Result<OwnedEventId> {
            Ok(bounded(what, room.send_raw("m.room.message", content))
                .await?
                .response
                .event_id)
        };
    let alice_r1 = &rooms[0];
    let root = send_text(
        alice_r1,
        serde_json::json!({ "msgtype": "m.text", "body": "a thread" }),
        "alice starting a thread in sdk room 1",
    )
    .await?;
    let in_thread = |body: &str| {
        serde_json::json!({ "msgtype": "m.text", "body": body,
            "m.relates_to": { "rel_type": "m.thread", "event_id": root } })
    };
    let first_reply = send_text(alice_r1, in_thread("first reply"), "alice replying").await?;
    let bob_phone = login(homeserver, &bob.localpart).await?;
    bounded(
        "bob's second device subscribing to the thread (PUT .../subscription)",
        bob_phone.send(subscribe_thread::unstable::Request::new(
            r1.clone(),
            root.clone(),
            None,
        )),
    )
    .await?;
    let status_in_store = async |want: Option<ThreadSubscriptionStatus>| {
        services
            .wait_for(
                &format!("bob's client to store the thread's subscription as {want:?} (sliding-sync extension)"),
                async || {
                    let stored = bob
                        .client
                        .state_store()
                        .load_thread_subscription(&r1, &root)
                        .await
                        .context("reading bob's state store")?;
                    let status = stored.map(|s: StoredThreadSubscription| s.status);
                    Ok(if status == want { Look::Done(()) } else { Look::NotYet(format!("{status:?}")) })
                },
            )
            .await
    };
    status_in_store(Some(ThreadSubscriptionStatus::Subscribed {
        automatic: false,
    }))
    .await?;
    progress.say("6. bob's client learnt the subscription made on his other device");
    bounded(
        "bob unsubscribing through the SDK (Room::unsubscribe_thread)",
        bob_r1.unsubscribe_thread(root.clone()),
    )
    .await?;
    // An automatic subscription for a reply bob had when he unsubscribed: the server skips
    // it (409 M_CONFLICTING_UNSUBSCRIPTION, which the SDK takes as done).
    bounded(
        "bob's automatic subscription for the older reply (Room::subscribe_thread)",
        bob_r1.subscribe_thread(root.clone(), Some(first_reply.clone())),
    )
    .await?;
    let fetched = bounded(
        "fetching bob's subscription (Room::fetch_thread_subscription)",
        bob_r1.fetch_thread_subscription(root.clone()),
    )
    .await?;
    ensure!(
        fetched.is_none(),
        "the server re-subscribed bob for a reply older than his unsubscription: {fetched:?}"
    );
    let second_reply =
        send_text(alice_r1, in_thread("second reply"), "alice replying again").await?;
    bounded(
        "bob's second device subscribing automatically for the newer reply",
        bob_phone.send(subscribe_thread::unstable::Request::new(
            r1.clone(),
            root.clone(),
            Some(second_reply),
        )),
    )
    .await?;
    status_in_store(Some(ThreadSubscriptionStatus::Subscribed {
        automatic: true,
    }))
    .await?;
    progress.say("6. an older reply's automatic subscription was skipped, a newer one's reached bob's client");

    // Done: both sync services still healthy; stop them.
    services.check()?;
    let mut report = String::new();
    for (who, service) in &services.0 {
        if tokio::time::timeout(Duration::from_secs(10), service.stop())
            .await
            .is_err()
        {
            let _ = write!(report, "{who}'s SyncService did not stop within 10 s; ");
        }
    }
    if !report.is_empty() {
        progress.say(report.trim_end_matches("; "));
    }
    Ok(())
}

/// Waits until `room_id` is in bob's room list as an invite (with its name from the stripped
/// state); returns bob's room.
async fn wait_for_invite(
    services: &Services,
    bob: &User,
    bob_list: &watch::Receiver<Vec<OwnedRoomId>>,
    names: &Names,
    room_id: &RoomId,
    name: &str,
) -> Result<Room> {
    services
        .wait_for(
            &format!("{name} in bob's room list as an invite named {name:?}"),
            async || {
                let listed = bob_list.borrow().iter().any(|room| room == room_id);
                let room = bob.client.get_room(room_id);
                let state = room.as_ref().map(|room| room.state());
                let room_name = room.as_ref().and_then(|room| room.name());
                Ok(match room {
                    Some(room)
                        if listed
                            && state == Some(RoomState::Invited)
                            && room_name.as_deref() == Some(name) =>
                    {
                        Look::Done(room)
                    }
                    _ => Look::NotYet(format!(
                        "listed: {listed} (list {}), state: {state:?}, name: {room_name:?}",
                        names.list(&bob_list.borrow())
                    )),
                })
            },
        )
        .await
}

/// Waits until bob's client has `room_id` joined *from sync* (his own join member event, the
/// joined count) and still in his room list; returns bob's room.
async fn wait_for_joined(
    services: &Services,
    bob: &User,
    bob_list: &watch::Receiver<Vec<OwnedRoomId>>,
    room_id: &RoomId,
    name: &str,
) -> Result<Room> {
    services
        .wait_for(&format!("{name} joined in bob's room list (his join synced)"), async || {
            let listed = bob_list.borrow().iter().any(|room| room == room_id);
            let Some(room) = bob.client.get_room(room_id) else {
                return Ok(Look::NotYet("bob's client does not know the room".to_owned()));
            };
            let state = room.state();
            let membership = own_membership(&room, &bob.user_id).await?;
            let joined = room.joined_members_count();
            Ok(
                if listed
                    && state == RoomState::Joined
                    && membership == Some(MembershipState::Join)
                    && joined == 2
                {
                    Look::Done(room)
                } else {
                    Look::NotYet(format!(
                        "listed: {listed}, state: {state:?}, own member event: {membership:?}, joined count: {joined}"
                    ))
                },
            )
        })
        .await
}
