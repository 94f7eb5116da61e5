//! The admin room's commands (`!admin users list`, `!admin rooms block …`, `!admin help`):
//! parsed with clap, which also writes their help, and carried out by the same service
//! functions as the admin API and the command line. Each answer comes as plain text and as
//! HTML (tables where there are rows).

use clap::{Parser, Subcommand};
use ruma::{OwnedRoomId, OwnedUserId, RoomAliasId, RoomId, UserId};

use crate::{
    Error, Result,
    service::{
        Services,
        admin::{
            AccountChanges, AccountFilter, AccountOrder, RoomOrder,
            media::{MediaName, MediaOrder},
            room_deletion::DeleteRoom,
        },
        users::Users,
    },
    utils,
};

/// What the admin room answers.
pub struct Answer {
    pub plain: String,
    pub html: String,
}

impl Answer {
    /// A line of text.
    pub fn text(text: impl Into<String>) -> Self {
        let plain = text.into();
        let html = escape(&plain);
        Self { plain, html }
    }

    /// Preformatted text (help, errors of the command line).
    fn preformatted(text: impl Into<String>) -> Self {
        let plain = text.into();
        let html = format!("<pre><code>{}</code></pre>", escape(&plain));
        Self { plain, html }
    }

    /// A title and a table: aligned columns in the plain text, a `<table>` in the HTML.
    fn table(title: &str, headers: &[&str], rows: Vec<Vec<String>>) -> Self {
        let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
        for row in &rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let line = |cells: Vec<&str>| {
            let padded: Vec<String> = cells
                .iter()
                .zip(&widths)
                .map(|(cell, width)| format!("{cell:width$}"))
                .collect();
            padded.join("  ").trim_end().to_owned()
        };
        let mut plain = vec![title.to_owned(), line(headers.to_vec())];
        plain.extend(
            rows.iter()
                .map(|row| line(row.iter().map(String::as_str).collect())),
        );
        let mut html = format!("<p>{}</p><table><thead><tr>", escape(title));
        for header in headers {
            html.push_str(&format!("<th>{}</th>", escape(header)));
        }
        html.push_str("</tr></thead><tbody>");
        for row in &rows {
            html.push_str("<tr>");
            for cell in row {
                html.push_str(&format!("<td>{}</td>", escape(cell)));
            }
            html.push_str("</tr>");
        }
        html.push_str("</tbody></table>");
        Self {
            plain: plain.join("\n"),
            html,
        }
    }
}

/// "1 account:", "3 accounts:".
fn counted(n: usize, thing: &str) -> String {
    if n == 1 {
        format!("1 {thing}:")
    } else {
        format!("{n} {thing}s:")
    }
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[derive(Parser)]
#[command(
    name = "!admin",
    about = "Commands to this server, for its admins.",
    disable_version_flag = true,
    color = clap::ColorChoice::Never,
    help_template = "{about}\n\n{usage-heading} {usage}\n\n{all-args}"
)]
enum Command {
    /// Accounts of this server.
    #[command(subcommand)]
    Users(UserCommand),
    /// Rooms this server knows.
    #[command(subcommand)]
    Rooms(RoomCommand),
    /// Registration tokens, which let people register on a closed server.
    #[command(subcommand)]
    Tokens(TokenCommand),
    /// Media: delete, quarantine, protect; a user's uploads.
    #[command(subcommand)]
    Media(MediaCommand),
    /// Other servers: how sending to each goes.
    #[command(subcommand)]
    Federation(FederationCommand),
    /// Reports of events, rooms and users, newest first.
    Reports {
        /// How many to show.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// This server's version and size.
    Server,
    /// Takes a backup of the database and the media files now.
    Backup,
}

#[derive(Subcommand)]
enum UserCommand {
    /// Lists the accounts.
    List {
        /// Admins only.
        #[arg(long)]
        admins: bool,
        /// Deactivated accounts only.
        #[arg(long)]
        deactivated: bool,
    },
    /// Creates an account (with a random password unless one is given).
    Create {
        /// The user name (or full user ID).
        name: String,
        #[arg(long)]
        password: Option<String>,
        /// Makes it an admin.
        #[arg(long)]
        admin: bool,
    },
    /// Sets a new password (a random one unless given) and logs every device out.
    ResetPassword {
        user: String,
        #[arg(long)]
        password: Option<String>,
        /// Leaves the devices logged in.
        #[arg(long)]
        keep_devices: bool,
    },
    /// Deactivates an account for good: it leaves its rooms and can no longer log in.
    Deactivate {
        user: String,
        /// Also marks it erased (its messages hidden from those who join later).
        #[arg(long)]
        erase: bool,
    },
    /// Makes an account a server admin (and invites it here).
    MakeAdmin { user: String },
    /// Takes admin rights away (and removes the account from this room).
    RevokeAdmin { user: String },
    /// Locks an account: every request refused until unlocked.
    Lock { user: String },
    /// Unlocks an account.
    Unlock { user: String },
    /// Shadow-bans an account: its messages, invites and typing silently reach nobody.
    ShadowBan { user: String },
    /// Lifts a shadow-ban.
    Unban { user: String },
    /// An account's devices, with where and when each was last seen.
    Whois { user: String },
}

#[derive(Subcommand)]
enum RoomCommand {
    /// Lists the rooms, largest first.
    List {
        /// Only rooms whose name, alias or ID contains this.
        search: Option<String>,
    },
    /// One room: name, alias, version, members, settings.
    Info {
        /// Room ID or alias.
        room: String,
    },
    /// Blocks a room: no user of this server may join it, knock or be invited.
    Block { room: String },
    /// Lifts a room's block.
    Unblock { room: String },
    /// Deletes a room: every local member leaves, its aliases go, and it is purged from this
    /// server (unless --keep-history).
    Delete {
        room: String,
        /// Also blocks it, so no local user may come back.
        #[arg(long)]
        block: bool,
        /// Keeps its history here (members leave, nothing is purged).
        #[arg(long)]
        keep_history: bool,
    },
}

#[derive(Subcommand)]
enum MediaCommand {
    /// Deletes a piece of this server's media (mxc://server/id).
    Delete { mxc: String },
    /// Quarantines media: never served again, here or to other servers.
    Quarantine { mxc: String },
    /// Serves quarantined media again.
    Unquarantine { mxc: String },
    /// Protects this server's media from quarantine.
    Protect { mxc: String },
    /// Lifts the protection.
    Unprotect { mxc: String },
    /// A user's uploads, newest first.
    Of { user: String },
}

#[derive(Subcommand)]
enum FederationCommand {
    /// Every other server this one shares rooms with or sends to, failing ones first.
    Status,
    /// Forgets a failing server's failures and tries again now.
    Reset { server: String },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Lists the registration tokens.
    List,
    /// Creates a token (a random one unless given).
    Create {
        token: Option<String>,
        /// How many registrations it allows (any number if not given).
        #[arg(long)]
        uses: Option<u64>,
        /// Days until it stops working (never if not given).
        #[arg(long)]
        days: Option<u64>,
    },
    /// Deletes a token.
    Delete { token: String },
}

impl Services {
    /// Carries out one command (`words`: what follows `!admin`) for `admin`.
    pub async fn admin_command(&self, admin: &UserId, words: &str) -> Answer {
        let words = words.split_whitespace();
        let words: Vec<&str> = match words.clone().next() {
            // `!admin help users` reads as `!admin users --help`.
            Some("help") => words.skip(1).chain(["--help"]).collect(),
            None => vec!["--help"],
            Some(_) => words.collect(),
        };
        let command = match Command::try_parse_from(std::iter::once("!admin").chain(words)) {
            Ok(command) => command,
            // Help, and what clap says of a wrong command.
            Err(e) => return Answer::preformatted(e.render().to_string().trim_end()),
        };
        match self.run_command(admin, command).await {
            Ok(answer) => answer,
            Err(e) => Answer::text(format!("Failed: {e}")),
        }
    }

    async fn run_command(&self, admin: &UserId, command: Command) -> Result<Answer> {
        match command {
            Command::Users(command) => self.run_user_command(admin, command).await,
            Command::Rooms(command) => self.run_room_command(admin, command).await,
            Command::Tokens(command) => self.run_token_command(command).await,
            Command::Media(command) => self.run_media_command(admin, command),
            Command::Federation(FederationCommand::Status) => {
                let now = utils::now_millis();
                let mut all = self.admin_destinations()?;
                all.sort_by_key(|(_, state)| {
                    std::cmp::Reverse(state.as_ref().and_then(|s| s.failure_ts).is_some())
                });
                let rows = all
                    .into_iter()
                    .map(|(name, state)| {
                        let state = state.unwrap_or_default();
                        let status = match (state.failure_ts, state.retry_last_ts) {
                            (Some(since), Some(last)) => format!(
                                "failing since {}, next try in {} s",
                                utils::format_millis(since),
                                (last + state.retry_interval_ms).saturating_sub(now) / 1000
                            ),
                            _ if state.last_success_ts.is_some() => "ok".to_owned(),
                            _ => "nothing sent since the start".to_owned(),
                        };
                        vec![
                            name.to_string(),
                            status,
                            state
                                .last_success_ts
                                .map(utils::format_millis)
                                .unwrap_or_default(),
                        ]
                    })
                    .collect();
                Ok(Answer::table(
                    "Other servers:",
                    &["server", "sending", "last delivered"],
                    rows,
                ))
            }
            Command::Federation(FederationCommand::Reset { server }) => {
                let name = ruma::ServerName::parse(&server)
                    .map_err(|e| Error::invalid_param(format!("Invalid server name: {e}")))?;
                if !self.federation.destinations.reset(&name) {
                    return Err(Error::invalid_param(format!("{name} is not failing.")));
                }
                tracing::info!(admin = %admin, server = %name, "federation reset in the admin room");
                Ok(Answer::text(format!("Trying {name} again now.")))
            }
            Command::Reports { limit } => {
                let mut reports = self.reports()?;
                reports.reverse();
                let rows = reports
                    .into_iter()
                    .take(limit)
                    .map(|report| {
                        let about = match report.reported {
                            crate::service::reports::Reported::Event { room_id, event_id } => {
                                format!("event {event_id} in {room_id}")
                            }
                            crate::service::reports::Reported::Room { room_id } => {
                                format!("room {room_id}")
                            }
                            crate::service::reports::Reported::User { user_id } => {
                                format!("user {user_id}")
                            }
                        };
                        vec![
                            utils::format_millis(report.ts),
                            report.reporter,
                            about,
                            report.reason,
                        ]
                    })
                    .collect();
                Ok(Answer::table(
                    "Reports, newest first:",
                    &["when", "by", "about", "reason"],
                    rows,
                ))
            }
            Command::Backup => {
                let report = self.create_backup().await?;
                tracing::info!(admin = %admin, id = report.backup.id, "backup taken in the admin room");
                Ok(Answer::text(format!(
                    "Backup {} taken: {} bytes of database files; {} media files copied ({} in the backup directory).",
                    report.backup.id, report.backup.size, report.media_copied, report.media_files
                )))
            }
            Command::Server => {
                let accounts = self.users.list()?;
                let active = accounts.iter().filter(|(_, r)| !r.deactivated).count();
                let (_, rooms) =
                    self.admin_list_rooms(None, RoomOrder::JoinedMembers, false, 0, 0)?;
                Ok(Answer::text(format!(
                    "{} — culvert {}: {active} active accounts ({} in all), {rooms} rooms.",
                    self.server_name,
                    env!("CARGO_PKG_VERSION"),
                    accounts.len()
                )))
            }
        }
    }

    async fn run_user_command(&self, admin: &UserId, command: UserCommand) -> Result<Answer> {
        let local = |name: &str| Users::parse_existing(name, &self.server_name);
        let existing = |name: &str| -> Result<OwnedUserId> {
            let user_id = local(name)?;
            if !self.users.exists(&user_id)? {
                return Err(Error::not_found(format!("No account {user_id}.")));
            }
            Ok(user_id)
        };
        Ok(match command {
            UserCommand::List {
                admins,
                deactivated,
            } => {
                let filter = AccountFilter {
                    admins: admins.then_some(true),
                    deactivated: Some(deactivated),
                    guests: true,
                    locked: true,
                    ..AccountFilter::default()
                };
                let (accounts, total) =
                    self.admin_list_accounts(&filter, AccountOrder::Name, false, 0, usize::MAX)?;
                let rows = accounts
                    .into_iter()
                    .map(|a| {
                        let mut flags = Vec::new();
                        for (on, flag) in [
                            (a.record.admin, "admin"),
                            (a.record.guest, "guest"),
                            (a.record.locked, "locked"),
                            (a.record.suspended, "suspended"),
                            (a.record.shadow_banned, "shadow-banned"),
                            (a.record.deactivated, "deactivated"),
                        ] {
                            if on {
                                flags.push(flag);
                            }
                        }
                        vec![
                            a.user_id.to_string(),
                            a.displayname.unwrap_or_default(),
                            flags.join(", "),
                            a.last_seen_ts.map(utils::format_millis).unwrap_or_default(),
                        ]
                    })
                    .collect();
                Answer::table(
                    &counted(total, "account"),
                    &["user", "display name", "status", "last seen"],
                    rows,
                )
            }
            UserCommand::Create {
                name,
                password,
                admin: make_admin,
            } => {
                let user_id = Users::parse_new_localpart(&name, &self.server_name)?;
                if self.users.exists(&user_id)? {
                    return Err(crate::service::users::user_in_use());
                }
                let generated = password.is_none();
                let password = password.unwrap_or_else(|| utils::random_string(20));
                self.admin_put_account(
                    &user_id,
                    AccountChanges {
                        password: Some(password.clone()),
                        admin: Some(make_admin),
                        ..AccountChanges::default()
                    },
                )
                .await?;
                tracing::info!(admin = %admin, user = %user_id, "account created in the admin room");
                if generated {
                    Answer::text(format!("Created {user_id} with password {password}"))
                } else {
                    Answer::text(format!("Created {user_id}."))
                }
            }
            UserCommand::ResetPassword {
                user,
                password,
                keep_devices,
            } => {
                let user_id = existing(&user)?;
                let generated = password.is_none();
                let password = password.unwrap_or_else(|| utils::random_string(20));
                let hash = crate::service::users::hash_password_bounded(password.clone()).await?;
                self.set_password(&user_id, hash, !keep_devices).await?;
                tracing::info!(admin = %admin, user = %user_id, "password reset in the admin room");
                if generated {
                    Answer::text(format!("New password of {user_id}: {password}"))
                } else {
                    Answer::text(format!("Password of {user_id} changed."))
                }
            }
            UserCommand::Deactivate { user, erase } => {
                let user_id = existing(&user)?;
                if user_id == admin {
                    return Err(Error::invalid_param(
                        "You may not deactivate yourself here.",
                    ));
                }
                self.deactivate_account(&user_id, erase).await?;
                tracing::info!(admin = %admin, user = %user_id, "account deactivated in the admin room");
                Answer::text(format!("Deactivated {user_id}."))
            }
            UserCommand::MakeAdmin { user } => {
                let user_id = existing(&user)?;
                self.set_admin(&user_id, true).await?;
                tracing::info!(admin = %admin, user = %user_id, "made admin in the admin room");
                Answer::text(format!("{user_id} is now a server admin."))
            }
            UserCommand::RevokeAdmin { user } => {
                let user_id = existing(&user)?;
                if user_id == admin {
                    return Err(Error::invalid_param("You may not demote yourself."));
                }
                self.set_admin(&user_id, false).await?;
                tracing::info!(admin = %admin, user = %user_id, "admin rights removed in the admin room");
                Answer::text(format!("{user_id} is no longer a server admin."))
            }
            UserCommand::Lock { user } => {
                let user_id = existing(&user)?;
                if user_id == admin {
                    return Err(Error::invalid_param("You may not lock yourself out."));
                }
                self.users
                    .set_restriction(&user_id, Some(true), None)
                    .await?;
                tracing::info!(admin = %admin, user = %user_id, "account locked in the admin room");
                Answer::text(format!("Locked {user_id}."))
            }
            UserCommand::Unlock { user } => {
                let user_id = existing(&user)?;
                self.users
                    .set_restriction(&user_id, Some(false), None)
                    .await?;
                tracing::info!(admin = %admin, user = %user_id, "account unlocked in the admin room");
                Answer::text(format!("Unlocked {user_id}."))
            }
            UserCommand::ShadowBan { user } => {
                let user_id = existing(&user)?;
                if self.users.get(&user_id)?.is_some_and(|r| r.admin) {
                    return Err(Error::invalid_param("Admins cannot be shadow-banned."));
                }
                self.users.set_shadow_banned(&user_id, true).await?;
                tracing::info!(admin = %admin, user = %user_id, "shadow-banned in the admin room");
                Answer::text(format!("{user_id} is shadow-banned."))
            }
            UserCommand::Unban { user } => {
                let user_id = existing(&user)?;
                self.users.set_shadow_banned(&user_id, false).await?;
                tracing::info!(admin = %admin, user = %user_id, "shadow-ban lifted in the admin room");
                Answer::text(format!("{user_id} is no longer shadow-banned."))
            }
            UserCommand::Whois { user } => {
                let user_id = existing(&user)?;
                let rows = self
                    .devices
                    .list(&user_id)?
                    .into_iter()
                    .map(|(device_id, device)| {
                        vec![
                            device_id.to_string(),
                            device.display_name.unwrap_or_default(),
                            device.last_seen_ip.unwrap_or_default(),
                            device
                                .last_seen_ts
                                .map(utils::format_millis)
                                .unwrap_or_default(),
                        ]
                    })
                    .collect();
                Answer::table(
                    &format!("Devices of {user_id}:"),
                    &["device", "name", "last seen from", "last seen"],
                    rows,
                )
            }
        })
    }

    async fn run_room_command(&self, admin: &UserId, command: RoomCommand) -> Result<Answer> {
        Ok(match command {
            RoomCommand::List { search } => {
                let (rooms, total) = self.admin_list_rooms(
                    search.as_deref(),
                    RoomOrder::JoinedMembers,
                    false,
                    0,
                    usize::MAX,
                )?;
                let rows = rooms
                    .into_iter()
                    .map(|room| {
                        let d = room.description;
                        vec![
                            d.room_id.to_string(),
                            d.name.unwrap_or_default(),
                            d.canonical_alias.unwrap_or_default(),
                            d.num_joined_members.to_string(),
                            room.joined_local_members.to_string(),
                        ]
                    })
                    .collect();
                Answer::table(
                    &counted(total, "room"),
                    &["room", "name", "alias", "members", "of them here"],
                    rows,
                )
            }
            RoomCommand::Info { room } => {
                let room_id = self.room_argument(&room)?;
                let room = self
                    .room_overview(&room_id)?
                    .ok_or_else(|| Error::not_found(format!("This server knows no {room_id}.")))?;
                let d = &room.description;
                let blocked = self.room_blocked_by(&room_id)?;
                let rows = [
                    ("room", Some(d.room_id.to_string())),
                    ("name", d.name.clone()),
                    ("alias", d.canonical_alias.clone()),
                    ("topic", d.topic.clone()),
                    ("version", Some(d.room_version.to_string())),
                    ("creator", room.creator.clone()),
                    ("members", Some(d.num_joined_members.to_string())),
                    ("members here", Some(room.joined_local_members.to_string())),
                    ("join rule", room.join_rules.clone()),
                    ("history", room.history_visibility.clone()),
                    ("encryption", d.encryption.clone()),
                    ("federates", Some(room.federatable.to_string())),
                    ("in the directory", Some(room.public.to_string())),
                    ("state events", Some(room.state_events.to_string())),
                    ("replaced by", room.replacement_room.clone()),
                    ("blocked by", blocked),
                ]
                .into_iter()
                .filter_map(|(name, value)| value.map(|v| vec![name.to_owned(), v]))
                .collect();
                Answer::table("Room:", &["", ""], rows)
            }
            RoomCommand::Block { room } => {
                let room_id = self.room_argument(&room)?;
                self.set_room_blocked(&room_id, admin, true)?;
                tracing::info!(admin = %admin, room = %room_id, "room blocked in the admin room");
                Answer::text(format!("Blocked {room_id}."))
            }
            RoomCommand::Delete {
                room,
                block,
                keep_history,
            } => {
                let room_id = self.room_argument(&room)?;
                let request = DeleteRoom {
                    block,
                    purge: !keep_history,
                    ..DeleteRoom::default()
                };
                let deletion = self.delete_room(&room_id, admin, request).await?;
                if let Some(error) = deletion.error {
                    return Err(Error::invalid_param(error));
                }
                let shutdown = deletion.shutdown;
                let mut said = format!(
                    "Deleted {room_id}: {} local members left",
                    shutdown.kicked_users.len()
                );
                if !shutdown.failed_to_kick_users.is_empty() {
                    said.push_str(&format!(
                        ", {} could not",
                        shutdown.failed_to_kick_users.len()
                    ));
                }
                if !shutdown.local_aliases.is_empty() {
                    let aliases: Vec<String> = shutdown
                        .local_aliases
                        .iter()
                        .map(|a| a.to_string())
                        .collect();
                    said.push_str(&format!("; aliases removed: {}", aliases.join(", ")));
                }
                said.push_str(if keep_history {
                    "; history kept."
                } else {
                    "; purged."
                });
                Answer::text(said)
            }
            RoomCommand::Unblock { room } => {
                let room_id = self.room_argument(&room)?;
                self.set_room_blocked(&room_id, admin, false)?;
                tracing::info!(admin = %admin, room = %room_id, "room unblocked in the admin room");
                Answer::text(format!("Unblocked {room_id}."))
            }
        })
    }

    async fn run_token_command(&self, command: TokenCommand) -> Result<Answer> {
        let tokens = &self.registration_tokens;
        Ok(match command {
            TokenCommand::List => {
                let now = utils::now_millis();
                let rows = tokens
                    .list()?
                    .into_iter()
                    .map(|(token, record)| {
                        vec![
                            token,
                            record.completed.to_string(),
                            record
                                .uses_allowed
                                .map_or("any".to_owned(), |n| n.to_string()),
                            record
                                .expiry_time
                                .map_or("never".to_owned(), utils::format_millis),
                            if record.valid(now) { "yes" } else { "no" }.to_owned(),
                        ]
                    })
                    .collect();
                Answer::table(
                    "Registration tokens:",
                    &["token", "used", "of", "expires", "valid"],
                    rows,
                )
            }
            TokenCommand::Create { token, uses, days } => {
                let expiry = days.map(|d| utils::now_millis() + d * 24 * 3600 * 1000);
                let (token, _) = tokens.create(token, 16, uses, expiry).await?;
                Answer::text(format!("Created registration token {token}"))
            }
            TokenCommand::Delete { token } => {
                if tokens.delete(&token).await? {
                    Answer::text(format!("Deleted {token}."))
                } else {
                    return Err(Error::not_found(format!("No token {token}.")));
                }
            }
        })
    }

    fn run_media_command(&self, admin: &UserId, command: MediaCommand) -> Result<Answer> {
        let parse = |mxc: &str| {
            MediaName::parse_mxc(mxc)
                .ok_or_else(|| Error::invalid_param(format!("{mxc} is no mxc://server/id URI.")))
        };
        let missing = |name: &MediaName| Error::not_found(format!("No media {}.", name.mxc()));
        Ok(match command {
            MediaCommand::Delete { mxc } => {
                let name = parse(&mxc)?;
                if !self.admin_delete_media(&name)? {
                    return Err(missing(&name));
                }
                tracing::info!(admin = %admin, media = %name.mxc(), "media deleted in the admin room");
                Answer::text(format!("Deleted {}.", name.mxc()))
            }
            MediaCommand::Quarantine { mxc } => {
                let name = parse(&mxc)?;
                match self.admin_quarantine(&name, admin, true)? {
                    None => return Err(missing(&name)),
                    Some(false) => Answer::text(format!(
                        "{} is protected or quarantined already.",
                        name.mxc()
                    )),
                    Some(true) => {
                        tracing::info!(admin = %admin, media = %name.mxc(), "media quarantined in the admin room");
                        Answer::text(format!("Quarantined {}.", name.mxc()))
                    }
                }
            }
            MediaCommand::Unquarantine { mxc } => {
                let name = parse(&mxc)?;
                if self.admin_quarantine(&name, admin, false)?.is_none() {
                    return Err(missing(&name));
                }
                tracing::info!(admin = %admin, media = %name.mxc(), "media released in the admin room");
                Answer::text(format!("{} is served again.", name.mxc()))
            }
            MediaCommand::Protect { ref mxc } | MediaCommand::Unprotect { ref mxc } => {
                let protect = matches!(command, MediaCommand::Protect { .. });
                let name = parse(mxc)?;
                if name.server != self.server_name {
                    return Err(Error::invalid_param(
                        "Only this server's media can be protected.",
                    ));
                }
                if self.admin_protect(&name.media_id, protect)?.is_none() {
                    return Err(missing(&name));
                }
                tracing::info!(admin = %admin, media = %name.mxc(), protect, "media protection changed in the admin room");
                Answer::text(if protect {
                    format!("{} is protected from quarantine.", name.mxc())
                } else {
                    format!("{} is no longer protected.", name.mxc())
                })
            }
            MediaCommand::Of { user } => {
                let user_id = Users::parse_existing(&user, &self.server_name)?;
                let rows = self
                    .admin_user_media(&user_id, MediaOrder::CreatedTs, true)?
                    .into_iter()
                    .map(|(media_id, record)| {
                        let mut flags = Vec::new();
                        if record.quarantined {
                            flags.push("quarantined");
                        }
                        if record.protected {
                            flags.push("protected");
                        }
                        vec![
                            format!("mxc://{}/{media_id}", self.server_name),
                            record.filename.unwrap_or_default(),
                            record.content_type.unwrap_or_default(),
                            record.size.to_string(),
                            utils::format_millis(record.created_ts),
                            flags.join(", "),
                        ]
                    })
                    .collect();
                Answer::table(
                    &format!("Uploads of {user_id}, newest first:"),
                    &["media", "name", "type", "bytes", "uploaded", "status"],
                    rows,
                )
            }
        })
    }

    /// A room named by ID or by alias.
    fn room_argument(&self, room: &str) -> Result<OwnedRoomId> {
        if let Ok(alias) = RoomAliasId::parse(room) {
            return self
                .resolve_alias(&alias)?
                .ok_or_else(|| Error::not_found(format!("No room has the alias {alias}.")));
        }
        RoomId::parse(room)
            .map_err(|_| Error::invalid_param(format!("{room} is neither a room ID nor an alias.")))
    }
}
