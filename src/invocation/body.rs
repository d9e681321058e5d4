//! A body as it arrives: JSON, then one of the shapes an invocation comes in — Port's own
//! automation event (`event.rs`), or an action's body, ours or Port's legacy envelope
//! (`payload.rs`). The one entry point for every edge that receives invocations. A well
//! formed action body is read in one pass (`payload::at_once`); anything else goes through
//! the JSON tree, whose errors name the path.

use super::payload::{from_action_body, json_object, PayloadError};
use super::{event, Invocation};

/// Parses `body`; `run_id_header` is the optional `RUN_ID` header a v2 action may send.
pub fn parse(body: &[u8], run_id_header: Option<&str>) -> Result<Invocation, PayloadError> {
    if let Some(parsed) = super::payload::at_once(body, run_id_header) {
        return parsed;
    }
    let value = json_object(body)?;
    match value.as_object().is_some_and(event::is_event) {
        true => event::from_event(value, run_id_header),
        false => from_action_body(value, run_id_header),
    }
}
