//! Profiles of other servers' users, for local clients: asked of their server
//! (`/query/profile`) every time (profiles are small and change).

use std::collections::BTreeMap;

use ruma::{UserId, api::federation::query::get_profile_information, profile::ProfileFieldName};

use crate::{Error, Result, service::Services};

impl Services {
    /// `user_id`'s profile (or one field of it) from the user's server.
    pub async fn remote_profile(
        &self,
        user_id: &UserId,
        field: Option<&str>,
    ) -> Result<BTreeMap<String, serde_json::Value>> {
        let mut request = get_profile_information::v1::Request::new(user_id.to_owned());
        request.field = field.map(ProfileFieldName::from);
        let response = self
            .send_federation_request(user_id.server_name(), request)
            .await?;
        match serde_json::to_value(&response.data) {
            Ok(serde_json::Value::Object(fields)) => Ok(fields.into_iter().collect()),
            _ => Err(Error::not_found("No profile for that user.")),
        }
    }
}
