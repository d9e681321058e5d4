//! Port's own automation event, for an automation whose webhook has no body template.
//!
//! An automation may leave `invocationMethod.body` out; Port then sends the event as it is
//! (`docs/port-protocol.md`; UNCONFIRMED beyond Port's docs of the template's data: whether
//! the event arrives bare or beside the run, as `{event, run}`, so both are taken). The event
//! names a blueprint and an entity, not an action: the runner picks the blueprint's DELETE
//! action for it (`HandlerRegistry::route`), and only for the events that end an entity's
//! life (`ENTITY_DELETED`, `TIMER_PROPERTY_EXPIRED`); any other ends FAILURE saying so.
//!
//! ```json
//! {"event": {"action": "TIMER_PROPERTY_EXPIRED", "resourceType": "entity",
//!            "trigger": {"by": {"userId": "…"}, "origin": "AUTOMATION", "at": "…"},
//!            "context": {"blueprintIdentifier": "s3_bucket", "entityIdentifier": "b1",
//!                        "propertyIdentifier": "ttl"},
//!            "diff": {"before": {…entity…}, "after": {…entity…}}},
//!  "run": {"id": "r_…"}}
//! ```

use serde::Deserialize;
use serde_json::{Map, Value};

use super::payload::{entity, triggered_by, typed, PayloadError, WireTrigger};
use super::Invocation;
use crate::domain::{Identifier, Operation, RunId};

/// The action an event invocation carries until the runner routes it to a real one.
pub const EVENT_ACTION: &str = "port_automation_event";

/// The event kinds that destroy: the entity is gone, or its time is up.
pub const DESTROYING_EVENTS: [&str; 2] = ["ENTITY_DELETED", "TIMER_PROPERTY_EXPIRED"];

/// Whether a body is Port's event (bare or beside the run) rather than an action body.
pub(super) fn is_event(root: &Map<String, Value>) -> bool {
    let bare = |m: &Map<String, Value>| m.contains_key("diff") && m.contains_key("context");
    match root.get("event") {
        Some(Value::Object(event)) => bare(event),
        _ => bare(root) && !root.contains_key("payload"),
    }
}

#[derive(Deserialize)]
struct Wrapped {
    event: Event,
    #[serde(default)]
    run: Option<Run>,
}

#[derive(Deserialize)]
struct Run {
    #[serde(default)]
    id: Option<String>,
}

#[derive(Deserialize)]
struct Event {
    /// The event type; Port's docs call it `action` in the event, `type` in the trigger.
    #[serde(default, alias = "type")]
    action: Option<String>,
    #[serde(default)]
    trigger: Option<WireTrigger>,
    context: Context,
    #[serde(default)]
    diff: Option<Diff>,
    #[serde(default)]
    run: Option<Run>,
    #[serde(default, rename = "runId")]
    run_id: Option<String>,
}

#[derive(Deserialize)]
struct Context {
    #[serde(rename = "blueprintIdentifier")]
    blueprint: String,
    #[serde(default, rename = "entityIdentifier")]
    entity: Option<String>,
    #[serde(default, rename = "propertyIdentifier")]
    property: Option<String>,
}

#[derive(Deserialize, Default)]
struct Diff {
    #[serde(default)]
    before: Option<Map<String, Value>>,
    #[serde(default)]
    after: Option<Map<String, Value>>,
}

/// The invocation an event asks for: a DELETE of its entity, routed by blueprint.
pub(super) fn from_event(
    value: Value,
    run_id_header: Option<&str>,
) -> Result<Invocation, PayloadError> {
    let wrapped = value.get("event").is_some_and(Value::is_object);
    let (event, run, prefix) = if wrapped {
        let w: Wrapped = typed(value)?;
        (w.event, w.run, "event.")
    } else {
        let mut e: Event = typed(value)?;
        let run = e.run.take();
        (e, run, "")
    };
    let run_id = run
        .and_then(|r| r.id)
        .map(|id| ("run.id", id))
        .or(event.run_id.clone().map(|id| ("runId", id)))
        .or(run_id_header.map(|id| ("RUN_ID header", id.to_owned())));
    let Some((field, run_id)) = run_id else {
        return Err(PayloadError::Shape {
            path: "run.id".into(),
            message: "missing; an automation's body must carry the run (\"{{ .run.id }}\")".into(),
        });
    };
    let run_id = RunId::parse(field, &run_id)?;
    let blueprint = Identifier::schema(
        &format!("{prefix}context.blueprintIdentifier"),
        &event.context.blueprint,
    )?;
    let kind = event_kind(&event);
    let diff = event.diff.unwrap_or_default();
    let mut raw = diff
        .after
        .filter(|m| !m.is_empty())
        .or(diff.before)
        .unwrap_or_default();
    // The context names the entity even when the diff leaves it out.
    if let Some(id) = &event.context.entity {
        raw.entry("identifier").or_insert_with(|| id.clone().into());
    }
    raw.entry("blueprint")
        .or_insert_with(|| blueprint.as_str().into());
    let entity = entity(&format!("{prefix}diff.after"), Some(raw))?;
    Ok(Invocation {
        run_id,
        action: Identifier::schema("action", EVENT_ACTION)?,
        operation: Operation::Delete,
        blueprint: Some(blueprint),
        entity,
        inputs: Map::new(),
        secret_inputs: Vec::new(),
        triggered_by: triggered_by(event.trigger),
        job: None,
        event: Some(kind),
    })
}

/// The event's type as an automation's trigger names it (`ENTITY_DELETED`, …). The event
/// Port sends holds a verb in `action` (`CREATE`, `UPDATE`, `DELETE`, `TIMER_EXPIRED`, as
/// Port's pages show it); the trigger names are taken too. When neither is given, what the
/// event shows (a timer property named, or an entity with nothing after).
fn event_kind(event: &Event) -> String {
    match event.action.as_deref().map(str::to_ascii_uppercase) {
        Some(kind) => match kind.as_str() {
            "CREATE" => "ENTITY_CREATED".into(),
            "UPDATE" => "ENTITY_UPDATED".into(),
            "DELETE" => "ENTITY_DELETED".into(),
            "TIMER_EXPIRED" => "TIMER_PROPERTY_EXPIRED".into(),
            _ => kind,
        },
        None if event.context.property.is_some() => "TIMER_PROPERTY_EXPIRED".into(),
        None if event
            .diff
            .as_ref()
            .is_some_and(|d| d.after.is_none() && d.before.is_some()) =>
        {
            "ENTITY_DELETED".into()
        }
        None => "UNKNOWN".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::invocation::body::parse;
    use serde_json::json;

    fn event() -> Value {
        json!({
            "action": "TIMER_PROPERTY_EXPIRED",
            "resourceType": "entity",
            "trigger": {"by": {"orgId": "org", "userId": "u1"}, "origin": "AUTOMATION", "at": "2026-12-01T10:00:00Z"},
            "context": {"blueprintIdentifier": "s3_bucket", "entityIdentifier": "b1", "propertyIdentifier": "ttl"},
            "diff": {"before": {"identifier": "b1", "properties": {"ttl": "2026-12-01T09:00:00Z"}},
                     "after": {"identifier": "b1", "properties": {"ttl": "2026-12-01T09:00:00Z"}}}
        })
    }

    fn parsed(body: &Value, header: Option<&str>) -> Result<Invocation, PayloadError> {
        parse(&serde_json::to_vec(body).unwrap(), header)
    }

    #[test]
    fn port_s_event_verbs_are_read_as_the_trigger_names() {
        for (verb, kind) in [
            ("TIMER_EXPIRED", "TIMER_PROPERTY_EXPIRED"),
            ("DELETE", "ENTITY_DELETED"),
            ("UPDATE", "ENTITY_UPDATED"),
            ("CREATE", "ENTITY_CREATED"),
            ("TIMER_PROPERTY_EXPIRED", "TIMER_PROPERTY_EXPIRED"),
            ("ENTITY_DELETED", "ENTITY_DELETED"),
        ] {
            let mut body = event();
            body["action"] = json!(verb);
            let inv = parsed(&json!({"event": body, "run": {"id": "r_1"}}), None).unwrap();
            assert_eq!(inv.event.as_deref(), Some(kind), "{verb}");
        }
    }

    #[test]
    fn the_event_beside_its_run_is_a_delete_of_its_entity() {
        let inv = parsed(&json!({"event": event(), "run": {"id": "r_1"}}), None).unwrap();
        assert_eq!(inv.run_id.as_str(), "r_1");
        assert_eq!(inv.operation, Operation::Delete);
        assert_eq!(inv.event.as_deref(), Some("TIMER_PROPERTY_EXPIRED"));
        assert_eq!(inv.blueprint.as_ref().unwrap().as_str(), "s3_bucket");
        let entity = inv.entity.unwrap();
        assert_eq!(entity.identifier.as_str(), "b1");
        assert_eq!(entity.blueprint.unwrap().as_str(), "s3_bucket");
        assert_eq!(inv.triggered_by.origin.as_deref(), Some("AUTOMATION"));
    }

    #[test]
    fn a_bare_deletion_event_takes_the_run_from_the_header_and_the_entity_from_before() {
        let mut bare = event();
        bare["action"] = json!("DELETE");
        bare["diff"] = json!({"before": {"properties": {}}, "after": null});
        let inv = parsed(&bare, Some("r_2")).unwrap();
        assert_eq!(inv.run_id.as_str(), "r_2");
        assert_eq!(inv.event.as_deref(), Some("ENTITY_DELETED"));
        assert_eq!(inv.entity.unwrap().identifier.as_str(), "b1");
        bare.as_object_mut().unwrap().remove("action");
        bare["context"]
            .as_object_mut()
            .unwrap()
            .remove("propertyIdentifier");
        let inv = parsed(&bare, Some("r_3")).unwrap();
        assert_eq!(inv.event.as_deref(), Some("ENTITY_DELETED"));
    }

    #[test]
    fn an_event_without_a_run_or_blueprint_says_what_is_missing() {
        let err = parsed(&event(), None).unwrap_err().to_string();
        assert!(err.starts_with("run.id: missing"), "{err}");
        let mut no_bp = json!({"event": event(), "run": {"id": "r_1"}});
        no_bp["event"]["context"]
            .as_object_mut()
            .unwrap()
            .remove("blueprintIdentifier");
        let err = parsed(&no_bp, None).unwrap_err().to_string();
        assert!(err.starts_with("event.context"), "{err}");
        assert!(err.contains("blueprintIdentifier"), "{err}");
    }

    #[test]
    fn an_event_survives_being_stored() {
        let inv = parsed(&json!({"event": event(), "run": {"id": "r_1"}}), None).unwrap();
        let back = Invocation::from_stored(serde_json::to_value(&inv).unwrap()).unwrap();
        assert_eq!(back.event.as_deref(), Some("TIMER_PROPERTY_EXPIRED"));
        assert_eq!(back.action.as_str(), EVENT_ACTION);
    }
}
