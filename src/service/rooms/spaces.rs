//! Spaces: a space is a room whose `m.space.child` state events name its children. The client
//! `/hierarchy` walks that tree depth-first from a space, describing every room the user may
//! see; rooms this server is not in are described by the servers their `via` names, through
//! the federation `/hierarchy` (which `federation::knock` serves for other servers from the
//! same [`Services::space_children`]).

use std::collections::{HashMap, HashSet};

use ruma::{
    OwnedRoomId, OwnedServerName, RoomId, ServerName, UserId,
    api::federation::space::get_hierarchy, events::room::member::MembershipState,
};
use serde_json::{Value, json};

use crate::{Error, Result, service::Services};

/// Deepest a walk goes, whatever the client asks, and the most rooms one walk visits.
pub const MAX_DEPTH: usize = 10;
const MAX_ROOMS: usize = 500;
/// Servers asked about one room (the first of its `via`), and requests to other servers per
/// walk: a space's state cannot make one request fan out without bound.
const MAX_VIA: usize = 3;
const MAX_REMOTE_REQUESTS: usize = 50;

/// What `/hierarchy` asks for.
pub struct HierarchyQuery {
    pub suggested_only: bool,
    pub max_depth: usize,
    pub limit: usize,
    /// Rooms of the walk already returned by earlier pages.
    pub skip: usize,
}

/// One page of the walk.
pub struct HierarchyPage {
    pub rooms: Vec<Value>,
    /// Rooms returned so far, when the walk goes on.
    pub next: Option<usize>,
}

/// A room as the walk found it: its summary with `children_state`.
struct Node {
    summary: Value,
    /// Whether the requester may see it (the spec's list: member, invited, public, knockable,
    /// world readable, restricted with a membership that allows joining).
    visible: bool,
}

impl Services {
    /// A space's `m.space.child` events in the client's stripped form with
    /// `origin_server_ts`, those without `via` (removed children) left out, in the spec's
    /// order: by `order` (rooms with one first), then by when the child was added, then by ID.
    pub fn space_children(&self, room_id: &RoomId, suggested_only: bool) -> Result<Vec<Value>> {
        let state = self.timeline.current_state(room_id)?;
        let mut children = Vec::new();
        for ((kind, state_key), id) in &state {
            if kind != "m.space.child" || RoomId::parse(state_key).is_err() {
                continue;
            }
            let event = self.timeline.event_fields(room_id, id)?;
            if event["content"]["via"]
                .as_array()
                .is_none_or(|v| v.is_empty())
            {
                continue;
            }
            if suggested_only && event["content"]["suggested"] != true {
                continue;
            }
            children.push(json!({
                "type": "m.space.child",
                "state_key": state_key,
                "content": event["content"],
                "sender": event["sender"],
                "origin_server_ts": event["origin_server_ts"],
            }));
        }
        children.sort_by_key(child_order);
        Ok(children)
    }

    /// A page of the space tree under `root` for `user_id` (`/hierarchy`): 403 when the
    /// user may not see the root.
    pub async fn space_hierarchy(
        &self,
        user_id: &UserId,
        root: &RoomId,
        query: &HierarchyQuery,
    ) -> Result<HierarchyPage> {
        let mut remote = RemoteRooms::default();
        // Depth-first: a stack of (room, depth, servers that know it).
        let mut stack: Vec<(OwnedRoomId, usize, Vec<OwnedServerName>)> =
            vec![(root.to_owned(), 0, Vec::new())];
        let mut visited = HashSet::new();
        let mut walked = 0;
        let mut rooms = Vec::new();
        while let Some((room_id, depth, via)) = stack.pop() {
            if !visited.insert(room_id.clone()) || visited.len() > MAX_ROOMS {
                continue;
            }
            let node = self
                .space_node(user_id, &room_id, &via, query.suggested_only, &mut remote)
                .await?;
            let Some(node) = node.filter(|n| n.visible) else {
                if depth == 0 {
                    return Err(Error::forbidden("You may not see this space."));
                }
                continue;
            };
            if depth < query.max_depth {
                let children = node.summary["children_state"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                for child in children.iter().rev() {
                    let Some(child_id) = child["state_key"]
                        .as_str()
                        .and_then(|r| RoomId::parse(r).ok())
                    else {
                        continue;
                    };
                    let via = child["content"]["via"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|s| s.as_str().and_then(|s| ServerName::parse(s).ok()))
                        .collect();
                    stack.push((child_id, depth + 1, via));
                }
            }
            walked += 1;
            if walked <= query.skip {
                continue;
            }
            if rooms.len() == query.limit {
                // A room the user may see follows: the next page starts with it (a token only
                // when a page with something on it follows).
                return Ok(HierarchyPage {
                    rooms,
                    next: Some(walked - 1),
                });
            }
            rooms.push(node.summary);
        }
        Ok(HierarchyPage { rooms, next: None })
    }

    /// A room of the walk: from this server's state when it is in the room, else from the
    /// servers in `via`. `None` when nobody can describe it.
    async fn space_node(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
        via: &[OwnedServerName],
        suggested_only: bool,
        remote: &mut RemoteRooms,
    ) -> Result<Option<Node>> {
        if self.timeline.room(room_id)?.is_some() {
            let description = self.describe_room(room_id)?;
            let membership = self
                .members
                .membership(room_id, user_id)?
                .map(|m| m.membership);
            let visible = matches!(
                membership,
                Some(MembershipState::Join | MembershipState::Invite)
            ) || description.open_to_all()
                || self.may_join_restricted(
                    user_id,
                    &description.join_rule,
                    &description.allowed_room_ids,
                )?;
            let mut summary = description.summary_json()?;
            summary["children_state"] = Value::Array(self.space_children(room_id, suggested_only)?);
            return Ok(Some(Node { summary, visible }));
        }
        let Some(mut summary) = remote.describe(self, room_id, via, suggested_only).await else {
            return Ok(None);
        };
        // The other server shows what any server may see; restricted rooms are ours to judge.
        // (The answer as ruma gives it leaves out the default join rule, `public`.)
        let join_rule = summary["join_rule"].as_str().unwrap_or("public").to_owned();
        summary["join_rule"] = join_rule.as_str().into();
        let allowed: Vec<String> = summary["allowed_room_ids"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r.as_str().map(str::to_owned))
            .collect();
        let visible = summary["world_readable"] == true
            || matches!(join_rule.as_str(), "public" | "knock" | "knock_restricted")
            || self.may_join_restricted(user_id, &join_rule, &allowed)?;
        if summary.get("children_state").is_none() {
            summary["children_state"] = json!([]);
        }
        Ok(Some(Node { summary, visible }))
    }

    /// Whether a restricted room lets `user_id` join through a room they are joined to.
    fn may_join_restricted(
        &self,
        user_id: &UserId,
        join_rule: &str,
        allowed: &[String],
    ) -> Result<bool> {
        if !matches!(join_rule, "restricted" | "knock_restricted") {
            return Ok(false);
        }
        for room in allowed {
            if let Ok(room) = RoomId::parse(room)
                && self
                    .members
                    .membership(&room, user_id)?
                    .is_some_and(|m| m.membership == MembershipState::Join)
            {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// What other servers said about rooms during one walk: each answer describes a room and its
/// children, so a child is asked about only when it is itself a space to walk into.
#[derive(Default)]
struct RemoteRooms {
    known: HashMap<OwnedRoomId, Value>,
    /// Rooms whose own answer (with `children_state`) is in `known`.
    walked: HashSet<OwnedRoomId>,
    /// Requests made so far.
    requests: usize,
}

impl RemoteRooms {
    async fn describe(
        &mut self,
        services: &Services,
        room_id: &RoomId,
        via: &[OwnedServerName],
        suggested_only: bool,
    ) -> Option<Value> {
        let is_space = |summary: &Value| summary["room_type"] == "m.space";
        if let Some(summary) = self.known.get(room_id)
            && (self.walked.contains(room_id) || !is_space(summary))
        {
            return Some(summary.clone());
        }
        if !services.federation.enabled {
            return self.known.get(room_id).cloned();
        }
        for server in via
            .iter()
            .filter(|s| **s != services.server_name)
            .take(MAX_VIA)
        {
            if self.requests >= MAX_REMOTE_REQUESTS {
                break;
            }
            self.requests += 1;
            let mut request = get_hierarchy::v1::Request::new(room_id.to_owned());
            request.suggested_only = suggested_only;
            let answer = match services.send_federation_request(server, request).await {
                Ok(answer) => answer,
                Err(e) => {
                    tracing::debug!(%room_id, %server, "space hierarchy not given: {e}");
                    continue;
                }
            };
            let Ok(room) = serde_json::to_value(&answer.room) else {
                continue;
            };
            if room["room_id"] != room_id.as_str() {
                continue;
            }
            for child in &answer.children {
                if let Ok(child) = serde_json::to_value(child)
                    && let Some(id) = child["room_id"]
                        .as_str()
                        .and_then(|r| RoomId::parse(r).ok())
                {
                    self.known.entry(id).or_insert(child);
                }
            }
            self.known.insert(room_id.to_owned(), room.clone());
            self.walked.insert(room_id.to_owned());
            return Some(room);
        }
        self.known.get(room_id).cloned()
    }
}

/// The sort key of a child: a valid `order` (printable ASCII, at most 50 characters) first and
/// by it, then by when it was added, then by room ID.
fn child_order(child: &Value) -> (bool, String, u64, String) {
    let order = child["content"]["order"]
        .as_str()
        .filter(|o| o.len() <= 50 && o.bytes().all(|b| (0x20..=0x7e).contains(&b)));
    (
        order.is_none(),
        order.unwrap_or_default().to_owned(),
        child["origin_server_ts"].as_u64().unwrap_or(0),
        child["state_key"].as_str().unwrap_or_default().to_owned(),
    )
}
