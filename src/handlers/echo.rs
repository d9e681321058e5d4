//! `echo`: logs its inputs (secret ones masked) and changes nothing.
//!
//! Useful on its own to check the wiring from a Port button to this runner. Optional
//! inputs make it a test subject: `sleep_secs` (watch queueing and shutdown), `lines`
//! (log volume), `fail` (end as FAILURE).

use async_trait::async_trait;
use serde_json::Value;

use crate::core::MASK;
use crate::core::{Handler, HandlerError, Outcome, RunContext};
use crate::domain::Operation;

const MAX_SLEEP_SECS: f64 = 24.0 * 3600.0;
const MAX_LINES: u64 = 1_000_000;

pub struct EchoHandler;

#[async_trait]
impl Handler for EchoHandler {
    fn supports(&self, _operation: Operation) -> bool {
        true
    }

    async fn run(&self, ctx: RunContext) -> Result<Outcome, HandlerError> {
        let inv = &ctx.invocation;
        let sleep_secs = number_input(inv.inputs.get("sleep_secs"), "sleep_secs", MAX_SLEEP_SECS)?;
        let lines = number_input(inv.inputs.get("lines"), "lines", MAX_LINES as f64)? as u64;
        let fail = match inv.inputs.get("fail") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                return Err(HandlerError::Input {
                    field: "fail".into(),
                    reason: format!("expected true or false, got {other}"),
                })
            }
        };

        let who = inv
            .triggered_by
            .email
            .as_deref()
            .or(inv.triggered_by.user_id.as_deref())
            .unwrap_or("unknown user");
        ctx.log
            .line(format!(
                "echo: {} {} run {} triggered by {who}",
                inv.action, inv.operation, inv.run_id
            ))
            .await;
        if let Some(entity) = &inv.entity {
            ctx.log.line(format!("entity: {}", entity.identifier)).await;
        }
        for (key, value) in &inv.inputs {
            let shown = if inv.secret_inputs.iter().any(|s| s == key) {
                MASK.to_owned()
            } else {
                value.to_string()
            };
            ctx.log.line(format!("input {key} = {shown}")).await;
        }
        for i in 1..=lines {
            ctx.log.line(format!("line {i} of {lines}")).await;
        }
        if sleep_secs > 0.0 {
            ctx.log.line(format!("sleeping {sleep_secs}s")).await;
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_secs_f64(sleep_secs)) => {}
                _ = ctx.cancel.cancelled() => return Err(HandlerError::Cancelled),
            }
        }
        if fail {
            return Err(HandlerError::Failed(
                "failing as asked (input fail=true)".into(),
            ));
        }
        Ok(Outcome::new(format!(
            "echoed {} input(s); nothing was changed",
            inv.inputs.len()
        ))
        .with("inputs", Value::Object(inv.inputs.clone())))
    }
}

fn number_input(value: Option<&Value>, field: &str, max: f64) -> Result<f64, HandlerError> {
    match value {
        None | Some(Value::Null) => Ok(0.0),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(x) if (0.0..=max).contains(&x) => Ok(x),
            _ => Err(HandlerError::Input {
                field: field.into(),
                reason: format!("must be between 0 and {max}, got {n}"),
            }),
        },
        Some(other) => Err(HandlerError::Input {
            field: field.into(),
            reason: format!("expected a number, got {other}"),
        }),
    }
}
