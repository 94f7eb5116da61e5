//! EDUs from other servers. Not handled yet: typing, receipts, presence, device lists and
//! to-device messages from other servers are accepted (a transaction must not fail for them)
//! and dropped, with a debug log line. (Federation issue: open work.)

use ruma::{ServerName, api::federation::transactions::edu::Edu, serde::Raw};

use crate::service::Services;

impl Services {
    pub async fn handle_transaction_edus(&self, origin: &ServerName, edus: &[Raw<Edu>]) {
        for edu in edus {
            let kind = edu
                .get_field::<String>("edu_type")
                .ok()
                .flatten()
                .unwrap_or_default();
            tracing::debug!(%origin, edu_type = %kind, "EDU not handled yet; dropped");
        }
    }
}
