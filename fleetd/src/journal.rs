//! fleetd's log in the systemd journal, with its fields as journal fields.
//!
//! Each tracing event becomes one journal entry: `MESSAGE` is the message followed by its
//! fields as `key=value` (what `journalctl -u fleet` shows), `PRIORITY` comes from the level,
//! and every field is also a journal field of its own, upper-cased behind `FLEET_`, so that
//! `journalctl -u fleet FLEET_UNIT=hello.service` lists everything fleetd did with that unit.
//! Sent with `systemd-journal-logger` over journald's native protocol.

use std::fmt::Write as _;

use systemd_journal_logger::JournalLog;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::Context;

/// The prefix of fleetd's own journal fields.
const PREFIX: &str = "FLEET_";

pub struct JournalLayer {
    journal: JournalLog,
}

impl JournalLayer {
    /// Connects to journald's socket; fails when there is none.
    pub fn new() -> std::io::Result<JournalLayer> {
        Ok(JournalLayer {
            journal: JournalLog::new()?,
        })
    }
}

/// An event's message and fields, as text.
#[derive(Default)]
struct Fields {
    message: String,
    /// Field names as in the code, and values.
    fields: Vec<(&'static str, String)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.record(field, value.to_string());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.record(field, format!("{value:?}"));
    }
}

impl Fields {
    fn record(&mut self, field: &Field, value: String) {
        if field.name() == "message" {
            self.message = value;
        } else {
            self.fields.push((field.name(), value));
        }
    }

    /// The message as `journalctl` shows it: the message, then `key=value` for each field.
    fn text(&self) -> String {
        let mut text = self.message.clone();
        for (name, value) in &self.fields {
            if !text.is_empty() {
                text.push(' ');
            }
            let _ = write!(text, "{name}={value}");
        }
        text
    }
}

/// `unit` → `FLEET_UNIT`: journal field names are upper-case letters, digits and `_`.
fn journal_key(name: &str) -> String {
    let mut key = String::from(PREFIX);
    key.extend(name.chars().map(|c| match c {
        'a'..='z' => c.to_ascii_uppercase(),
        'A'..='Z' | '0'..='9' => c,
        _ => '_',
    }));
    key
}

fn level(level: &tracing::Level) -> log::Level {
    match *level {
        tracing::Level::ERROR => log::Level::Error,
        tracing::Level::WARN => log::Level::Warn,
        tracing::Level::INFO => log::Level::Info,
        tracing::Level::DEBUG => log::Level::Debug,
        tracing::Level::TRACE => log::Level::Trace,
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for JournalLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let text = fields.text();
        let keys: Vec<String> = fields.fields.iter().map(|(n, _)| journal_key(n)).collect();
        let pairs: Vec<(&str, &str)> = keys
            .iter()
            .zip(&fields.fields)
            .map(|(k, (_, v))| (k.as_str(), v.as_str()))
            .collect();
        let meta = event.metadata();
        // `format_args!` lives for this one statement only.
        let sent = self.journal.journal_send(
            &log::Record::builder()
                .level(level(meta.level()))
                .target(meta.target())
                .module_path(meta.module_path())
                .file(meta.file())
                .line(meta.line())
                .key_values(&pairs)
                .args(format_args!("{text}"))
                .build(),
        );
        if sent.is_err() {
            // journald is gone or refused the entry: keep the line on stderr, which systemd
            // also reads.
            eprintln!("{text}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_names_become_journal_keys() {
        assert_eq!(journal_key("unit"), "FLEET_UNIT");
        assert_eq!(journal_key("machine_id"), "FLEET_MACHINE_ID");
        assert_eq!(journal_key("r#type"), "FLEET_R_TYPE");
        assert_eq!(journal_key("a.b"), "FLEET_A_B");
    }

    #[test]
    fn the_message_carries_the_fields_as_text() {
        let fields = Fields {
            message: "start failed".into(),
            fields: vec![
                ("unit", "hello.service".into()),
                ("failure", "failed/failed".into()),
            ],
        };
        assert_eq!(
            fields.text(),
            "start failed unit=hello.service failure=failed/failed"
        );
    }
}
