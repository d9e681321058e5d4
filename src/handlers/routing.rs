//! Which handler takes an invocation: an automation event pointed at its blueprint's DELETE
//! action, then the action's handler, operation, blueprint and inputs checked. Each refusal
//! is a [`RouteError`], whose text is what the hub user reads on the failed run.

use std::sync::Arc;

use super::HandlerRegistry;
use crate::core::Handler;
use crate::domain::{DomainError, Identifier, Operation};
use crate::invocation::{event, Invocation};

/// Why an invocation reaches no handler (the run fails with this text).
#[derive(Debug, Clone, thiserror::Error)]
pub enum RouteError {
    #[error("automation event {kind} on blueprint '{blueprint}': port-runner acts on {events} events (it destroys the entity's resources); give the automation a body template naming the action to run", events = event::DESTROYING_EVENTS.join(" and "))]
    EventNotActedOn { kind: String, blueprint: String },
    #[error("automation event {kind}: this runner does not provision blueprint '{blueprint}' (none of its actions deletes '{blueprint}' entities)")]
    NoDeleteAction { kind: String, blueprint: String },
    #[error("automation event {kind}: blueprint '{blueprint}' has several DELETE actions ({actions}); give the automation a body template naming the one to run (port_context.action)")]
    SeveralDeleteActions {
        kind: String,
        blueprint: String,
        actions: String,
    },
    #[error("no handler for action '{action}'; this runner handles: {known}")]
    UnknownAction { action: String, known: String },
    #[error("action '{action}' does not support operation {operation}; it supports: {supported}")]
    UnsupportedOperation {
        action: String,
        operation: Operation,
        supported: String,
    },
    #[error("action '{action}' acts on {declared} entities, but this run is for blueprint '{given}': this runner does not provision '{given}' with it")]
    OtherBlueprint {
        action: String,
        declared: String,
        given: String,
    },
    #[error("invalid inputs: {}", .0.join("; "))]
    Inputs(Vec<String>),
    #[error(transparent)]
    Action(#[from] DomainError),
}

impl HandlerRegistry {
    /// Whether this runner can take the invocation: an action it has a handler for, or a
    /// Port event (routed by blueprint, and failed naming it when none fits).
    pub fn serves(&self, invocation: &Invocation) -> bool {
        invocation.event.is_some() || self.contains(invocation.action.as_str())
    }

    /// Points a Port event (a body with no template) at the action it means: the DELETE
    /// action of the event's blueprint. Other invocations are left as they are.
    pub fn route(&self, invocation: &mut Invocation) -> Result<(), RouteError> {
        let Some(kind) = invocation.event.as_deref() else {
            return Ok(());
        };
        let blueprint = invocation
            .blueprint
            .as_ref()
            .map(|b| b.as_str().to_owned())
            .unwrap_or_default();
        if !event::DESTROYING_EVENTS.contains(&kind) {
            return Err(RouteError::EventNotActedOn {
                kind: kind.to_owned(),
                blueprint,
            });
        }
        let mut candidates: Vec<&str> = self
            .inputs
            .iter()
            .filter(|(action, schema)| {
                schema.blueprint() == Some(blueprint.as_str())
                    && schema.operation().is_none_or(|op| op == "DELETE")
                    && self
                        .handlers
                        .get(*action)
                        .is_some_and(|h| h.supports(Operation::Delete))
            })
            .map(|(action, _)| action)
            .collect();
        candidates.sort_unstable();
        match candidates.as_slice() {
            [action] => {
                invocation.action = Identifier::schema("action", action)?;
                Ok(())
            }
            [] => Err(RouteError::NoDeleteAction {
                kind: kind.to_owned(),
                blueprint,
            }),
            many => Err(RouteError::SeveralDeleteActions {
                kind: kind.to_owned(),
                blueprint,
                actions: many.join(", "),
            }),
        }
    }

    /// The handler for this invocation, or the reason there is none (sent to Port as is).
    pub fn resolve(&self, invocation: &Invocation) -> Result<Arc<dyn Handler>, RouteError> {
        let action = invocation.action.as_str();
        let own = invocation
            .is_internal()
            .then(|| self.internal.get(action))
            .flatten();
        let Some(handler) = self.handlers.get(action).or(own) else {
            return Err(RouteError::UnknownAction {
                action: action.to_owned(),
                known: self.known().join(", "),
            });
        };
        if !handler.supports(invocation.operation) {
            let supported: Vec<&str> = Operation::ALL
                .iter()
                .filter(|op| handler.supports(**op))
                .map(|op| op.as_str())
                .collect();
            return Err(RouteError::UnsupportedOperation {
                action: action.to_owned(),
                operation: invocation.operation,
                supported: supported.join(", "),
            });
        }
        if let Some(schema) = self.inputs.get(action) {
            // An automation can point any blueprint's events at any action: refuse one whose
            // entity is not of the blueprint the action provisions, rather than act on it.
            let given = invocation
                .entity
                .as_ref()
                .and_then(|e| e.blueprint.as_ref())
                .or(invocation.blueprint.as_ref());
            if let (Some(declared), Some(given)) = (schema.blueprint(), given) {
                if declared != given.as_str() && invocation.operation != Operation::Create {
                    return Err(RouteError::OtherBlueprint {
                        action: action.to_owned(),
                        declared: declared.to_owned(),
                        given: given.as_str().to_owned(),
                    });
                }
            }
            schema
                .check(&invocation.inputs)
                .map_err(RouteError::Inputs)?;
        }
        Ok(handler.clone())
    }
}
