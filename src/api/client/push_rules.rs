//! Push rules: `/pushrules/` and its per-rule endpoints (pushers and notifications are
//! `push.rs`).

use axum::{Json, extract};
use ruma::api::client::push::{
    delete_pushrule::v3 as delete_v3, get_pushrule::v3 as get_rule_v3,
    get_pushrule_actions::v3 as get_actions_v3, get_pushrule_enabled::v3 as get_enabled_v3,
    get_pushrules_all::v3 as all_v3, get_pushrules_global_scope::v3 as global_v3,
    set_pushrule::v3 as set_rule_v3, set_pushrule_actions::v3 as set_actions_v3,
    set_pushrule_enabled::v3 as set_enabled_v3,
};
use serde_json::{Value, json};

use crate::{
    Result,
    api::ruma::{Ruma, RumaResponse, State},
    service::push_rules::ruleset_json,
};

/// `GET /pushrules/`: every kind is listed, empty ones as `[]` (clients index into them).
pub async fn all(
    extract::State(services): extract::State<State>,
    request: Ruma<all_v3::Request>,
) -> Result<Json<Value>> {
    let rules = services.push_rules(request.user())?;
    Ok(Json(json!({ "global": ruleset_json(&rules) })))
}

/// `GET /pushrules/global/`: the rule set itself, every kind listed.
pub async fn global(
    extract::State(services): extract::State<State>,
    request: Ruma<global_v3::Request>,
) -> Result<Json<Value>> {
    Ok(Json(ruleset_json(&services.push_rules(request.user())?)))
}

pub async fn get(
    extract::State(services): extract::State<State>,
    request: Ruma<get_rule_v3::Request>,
) -> Result<RumaResponse<get_rule_v3::Response>> {
    let body = &request.body;
    let rule = match services.push_rule(request.user(), body.kind.clone(), &body.rule_id)? {
        // ruma's conversion panics on this kind (MSC4306's): convert the rule itself.
        ruma::push::AnyPushRule::PostContent(rule) => rule.into(),
        rule => rule.into(),
    };
    Ok(RumaResponse(get_rule_v3::Response::new(rule)))
}

pub async fn set(
    extract::State(services): extract::State<State>,
    request: Ruma<set_rule_v3::Request>,
) -> Result<RumaResponse<set_rule_v3::Response>> {
    let user = request.user().to_owned();
    let body = request.body;
    services
        .set_push_rule(
            &user,
            body.rule,
            body.before.as_deref(),
            body.after.as_deref(),
        )
        .await?;
    Ok(RumaResponse(set_rule_v3::Response::new()))
}

pub async fn delete(
    extract::State(services): extract::State<State>,
    request: Ruma<delete_v3::Request>,
) -> Result<RumaResponse<delete_v3::Response>> {
    let body = &request.body;
    services
        .delete_push_rule(request.user(), body.kind.clone(), &body.rule_id)
        .await?;
    Ok(RumaResponse(delete_v3::Response::new()))
}

pub async fn get_enabled(
    extract::State(services): extract::State<State>,
    request: Ruma<get_enabled_v3::Request>,
) -> Result<RumaResponse<get_enabled_v3::Response>> {
    let body = &request.body;
    let rule = services.push_rule(request.user(), body.kind.clone(), &body.rule_id)?;
    Ok(RumaResponse(get_enabled_v3::Response::new(rule.enabled())))
}

pub async fn set_enabled(
    extract::State(services): extract::State<State>,
    request: Ruma<set_enabled_v3::Request>,
) -> Result<RumaResponse<set_enabled_v3::Response>> {
    let body = &request.body;
    services
        .set_push_rule_enabled(
            request.user(),
            body.kind.clone(),
            &body.rule_id,
            body.enabled,
        )
        .await?;
    Ok(RumaResponse(set_enabled_v3::Response::new()))
}

pub async fn get_actions(
    extract::State(services): extract::State<State>,
    request: Ruma<get_actions_v3::Request>,
) -> Result<RumaResponse<get_actions_v3::Response>> {
    let body = &request.body;
    let rule = services.push_rule(request.user(), body.kind.clone(), &body.rule_id)?;
    Ok(RumaResponse(get_actions_v3::Response::new(
        rule.actions().to_vec(),
    )))
}

pub async fn set_actions(
    extract::State(services): extract::State<State>,
    request: Ruma<set_actions_v3::Request>,
) -> Result<RumaResponse<set_actions_v3::Response>> {
    let body = &request.body;
    services
        .set_push_rule_actions(
            request.user(),
            body.kind.clone(),
            &body.rule_id,
            body.actions.clone(),
        )
        .await?;
    Ok(RumaResponse(set_actions_v3::Response::new()))
}
