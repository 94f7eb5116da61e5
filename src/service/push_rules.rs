//! Push rules (`/pushrules`): kept as the user's `m.push_rules` global account data, which is
//! also how clients see changes through `/sync`; the server-default rule set until the user
//! changes something. (Evaluating them for notifications is the push issue's work.)

use ruma::{
    UserId,
    push::{
        Action, AnyPushRule, InsertPushRuleError, NewPushRule, RemovePushRuleError, RuleKind,
        Ruleset,
    },
};
use serde::{Deserialize, Serialize};

use crate::{Error, Result, service::Services};

/// The account data type push rules are stored under.
const EVENT_TYPE: &str = "m.push_rules";

#[derive(Serialize, Deserialize)]
struct PushRulesContent {
    global: Ruleset,
}

fn rule_not_found() -> Error {
    Error::not_found("No push rule of that kind and ID.")
}

impl Services {
    /// The user's push rules.
    pub fn push_rules(&self, user_id: &UserId) -> Result<Ruleset> {
        let stored = self.account_data.get(user_id, None, EVENT_TYPE)?;
        // Content a client wrote by hand that is no rule set counts as none.
        Ok(stored
            .and_then(|raw| serde_json::from_str::<PushRulesContent>(raw.get()).ok())
            .map_or_else(|| Ruleset::server_default(user_id), |c| c.global))
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
        let content = serde_json::value::to_raw_value(&PushRulesContent { global: rules })?;
        self.set_account_data(user_id, None, EVENT_TYPE, &content)
            .await
    }

    /// Adds or replaces a user-defined rule, optionally placed `before`/`after` another.
    pub async fn set_push_rule(
        &self,
        user_id: &UserId,
        rule: NewPushRule,
        before: Option<&str>,
        after: Option<&str>,
    ) -> Result<()> {
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
