//! What a server admin does to accounts: list and look them up, create and change them,
//! reset passwords, deactivate.
//!
//! Listing reads every account (one scan of `users`, and profiles and devices for the page):
//! it is an admin's request, not a hot path.

use std::cmp::Ordering;

use ruma::{OwnedUserId, UserId, events::room::member::MembershipState};
use serde_json::Value;

use crate::{
    Error, Result,
    service::{Services, users::UserRecord},
};

/// One account as admins see it.
pub struct Account {
    pub user_id: OwnedUserId,
    pub record: UserRecord,
    pub displayname: Option<String>,
    pub avatar_url: Option<String>,
    /// The latest any of its devices was seen.
    pub last_seen_ts: Option<u64>,
}

/// Which accounts a listing shows (Synapse's `GET /_synapse/admin/v2/users` parameters).
#[derive(Default)]
pub struct AccountFilter {
    /// Part of the localpart or display name (any case).
    pub name: Option<String>,
    /// Part of the user ID (when `name` is not given).
    pub user_id: Option<String>,
    pub guests: bool,
    /// `Some(true)`: admins only; `Some(false)`: no admins.
    pub admins: Option<bool>,
    /// `Some(true)`: deactivated accounts only; `Some(false)`: none; `None`: both.
    pub deactivated: Option<bool>,
    pub locked: bool,
}

/// How a listing is sorted (ties by user ID).
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub enum AccountOrder {
    #[default]
    Name,
    IsGuest,
    Admin,
    UserType,
    Deactivated,
    ShadowBanned,
    Displayname,
    AvatarUrl,
    CreationTs,
    LastSeenTs,
}

impl AccountOrder {
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "name" => Self::Name,
            "is_guest" => Self::IsGuest,
            "admin" => Self::Admin,
            "user_type" => Self::UserType,
            "deactivated" => Self::Deactivated,
            "shadow_banned" => Self::ShadowBanned,
            "displayname" => Self::Displayname,
            "avatar_url" => Self::AvatarUrl,
            "creation_ts" => Self::CreationTs,
            "last_seen_ts" => Self::LastSeenTs,
            _ => return None,
        })
    }
}

/// What an admin changes about an account (`None`: unchanged); see
/// [`Services::admin_put_account`].
#[derive(Default)]
pub struct AccountChanges {
    pub password: Option<String>,
    /// With a new password: log every device out (the default).
    pub logout_devices: bool,
    /// `Some("")` removes the display name.
    pub displayname: Option<String>,
    /// `Some("")` removes the avatar.
    pub avatar_url: Option<String>,
    pub admin: Option<bool>,
    pub deactivated: Option<bool>,
    pub locked: Option<bool>,
    /// `Some(None)` clears the type.
    pub user_type: Option<Option<String>>,
}

/// The user types an account may have besides none.
pub const USER_TYPES: [&str; 2] = ["bot", "support"];

impl Services {
    /// One account, or `None`: a local user ID this server never registered.
    pub fn admin_account(&self, user_id: &UserId) -> Result<Option<Account>> {
        let Some(record) = self.users.get(user_id)? else {
            return Ok(None);
        };
        Ok(Some(self.account_of(user_id.to_owned(), record)?))
    }

    fn account_of(&self, user_id: OwnedUserId, record: UserRecord) -> Result<Account> {
        let text = |field: &str| -> Result<Option<String>> {
            Ok(self
                .users
                .profile_field(&user_id, field)?
                .and_then(|v| v.as_str().map(str::to_owned)))
        };
        let displayname = text("displayname")?;
        let avatar_url = text("avatar_url")?;
        let last_seen_ts = self
            .devices
            .list(&user_id)?
            .iter()
            .filter_map(|(_, device)| device.last_seen_ts)
            .max();
        Ok(Account {
            user_id,
            record,
            displayname,
            avatar_url,
            last_seen_ts,
        })
    }

    /// A page of the accounts `filter` lets through, sorted, and how many it lets through.
    pub fn admin_list_accounts(
        &self,
        filter: &AccountFilter,
        order: AccountOrder,
        backwards: bool,
        from: usize,
        limit: usize,
    ) -> Result<(Vec<Account>, usize)> {
        let name = filter.name.as_deref().map(str::to_lowercase);
        let mut matching = Vec::new();
        for (user_id, record) in self.users.list()? {
            if (!filter.guests && record.guest)
                || filter.admins.is_some_and(|admins| admins != record.admin)
                || filter
                    .deactivated
                    .is_some_and(|deactivated| deactivated != record.deactivated)
                || (!filter.locked && record.locked)
            {
                continue;
            }
            if name.is_none()
                && let Some(part) = &filter.user_id
                && !user_id.as_str().contains(part.as_str())
            {
                continue;
            }
            // Profiles and devices are read only where the filter or the order needs them.
            let needs_account = name.is_some()
                || matches!(
                    order,
                    AccountOrder::Displayname | AccountOrder::AvatarUrl | AccountOrder::LastSeenTs
                );
            if needs_account {
                let account = self.account_of(user_id, record)?;
                if let Some(name) = &name {
                    let in_localpart = account.user_id.localpart().to_lowercase().contains(name);
                    let in_displayname = account
                        .displayname
                        .as_deref()
                        .is_some_and(|d| d.to_lowercase().contains(name));
                    if !in_localpart && !in_displayname {
                        continue;
                    }
                }
                matching.push(Ok(account));
            } else {
                matching.push(Err((user_id, record)));
            }
        }
        fn key(
            entry: &std::result::Result<Account, (OwnedUserId, UserRecord)>,
        ) -> (&OwnedUserId, &UserRecord) {
            match entry {
                Ok(account) => (&account.user_id, &account.record),
                Err((user_id, record)) => (user_id, record),
            }
        }
        matching.sort_by(|a, b| {
            let ((a_id, a_rec), (b_id, b_rec)) = (key(a), key(b));
            let by = match order {
                AccountOrder::Name => Ordering::Equal,
                AccountOrder::IsGuest => a_rec.guest.cmp(&b_rec.guest),
                AccountOrder::Admin => a_rec.admin.cmp(&b_rec.admin),
                AccountOrder::UserType => a_rec.user_type.cmp(&b_rec.user_type),
                AccountOrder::Deactivated => a_rec.deactivated.cmp(&b_rec.deactivated),
                AccountOrder::ShadowBanned => a_rec.shadow_banned.cmp(&b_rec.shadow_banned),
                AccountOrder::CreationTs => a_rec.created_ts.cmp(&b_rec.created_ts),
                AccountOrder::Displayname | AccountOrder::AvatarUrl | AccountOrder::LastSeenTs => {
                    match (a, b) {
                        (Ok(a), Ok(b)) => match order {
                            AccountOrder::Displayname => a.displayname.cmp(&b.displayname),
                            AccountOrder::AvatarUrl => a.avatar_url.cmp(&b.avatar_url),
                            _ => a.last_seen_ts.cmp(&b.last_seen_ts),
                        },
                        _ => Ordering::Equal,
                    }
                }
            };
            let by = by.then_with(|| a_id.cmp(b_id));
            if backwards { by.reverse() } else { by }
        });
        let total = matching.len();
        let mut page = Vec::new();
        for entry in matching.into_iter().skip(from).take(limit) {
            page.push(match entry {
                Ok(account) => account,
                Err((user_id, record)) => self.account_of(user_id, record)?,
            });
        }
        Ok((page, total))
    }

    /// Creates the account (`Ok(true)`) or changes it (`Ok(false)`), as `changes` says. A new
    /// account's name must be valid for registration; a deactivated account is reactivated
    /// only with a new password.
    pub async fn admin_put_account(
        &self,
        user_id: &UserId,
        changes: AccountChanges,
    ) -> Result<bool> {
        if let Some(Some(user_type)) = &changes.user_type
            && !USER_TYPES.contains(&user_type.as_str())
        {
            return Err(Error::invalid_param(format!(
                "Unknown user type {user_type:?}: `bot`, `support` or null."
            )));
        }
        let existing = self.users.get(user_id)?;
        if existing.as_ref().is_some_and(|r| r.deactivated)
            && changes.deactivated == Some(false)
            && changes.password.is_none()
        {
            return Err(Error::invalid_param(
                "A password is needed to reactivate an account.",
            ));
        }
        let hash = match &changes.password {
            Some(password) => {
                Some(crate::service::users::hash_password_bounded(password.clone()).await?)
            }
            None => None,
        };
        let created = existing.is_none();
        if created {
            crate::service::users::Users::parse_new_localpart(user_id.as_str(), &self.server_name)?;
            self.users
                .create(
                    user_id,
                    hash.clone(),
                    changes.admin.unwrap_or(false),
                    false,
                    |_| {},
                )
                .await?;
            tracing::info!(user = %user_id, "account created by an admin");
            if changes.admin == Some(true) {
                self.sync_admin_room_member(user_id, true).await;
            }
        } else {
            if changes.deactivated == Some(true) {
                self.deactivate_account(user_id, false).await?;
            }
            if let Some(hash) = hash {
                self.set_password(user_id, hash, changes.logout_devices)
                    .await?;
            }
            if changes.deactivated == Some(false) {
                self.users.reactivate(user_id).await?;
            }
            if let Some(admin) = changes.admin {
                self.set_admin(user_id, admin).await?;
            }
        }
        if let Some(user_type) = changes.user_type {
            self.users.set_user_type(user_id, user_type).await?;
        }
        if changes.locked.is_some() {
            self.users
                .set_restriction(user_id, changes.locked, None)
                .await?;
        }
        let mut profile_changed = false;
        for (field, value) in [
            ("displayname", changes.displayname),
            ("avatar_url", changes.avatar_url),
        ] {
            if let Some(value) = value {
                let value = (!value.is_empty()).then_some(Value::String(value));
                self.users
                    .set_profile_field(user_id, field, value.as_ref())?;
                profile_changed = true;
            }
        }
        if profile_changed && !created {
            self.propagate_profile(user_id).await;
        }
        Ok(created)
    }

    /// Makes an account an admin or not, and invites it to the admin room or removes it.
    pub async fn set_admin(&self, user_id: &UserId, admin: bool) -> Result<()> {
        self.users.set_admin(user_id, admin).await?;
        self.sync_admin_room_member(user_id, true).await;
        Ok(())
    }

    /// Sets a user's own limit on sending events (`None`: the server's), kept in `global`
    /// (`ratelimit_override:<user_id>`) and in the rate limiter.
    pub fn set_message_limit(
        &self,
        user_id: &UserId,
        limit: Option<crate::service::ratelimit::MessageLimit>,
    ) -> Result<()> {
        let key = message_limit_key(user_id.as_str());
        match &limit {
            Some(limit) => {
                self.store
                    .put(crate::store::Cf::Global, &key, &serde_json::to_vec(limit)?)?
            }
            None => {
                let mut batch = crate::store::Batch::new();
                batch.delete(crate::store::Cf::Global, key);
                self.store.write(batch)?;
            }
        }
        self.rate_limiter.set_override(user_id.as_str(), limit);
        Ok(())
    }

    /// At start-up: the users' own limits into the rate limiter.
    pub fn load_message_limits(&self) -> Result<()> {
        let prefix = message_limit_key("");
        for item in self.store.scan_prefix(crate::store::Cf::Global, &prefix) {
            let (key, value) = item?;
            if let Ok(limit) = serde_json::from_slice(&value) {
                let user = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
                self.rate_limiter.set_override(&user, Some(limit));
            }
        }
        Ok(())
    }

    /// A new password hash; with `logout_devices`, every device is logged out in the same
    /// batch (and that announced as a device-list change).
    pub async fn set_password(
        &self,
        user_id: &UserId,
        hash: String,
        logout_devices: bool,
    ) -> Result<()> {
        self.users
            .set_password_hash(user_id, Some(hash), |batch| {
                if logout_devices {
                    self.devices.delete_all_into(batch, user_id, None)
                } else {
                    Ok(())
                }
            })
            .await?;
        if logout_devices {
            self.announce_device_list_change(&[user_id]).await?;
        }
        Ok(())
    }

    /// Deactivates an account for good (by its owner or an admin): no more logins, devices and
    /// tokens gone (a device-list change), profile removed; it leaves every room it is in and
    /// refuses its pending invites (a room that refuses is logged and skipped). `erase` marks
    /// it erased (Synapse's GDPR flag; the profile goes either way here).
    pub async fn deactivate_account(&self, user_id: &UserId, erase: bool) -> Result<()> {
        self.users.deactivate(user_id, &self.devices, erase).await?;
        self.announce_device_list_change(&[user_id]).await?;
        for (room_id, membership) in self.members.rooms_of(user_id)? {
            if !matches!(
                membership.membership,
                MembershipState::Join | MembershipState::Invite | MembershipState::Knock
            ) {
                continue;
            }
            if let Err(e) = self
                .set_membership(&room_id, user_id, user_id, MembershipState::Leave, None)
                .await
            {
                tracing::info!(user = %user_id, room = %room_id, "a deactivated account stays in a room: {e}");
            }
        }
        tracing::info!(user = %user_id, erase, "account deactivated");
        Ok(())
    }
}

fn message_limit_key(user: &str) -> Vec<u8> {
    [b"ratelimit_override:".as_slice(), user.as_bytes()].concat()
}
