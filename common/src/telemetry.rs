//! Logging set-up shared by the binaries.

use crate::config::{LogFormat, LogSettings};
use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber: `RUST_LOG` if set, else `settings.level`;
/// text or JSON lines on stderr. Call once, from `main`.
pub fn init(settings: &LogSettings) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only for people at a terminal, not in log files.
        .with_ansi(std::io::stderr().is_terminal());
    match settings.format {
        LogFormat::Text => builder.init(),
        // The event's fields at the top level, and the fields of the span
        // it is in (a worker's `repo`, `sha`, `job`, `attempt`) under
        // "span"; not the list of every enclosing span, which repeats them.
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
}
