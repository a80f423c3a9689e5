//! Logs (SPEC §10): one JSON object per line on stdout with `timestamp`, `level`, `message`,
//! `target` and the event's context fields.
//!
//! Levels: `message` (per-message lines, target `slipstream::message`, on while message logs
//! are enabled), `debug` (while debug logs are enabled), `info` (lifecycle: listening, peer
//! connected, stopped), `warn`, `error`, and `critical` (error lines with `critical = true`:
//! a circuit opening, a dead letter, a store failure). Both switches change at run time through
//! `PUT /log-level`; the filter is swapped in place, nothing restarts.

use std::fmt;
use std::sync::{Mutex, OnceLock};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

/// The target of per-message lines.
pub const MESSAGE_TARGET: &str = "slipstream::message";

/// What `GET /log-level` shows and `PUT /log-level` takes (fields may be left out).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LogSettings {
    /// `debug`, `info` or `error`: the most detailed level of non-message lines.
    pub level: LogLevel,
    pub message_logs: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Debug,
    Info,
    Error,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LogChange {
    pub level: Option<LogLevel>,
    pub message_logs: Option<bool>,
}

impl LogSettings {
    pub fn new(message_logs: bool, debug_logs: bool) -> Self {
        LogSettings {
            level: if debug_logs {
                LogLevel::Debug
            } else {
                LogLevel::Info
            },
            message_logs,
        }
    }

    /// The filter directives for these settings.
    pub fn filter(&self) -> String {
        let base = match self.level {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Error => "error",
        };
        let messages = if self.message_logs { "info" } else { "off" };
        format!(
            "{base},{MESSAGE_TARGET}={messages},hyper=warn,tungstenite=warn,tokio_tungstenite=warn"
        )
    }
}

struct Control {
    handle: reload::Handle<EnvFilter, Registry>,
    settings: Mutex<LogSettings>,
}

static CONTROL: OnceLock<Control> = OnceLock::new();

/// Installs the JSON line logger on stdout. Later calls (several nodes in one process) keep
/// the first logger.
pub fn init(settings: LogSettings) {
    let (filter, handle) = reload::Layer::new(EnvFilter::new(settings.filter()));
    let layer = tracing_subscriber::fmt::layer()
        .event_format(JsonLines)
        .with_writer(std::io::stdout);
    if tracing_subscriber::registry()
        .with(filter)
        .with(layer)
        .try_init()
        .is_ok()
    {
        let _ = CONTROL.set(Control {
            handle,
            settings: Mutex::new(settings),
        });
    }
}

/// The settings in force, or `None` when this process installed no logger.
pub fn current() -> Option<LogSettings> {
    CONTROL
        .get()
        .map(|c| *c.settings.lock().unwrap_or_else(|p| p.into_inner()))
}

/// Changes the settings at run time; returns the new ones.
pub fn change(change: LogChange) -> Option<LogSettings> {
    let control = CONTROL.get()?;
    let mut settings = control.settings.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(level) = change.level {
        settings.level = level;
    }
    if let Some(m) = change.message_logs {
        settings.message_logs = m;
    }
    control
        .handle
        .reload(EnvFilter::new(settings.filter()))
        .ok()?;
    Some(*settings)
}

/// Formats an event as one JSON object.
struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut fields = Fields(Map::new());
        event.record(&mut fields);
        let mut fields = fields.0;
        let critical = fields.remove("critical") == Some(Value::Bool(true));
        let level = if critical {
            "critical"
        } else if meta.target() == MESSAGE_TARGET {
            "message"
        } else {
            match *meta.level() {
                Level::ERROR => "error",
                Level::WARN => "warn",
                Level::INFO => "info",
                Level::DEBUG => "debug",
                Level::TRACE => "trace",
            }
        };
        let mut timestamp = String::new();
        SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
        let mut line = Map::new();
        line.insert("timestamp".into(), Value::String(timestamp));
        line.insert("level".into(), Value::String(level.into()));
        line.insert(
            "message".into(),
            fields
                .remove("message")
                .unwrap_or(Value::String(String::new())),
        );
        line.extend(fields);
        line.insert("target".into(), Value::String(meta.target().into()));
        writeln!(writer, "{}", Value::Object(line))
    }
}

struct Fields(Map<String, Value>);

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0
            .insert(field.name().into(), Value::String(value.into()));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), Value::Bool(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), Value::String(format!("{value:?}")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_map_to_filters() {
        let s = LogSettings::new(true, false);
        assert!(s.filter().starts_with("info,slipstream::message=info"));
        let s = LogSettings::new(false, true);
        assert!(s.filter().starts_with("debug,slipstream::message=off"));
    }

    #[test]
    fn a_change_keeps_what_it_does_not_name() {
        let change: LogChange = serde_json::from_str(r#"{"messageLogs":false}"#).unwrap();
        assert_eq!(change.level, None);
        assert!(serde_json::from_str::<LogChange>(r#"{"level":"loud"}"#).is_err());
    }
}
