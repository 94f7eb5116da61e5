//! Endpoints for and about application services: the ping, the per-network room directory,
//! and the third-party lookups (answered by the appservices that declare the protocol).

use std::collections::BTreeMap;

use axum::extract;
use ruma::{
    api::client::{
        appservice::{request_ping::v1 as ping_v1, set_room_visibility::v3 as list_v3},
        room::Visibility,
        thirdparty::{
            get_location_for_protocol::v3 as location_protocol_v3,
            get_location_for_room_alias::v3 as location_alias_v3, get_protocol::v3 as protocol_v3,
            get_protocols::v3 as protocols_v3, get_user_for_protocol::v3 as user_protocol_v3,
            get_user_for_user_id::v3 as user_id_v3,
        },
    },
    thirdparty::{Location, Protocol, User},
};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::{
    Error, Result,
    api::ruma::{Ruma, RumaResponse, State},
    service::appservice::{Appservice, outbound::encode_segment},
};

/// The appservice making the request; 403 for anyone else.
fn require_appservice<T>(request: &Ruma<T>) -> Result<&Appservice> {
    request
        .appservice
        .as_deref()
        .ok_or_else(|| Error::forbidden("Only application services may use this endpoint."))
}

pub async fn ping(
    extract::State(services): extract::State<State>,
    request: Ruma<ping_v1::Request>,
) -> Result<RumaResponse<ping_v1::Response>> {
    let service = require_appservice(&request)?;
    if service.id() != request.body.appservice_id {
        return Err(Error::forbidden(
            "The access token does not belong to this application service.",
        ));
    }
    let duration = services
        .ping_appservice(
            service,
            request.body.transaction_id.as_ref().map(|t| t.as_str()),
        )
        .await?;
    Ok(RumaResponse(ping_v1::Response::new(duration)))
}

/// `PUT /directory/list/appservice/{networkId}/{roomId}`: culvert keeps one room directory, so
/// the network only scopes the request; the room is published or hidden there.
pub async fn set_network_visibility(
    extract::State(services): extract::State<State>,
    request: Ruma<list_v3::Request>,
) -> Result<RumaResponse<list_v3::Response>> {
    require_appservice(&request)?;
    let room_id = &request.body.room_id;
    if services.timeline.room(room_id)?.is_none() {
        return Err(Error::not_found("No such room."));
    }
    let publish = match &request.body.visibility {
        Visibility::Public => true,
        Visibility::Private => false,
        other => {
            return Err(Error::invalid_param(format!(
                "Unknown visibility {}.",
                other.as_str()
            )));
        }
    };
    services.publish(room_id, publish)?;
    Ok(RumaResponse(list_v3::Response::new()))
}

/// Third-party answers of the appservices, parsed; malformed ones are left out.
fn parse_lists<T: DeserializeOwned>(answers: Vec<(String, Value)>) -> Vec<T> {
    answers
        .into_iter()
        .filter_map(|(_, value)| serde_json::from_value::<Vec<T>>(value).ok())
        .flatten()
        .collect()
}

/// A protocol as an appservice describes it, with the `instance_id`s the client-server API
/// requires (the appservice's ID and the network's, which identify an instance here).
fn protocol_from(appservice_id: &str, mut value: Value) -> Option<Protocol> {
    if let Some(instances) = value.get_mut("instances").and_then(Value::as_array_mut) {
        for instance in instances {
            if instance.get("instance_id").is_none() {
                let network = instance
                    .get("network_id")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                instance["instance_id"] = Value::String(format!("{appservice_id}|{network}"));
            }
        }
    }
    serde_json::from_value(value).ok()
}

fn no_results() -> Error {
    Error::not_found("No results for this third-party lookup.")
}

pub async fn protocols(
    extract::State(services): extract::State<State>,
    _request: Ruma<protocols_v3::Request>,
) -> Result<RumaResponse<protocols_v3::Response>> {
    let mut protocols: BTreeMap<String, Protocol> = BTreeMap::new();
    let names: Vec<(String, String)> = services
        .appservices
        .list()
        .iter()
        .flat_map(|s| {
            s.registration()
                .protocols
                .clone()
                .unwrap_or_default()
                .into_iter()
                .map(|p| (s.id().to_owned(), p))
        })
        .collect();
    for (id, name) in names {
        let path = format!("protocol/{}", encode_segment(&name));
        for (from, value) in services
            .third_party_query(|s| s.id() == id, &path, &[])
            .await
        {
            let Some(protocol) = protocol_from(&from, value) else {
                continue;
            };
            match protocols.get_mut(&name) {
                // Two appservices bridging one protocol: their instances together.
                Some(known) => known.instances.extend(protocol.instances),
                None => {
                    protocols.insert(name.clone(), protocol);
                }
            }
        }
    }
    Ok(RumaResponse(protocols_v3::Response::new(protocols)))
}

pub async fn protocol(
    extract::State(services): extract::State<State>,
    request: Ruma<protocol_v3::Request>,
) -> Result<RumaResponse<protocol_v3::Response>> {
    let name = &request.body.protocol;
    let path = format!("protocol/{}", encode_segment(name));
    let mut found: Option<Protocol> = None;
    for (from, value) in services
        .third_party_query(|s| s.has_protocol(name), &path, &[])
        .await
    {
        let Some(protocol) = protocol_from(&from, value) else {
            continue;
        };
        match &mut found {
            Some(known) => known.instances.extend(protocol.instances),
            None => found = Some(protocol),
        }
    }
    let protocol = found.ok_or_else(|| Error::not_found("No such protocol."))?;
    Ok(RumaResponse(protocol_v3::Response::new(protocol)))
}

/// Asks the appservices that declare `protocol` for its `kind` (`location` or `user`) matching
/// `fields`; an unknown protocol is 404, no answer at all is the spec's 404 too.
async fn lookup_in_protocol<T: serde::de::DeserializeOwned>(
    services: &State,
    kind: &str,
    protocol: &str,
    fields: &BTreeMap<String, String>,
) -> Result<Vec<T>> {
    if !services
        .appservices
        .list()
        .iter()
        .any(|s| s.has_protocol(protocol))
    {
        return Err(Error::not_found("No such protocol."));
    }
    let path = format!("{kind}/{}", encode_segment(protocol));
    let query: Vec<(String, String)> = fields.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let answers = services
        .third_party_query(|s| s.has_protocol(protocol), &path, &query)
        .await;
    let found: Vec<T> = parse_lists(answers);
    if found.is_empty() {
        return Err(no_results());
    }
    Ok(found)
}

pub async fn location_for_protocol(
    extract::State(services): extract::State<State>,
    request: Ruma<location_protocol_v3::Request>,
) -> Result<RumaResponse<location_protocol_v3::Response>> {
    let body = &request.body;
    let locations: Vec<Location> =
        lookup_in_protocol(&services, "location", &body.protocol, &body.fields).await?;
    Ok(RumaResponse(location_protocol_v3::Response::new(locations)))
}

pub async fn user_for_protocol(
    extract::State(services): extract::State<State>,
    request: Ruma<user_protocol_v3::Request>,
) -> Result<RumaResponse<user_protocol_v3::Response>> {
    let body = &request.body;
    let users: Vec<User> =
        lookup_in_protocol(&services, "user", &body.protocol, &body.fields).await?;
    Ok(RumaResponse(user_protocol_v3::Response::new(users)))
}

pub async fn location_for_alias(
    extract::State(services): extract::State<State>,
    request: Ruma<location_alias_v3::Request>,
) -> Result<RumaResponse<location_alias_v3::Response>> {
    let query = [("alias".to_owned(), request.body.alias.to_string())];
    let answers = services
        .third_party_query(
            |s| {
                s.registration()
                    .protocols
                    .as_ref()
                    .is_some_and(|p| !p.is_empty())
            },
            "location",
            &query,
        )
        .await;
    let locations: Vec<Location> = parse_lists(answers);
    if locations.is_empty() {
        return Err(no_results());
    }
    Ok(RumaResponse(location_alias_v3::Response::new(locations)))
}

pub async fn user_for_user_id(
    extract::State(services): extract::State<State>,
    request: Ruma<user_id_v3::Request>,
) -> Result<RumaResponse<user_id_v3::Response>> {
    let query = [("userid".to_owned(), request.body.userid.to_string())];
    let answers = services
        .third_party_query(
            |s| {
                s.registration()
                    .protocols
                    .as_ref()
                    .is_some_and(|p| !p.is_empty())
            },
            "user",
            &query,
        )
        .await;
    let users: Vec<User> = parse_lists(answers);
    if users.is_empty() {
        return Err(no_results());
    }
    Ok(RumaResponse(user_id_v3::Response::new(users)))
}
