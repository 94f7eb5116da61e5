//! Push rules: the server-default set, user rules added, changed and removed, and the change
//! reaching `/sync` as `m.push_rules` account data.

use reqwest::StatusCode;
use serde_json::json;

use crate::common::{TestServer, assert_error, next_batch};

const RULES: &str = "/_matrix/client/v3/pushrules";
/// The configuration that keeps the legacy mention rules spec v1.17 removed.
const LEGACY: &str = "legacy_mention_push_rules = true";

/// Spec v1.17 (MSC4210): by default the three legacy mention rules are not served, a rule set
/// stored with them loses them (its other switches kept), and `/versions` lists v1.17 and
/// later; with them configured, `/versions` stops at v1.16.
#[tokio::test]
async fn the_legacy_mention_rules_are_gone_by_default() {
    let legacy = ["contains_display_name", "contains_user_name", "roomnotif"];
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;
    let all = server.get_ok(&format!("{RULES}/"), &alice).await;
    for rule in legacy {
        assert!(
            !all.to_string().contains(&format!(".m.rule.{rule}\"")),
            "{rule}: {all}"
        );
    }
    assert!(all.to_string().contains(".m.rule.is_user_mention"), "{all}");
    // A set stored while the server served them (with a switch changed), as it was stored.
    let user = ruma::UserId::parse(&alice.user_id).unwrap();
    let mut stored = serde_json::to_value(ruma::push::Ruleset::server_default(&user)).unwrap();
    stored["override"].as_array_mut().unwrap().push(json!({
        "rule_id": ".m.rule.roomnotif", "default": true, "enabled": false,
        "conditions": [{ "kind": "event_match", "key": "content.body", "pattern": "@room" }],
        "actions": ["notify"],
    }));
    for rule in stored["override"].as_array_mut().unwrap() {
        if rule["rule_id"] == ".m.rule.suppress_notices" {
            rule["enabled"] = json!(false);
        }
    }
    let content = serde_json::value::to_raw_value(&json!({ "global": stored })).unwrap();
    server
        .services()
        .set_account_data(&user, None, "m.push_rules", &content)
        .await
        .unwrap();
    let all = server.get_ok(&format!("{RULES}/"), &alice).await;
    assert!(!all.to_string().contains(".m.rule.roomnotif"), "{all}");
    let notices = server
        .get_ok(
            &format!("{RULES}/global/override/.m.rule.suppress_notices/enabled"),
            &alice,
        )
        .await;
    assert_eq!(notices["enabled"], false, "the user's switch stays");
    let (status, _) = server
        .get(
            &format!("{RULES}/global/override/.m.rule.roomnotif"),
            Some(&alice.token),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    async fn versions(server: &TestServer) -> serde_json::Value {
        let (_, body) = server.get("/_matrix/client/versions", None).await;
        body["versions"].clone()
    }
    let listed = versions(&server).await;
    for version in ["v1.16", "v1.17", "v1.18", "v1.19"] {
        assert!(
            listed.to_string().contains(&format!("\"{version}\"")),
            "{listed}"
        );
    }
    let server = TestServer::start_with(LEGACY).await;
    let listed = versions(&server).await;
    assert_eq!(
        listed.as_array().unwrap().last().unwrap(),
        "v1.16",
        "{listed}"
    );
}

#[tokio::test]
async fn push_rules_default_then_changed_by_the_user() {
    let server = TestServer::start().await;
    let alice = server.register("alice", "pw").await;

    let all = server.get_ok(&format!("{RULES}/"), &alice).await;
    let overrides = all["global"]["override"]
        .as_array()
        .expect("override rules");
    assert!(
        overrides.iter().any(|r| r["rule_id"] == ".m.rule.master"),
        "{all}"
    );
    assert!(all["global"]["underride"].is_array());
    let since = next_batch(&server.get_ok("/_matrix/client/v3/sync", &alice).await);

    // A room rule: added, read, disabled, given new actions, removed.
    let rule = format!("{RULES}/global/room/!quiet:test.local");
    let (status, body) = server
        .put(&rule, Some(&alice.token), json!({ "actions": [] }))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let read = server.get_ok(&rule, &alice).await;
    assert_eq!(read["rule_id"], "!quiet:test.local");
    assert_eq!(read["enabled"], true);
    let (status, _) = server
        .put(
            &format!("{rule}/enabled"),
            Some(&alice.token),
            json!({ "enabled": false }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        server.get_ok(&format!("{rule}/enabled"), &alice).await["enabled"],
        false
    );
    let (status, _) = server
        .put(
            &format!("{rule}/actions"),
            Some(&alice.token),
            json!({ "actions": ["notify"] }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        server.get_ok(&format!("{rule}/actions"), &alice).await["actions"],
        json!(["notify"])
    );
    // The change reaches the client's other devices through sync.
    let changed = server
        .get_ok(&format!("/_matrix/client/v3/sync?since={since}"), &alice)
        .await;
    let pushed = changed["account_data"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "m.push_rules")
        .expect("m.push_rules in sync");
    assert!(
        pushed["content"]["global"]["room"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["rule_id"] == "!quiet:test.local")
    );
    let (status, _) = server.delete(&rule, Some(&alice.token), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    assert_error(
        &server.get(&rule, Some(&alice.token)).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );

    // Server-default rules can be disabled but not deleted; placing next to an unknown rule and
    // rule IDs starting with a dot are refused.
    let master = format!("{RULES}/global/override/.m.rule.master");
    assert_error(
        &server.delete(&master, Some(&alice.token), json!({})).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    let (status, _) = server
        .put(
            &format!("{master}/enabled"),
            Some(&alice.token),
            json!({ "enabled": true }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_error(
        &server
            .put(
                &format!("{RULES}/global/content/words?before=nope"),
                Some(&alice.token),
                json!({ "actions": ["notify"], "pattern": "cake" }),
            )
            .await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    assert_error(
        &server
            .put(
                &format!("{RULES}/global/room/.mine"),
                Some(&alice.token),
                json!({ "actions": [] }),
            )
            .await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    assert_error(
        &server.get(&format!("{RULES}/"), None).await,
        StatusCode::UNAUTHORIZED,
        "M_MISSING_TOKEN",
    );
    // No pusher can be registered yet: the list is empty.
    assert_eq!(
        server.get_ok("/_matrix/client/v3/pushers", &alice).await,
        json!({ "pushers": [] })
    );
}

/// Clients that never ask `/pushrules` (nheko) read the rules from the first sync: they are
/// there from the start, with the legacy mention rules older clients still match on when the
/// server is configured to keep them, and every kind is listed.
#[tokio::test]
async fn a_first_sync_carries_the_default_rules_with_the_legacy_mention_rules() {
    let server = TestServer::start_with(LEGACY).await;
    let alice = server.register("alice", "pw").await;
    let sync = server.get_ok("/_matrix/client/v3/sync", &alice).await;
    let event = sync["account_data"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "m.push_rules")
        .unwrap_or_else(|| panic!("no m.push_rules in the first sync: {sync}"))
        .clone();
    let all = server.get_ok(&format!("{RULES}/"), &alice).await;
    assert_eq!(
        event["content"], all,
        "the first sync and /pushrules/ agree"
    );
    let global = &all["global"];
    for kind in ["override", "content", "room", "sender", "underride"] {
        assert!(global[kind].is_array(), "{kind} listed: {all}");
    }
    let ids = |kind: &str| -> Vec<String> {
        global[kind]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["rule_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let overrides = ids("override");
    let at = |id: &str| {
        overrides
            .iter()
            .position(|r| r == id)
            .unwrap_or_else(|| panic!("{id} missing from {overrides:?}"))
    };
    assert_eq!(
        at(".m.rule.contains_display_name"),
        at(".m.rule.is_user_mention") + 1
    );
    assert_eq!(at(".m.rule.roomnotif"), at(".m.rule.is_room_mention") + 1);
    assert_eq!(at(".m.rule.master"), 0);
    let content = &global["content"][0];
    assert_eq!(content["rule_id"], ".m.rule.contains_user_name", "{all}");
    assert_eq!(content["pattern"], "alice");
    assert_eq!(global["room"], json!([]));
    assert_eq!(global["sender"], json!([]));
    let roomnotif = &global["override"][at(".m.rule.roomnotif")];
    assert_eq!(
        roomnotif["conditions"][1],
        json!({ "kind": "sender_notification_permission", "key": "room" }),
        "{roomnotif}"
    );

    // A change is stored with the legacy rules, and an incremental sync carries it.
    let since = next_batch(&sync);
    let (status, _) = server
        .put(
            &format!("{RULES}/global/override/.m.rule.roomnotif/enabled"),
            Some(&alice.token),
            json!({ "enabled": false }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let later = server
        .get_ok(
            &format!("/_matrix/client/v3/sync?since={since}&timeout=0"),
            &alice,
        )
        .await;
    let changed = later["account_data"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "m.push_rules")
        .unwrap_or_else(|| panic!("the change reaches the sync: {later}"))
        .clone();
    let rules = changed["content"]["global"]["override"].as_array().unwrap();
    let roomnotif = rules
        .iter()
        .find(|r| r["rule_id"] == ".m.rule.roomnotif")
        .unwrap();
    assert_eq!(roomnotif["enabled"], false);
    assert!(changed["content"]["global"]["room"].is_array(), "{changed}");
    // An incremental sync without a change does not repeat the rules.
    let quiet = server
        .get_ok(
            &format!(
                "/_matrix/client/v3/sync?since={}&timeout=0",
                next_batch(&later)
            ),
            &alice,
        )
        .await;
    assert!(
        quiet["account_data"]["events"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["type"] != "m.push_rules"),
        "{quiet}"
    );
}

/// A rule set stored before a default rule existed gets it (enabled switches kept).
#[tokio::test]
async fn stored_rules_gain_new_server_defaults() {
    let server = TestServer::start_with(LEGACY).await;
    let alice = server.register("alice", "pw").await;
    // The rule set as ruma's defaults alone wrote it, with the master rule switched on.
    let user = ruma::UserId::parse(&alice.user_id).unwrap();
    let mut old = ruma::push::Ruleset::server_default(&user);
    old.set_enabled(ruma::push::RuleKind::Override, ".m.rule.master", true)
        .unwrap();
    // (Clients may not write `m.push_rules` themselves: it is stored here as an older culvert
    // stored it.)
    let content = serde_json::value::to_raw_value(&json!({ "global": old })).unwrap();
    server
        .services()
        .set_account_data(&user, None, "m.push_rules", &content)
        .await
        .unwrap();
    let all = server.get_ok(&format!("{RULES}/"), &alice).await;
    let overrides = all["global"]["override"].as_array().unwrap();
    assert!(
        overrides
            .iter()
            .any(|r| r["rule_id"] == ".m.rule.contains_display_name"),
        "{all}"
    );
    let master = overrides
        .iter()
        .find(|r| r["rule_id"] == ".m.rule.master")
        .unwrap();
    assert_eq!(master["enabled"], true, "the user's switch stays");
}
