//! Sync filters uploaded by clients (`POST /user/{userId}/filter`), kept per user.

use ruma::{UserId, api::client::filter::FilterDefinition};

use crate::{
    Result,
    service::rooms::short::ShortIds,
    store::{Cf, Store, keys},
};

pub struct Filters {
    store: Store,
}

impl Filters {
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// Stores a filter and returns its new ID.
    pub fn create(
        &self,
        ids: &ShortIds,
        user_id: &UserId,
        filter: &FilterDefinition,
    ) -> Result<String> {
        let filter_id = ids.next_id()?.to_string();
        let key = keys::join([user_id.as_bytes(), filter_id.as_bytes()]);
        self.store
            .put(Cf::Filters, &key, &serde_json::to_vec(filter)?)?;
        Ok(filter_id)
    }

    /// Stores a filter under the ID another homeserver gave it (`culvert import`), so that
    /// clients' stored filter IDs keep working. (Ours are numbers; theirs may be anything.)
    pub fn import(
        &self,
        user_id: &UserId,
        filter_id: &str,
        filter: &FilterDefinition,
    ) -> Result<()> {
        let key = keys::join([user_id.as_bytes(), filter_id.as_bytes()]);
        self.store
            .put(Cf::Filters, &key, &serde_json::to_vec(filter)?)?;
        Ok(())
    }

    pub fn get(&self, user_id: &UserId, filter_id: &str) -> Result<Option<FilterDefinition>> {
        let key = keys::join([user_id.as_bytes(), filter_id.as_bytes()]);
        match self.store.get(Cf::Filters, &key)? {
            Some(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
            None => Ok(None),
        }
    }
}
