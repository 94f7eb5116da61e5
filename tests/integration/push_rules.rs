//! Push rules: the server-default set, user rules added, changed and removed, and the change
//! reaching `/sync` as `m.push_rules` account data.

use reqwest::StatusCode;
use serde_json::json;

use crate::common::{TestServer, assert_error, next_batch};

const RULES: &str = "/_matrix/client/v3/pushrules";

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
