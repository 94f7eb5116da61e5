//! Server-server (federation) API handlers. Only the key endpoint exists so far; the rest of
//! federation is the federation issue's work and answers 404 `M_UNRECOGNIZED` until then.

mod keys;

use axum::Router;
use ruma::api::federation as f;

use super::ruma::{RouterExt, State};

pub fn routes(router: Router<State>) -> Router<State> {
    router.ruma_route::<f::discovery::get_server_keys::v2::Request, _, _>(keys::server_keys)
}
