//! Logging, set up once at start: `RUST_LOG` filters (a default when unset), text or one
//! JSON object a line (`LOG_FORMAT=json`), to standard error, with ANSI colour only when
//! standard error is a terminal (never in a file, a pipe or the journal).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// `LOG_FORMAT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl LogFormat {
    /// `text` or `json`.
    pub fn parse(s: &str) -> Result<LogFormat, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!(
                "LOG_FORMAT `{other}` is not a log format: use text or json"
            )),
        }
    }

    /// From the `LOG_FORMAT` environment variable (text when unset).
    pub fn from_env() -> Result<LogFormat, String> {
        LogFormat::parse(&std::env::var("LOG_FORMAT").unwrap_or_default())
    }
}

/// The filter: `RUST_LOG` when set (refused when it does not parse), else `default`.
pub fn filter(default: &str) -> Result<EnvFilter, String> {
    match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => EnvFilter::try_new(&v).map_err(|e| {
            format!("RUST_LOG `{v}` is not a log filter such as info or warn,my_crate=debug: {e}")
        }),
        _ => EnvFilter::try_new(default).map_err(|e| e.to_string()),
    }
}

/// Installs the global subscriber (once; later calls change nothing).
pub fn init(format: LogFormat, filter: EnvFilter) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_formats_parse_and_others_are_refused() {
        assert_eq!(LogFormat::parse("json"), Ok(LogFormat::Json));
        assert_eq!(LogFormat::parse("JSON"), Ok(LogFormat::Json));
        assert_eq!(LogFormat::parse(""), Ok(LogFormat::Text));
        assert_eq!(LogFormat::parse("text"), Ok(LogFormat::Text));
        assert!(
            LogFormat::parse("yaml")
                .unwrap_err()
                .contains("LOG_FORMAT `yaml`")
        );
    }
}
