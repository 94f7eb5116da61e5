//! Push rules (`/pushrules`): kept as the user's `m.push_rules` global account data, which is
//! also how clients see changes through `/sync`; the server-default rule set until the user
//! changes something. A first `/sync` always carries the user's rules (the defaults when they
//! never changed one), so clients that never ask `/pushrules` still highlight mentions.
//! (Evaluating them for notifications is the push issue's work.)

use ruma::{
    UserId,
    push::{
        Action, AnyPushRule, InsertPushRuleError, NewPushRule, RemovePushRuleError, RuleKind,
        Ruleset,
    },
};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{Error, Result, service::Services};

/// The account data type push rules are stored under.
const EVENT_TYPE: &str = "m.push_rules";

#[derive(Deserialize)]
struct PushRulesContent {
    global: Ruleset,
}

/// The server-default rules: ruma's (spec v1.19), and with `legacy` the three legacy mention
/// rules spec v1.17 removed (MSC4210, see `Config::legacy_mention_push_rules`) —
/// `.m.rule.contains_display_name` after `.m.rule.is_user_mention`, `.m.rule.roomnotif` after
/// `.m.rule.is_room_mention`, and the content rule `.m.rule.contains_user_name`. (Events with
/// `m.mentions` skip the legacy ones.) Without them, a stored rule set loses its copies of
/// them: ruma's merge drops server-default rules the defaults no longer have.
pub fn server_default_rules(user_id: &UserId, legacy: bool) -> Ruleset {
    let defaults = Ruleset::server_default(user_id);
    if !legacy {
        return defaults;
    }
    let mut json = serde_json::to_value(&defaults).unwrap_or_else(|_| json!({}));
    let contains_display_name = json!({
        "rule_id": ".m.rule.contains_display_name",
        "default": true,
        "enabled": true,
        "conditions": [{ "kind": "contains_display_name" }],
        "actions": ["notify", { "set_tweak": "sound", "value": "default" }, { "set_tweak": "highlight" }],
    });
    let roomnotif = json!({
        "rule_id": ".m.rule.roomnotif",
        "default": true,
        "enabled": true,
        "conditions": [
            { "kind": "event_match", "key": "content.body", "pattern": "@room" },
            { "kind": "sender_notification_permission", "key": "room" },
        ],
        "actions": ["notify", { "set_tweak": "highlight" }],
    });
    let contains_user_name = json!({
        "rule_id": ".m.rule.contains_user_name",
        "default": true,
        "enabled": true,
        "pattern": user_id.localpart(),
        "actions": ["notify", { "set_tweak": "sound", "value": "default" }, { "set_tweak": "highlight" }],
    });
    if let Some(rules) = json.get_mut("override").and_then(Value::as_array_mut) {
        for (after, legacy) in [
            (".m.rule.is_user_mention", contains_display_name),
            (".m.rule.is_room_mention", roomnotif),
        ] {
            let at = rules
                .iter()
                .position(|r| r["rule_id"] == after)
                .map_or(rules.len(), |i| i + 1);
            rules.insert(at, legacy);
        }
    }
    if let Some(rules) = json.as_object_mut().and_then(|object| {
        object
            .entry("content")
            .or_insert_with(|| json!([]))
            .as_array_mut()
    }) {
        rules.insert(0, contains_user_name);
    }
    serde_json::from_value(json).unwrap_or(defaults)
}

/// A rule set as clients expect it: every kind present, empty ones as `[]` (ruma leaves them
/// out).
pub fn ruleset_json(rules: &Ruleset) -> Value {
    let mut json = serde_json::to_value(rules).unwrap_or_else(|_| json!({}));
    if let Some(object) = json.as_object_mut() {
        for kind in ["override", "content", "room", "sender", "underride"] {
            object.entry(kind).or_insert_with(|| json!([]));
        }
    }
    json
}

fn rule_not_found() -> Error {
    Error::not_found("No push rule of that kind and ID.")
}

impl Services {
    /// The user's push rules: their stored set with today's server defaults (a default rule
    /// added since they last changed one appears; their switches and actions of the others
    /// stay), or the defaults.
    pub fn push_rules(&self, user_id: &UserId) -> Result<Ruleset> {
        let stored = self.account_data.get(user_id, None, EVENT_TYPE)?;
        let mut defaults = server_default_rules(user_id, self.config.legacy_mention_push_rules);
        if !self.thread_subscriptions_enabled() {
            defaults.postcontent.clear();
        }
        // Content a client wrote by hand that is no rule set counts as none.
        Ok(
            match stored.and_then(|raw| serde_json::from_str::<PushRulesContent>(raw.get()).ok()) {
                Some(content) => {
                    let mut rules = content.global;
                    // ruma's merge leaves `postcontent` out; it holds only server-default
                    // rules (clients may not add any), so the user's switches and actions
                    // are carried over here.
                    let stored_postcontent = std::mem::take(&mut rules.postcontent);
                    let postcontent = std::mem::take(&mut defaults.postcontent);
                    rules.update_with_server_default(defaults);
                    rules.postcontent = postcontent
                        .into_iter()
                        .map(|mut rule| {
                            if let Some(old) = stored_postcontent.get(rule.rule_id.as_str()) {
                                rule.enabled = old.enabled;
                                rule.actions = old.actions.clone();
                            }
                            rule
                        })
                        .collect();
                    rules
                }
                None => defaults,
            },
        )
    }

    /// The `m.push_rules` account data event a first `/sync` carries.
    pub fn push_rules_event(&self, user_id: &UserId) -> Result<Value> {
        Ok(json!({
            "type": EVENT_TYPE,
            "content": { "global": ruleset_json(&*self.push_ruleset(user_id)?) },
        }))
    }

    /// One rule, or `M_NOT_FOUND`.
    pub fn push_rule(
        &self,
        user_id: &UserId,
        kind: RuleKind,
        rule_id: &str,
    ) -> Result<AnyPushRule> {
        self.push_rules(user_id)?
            .get(kind, rule_id)
            .map(|rule| rule.to_owned())
            .ok_or_else(rule_not_found)
    }

    /// Changes the user's rule set and stores it (one account-data write, which `/sync` sees).
    async fn change_push_rules(
        &self,
        user_id: &UserId,
        change: impl FnOnce(&mut Ruleset) -> Result<()>,
    ) -> Result<()> {
        let _guard = self.push_rules_lock.lock().await;
        let mut rules = self.push_rules(user_id)?;
        change(&mut rules)?;
        let content = serde_json::value::to_raw_value(&json!({ "global": ruleset_json(&rules) }))?;
        self.set_account_data(user_id, None, EVENT_TYPE, &content)
            .await?;
        // Takes effect at once: the next event is evaluated with the new rules.
        self.push.rules_changed(user_id);
        Ok(())
    }

    /// Adds or replaces a user-defined rule, optionally placed `before`/`after` another.
    pub async fn set_push_rule(
        &self,
        user_id: &UserId,
        rule: NewPushRule,
        before: Option<&str>,
        after: Option<&str>,
    ) -> Result<()> {
        // MSC4306: the postcontent kind holds the server's rules only.
        if matches!(rule, NewPushRule::PostContent(_)) {
            return Err(Error::invalid_param(
                "Rules of the postcontent kind cannot be added.",
            ));
        }
        self.change_push_rules(user_id, |rules| {
            rules.insert(rule, after, before).map_err(|e| match e {
                InsertPushRuleError::UnknownRuleId => {
                    Error::not_found("The `before` or `after` rule does not exist.")
                }
                other => Error::invalid_param(other.to_string()),
            })
        })
        .await
    }

    /// Removes a user-defined rule.
    pub async fn delete_push_rule(
        &self,
        user_id: &UserId,
        kind: RuleKind,
        rule_id: &str,
    ) -> Result<()> {
        self.change_push_rules(user_id, |rules| {
            rules.remove(kind, rule_id).map_err(|e| match e {
                RemovePushRuleError::ServerDefault => {
                    Error::invalid_param("Server-default rules cannot be deleted.")
                }
                _ => rule_not_found(),
            })
        })
        .await
    }

    pub async fn set_push_rule_enabled(
        &self,
        user_id: &UserId,
        kind: RuleKind,
        rule_id: &str,
        enabled: bool,
    ) -> Result<()> {
        self.change_push_rules(user_id, |rules| {
            rules
                .set_enabled(kind, rule_id, enabled)
                .map_err(|_| rule_not_found())
        })
        .await
    }

    pub async fn set_push_rule_actions(
        &self,
        user_id: &UserId,
        kind: RuleKind,
        rule_id: &str,
        actions: Vec<Action>,
    ) -> Result<()> {
        self.change_push_rules(user_id, |rules| {
            rules
                .set_actions(kind, rule_id, actions)
                .map_err(|_| rule_not_found())
        })
        .await
    }
}
