//! The options file in the running server: read at start (a bad file refuses the start),
//! read again on `SIGHUP` or an operator's request; a file that does not parse, or names
//! a feature this server does not license, or reserves more seats than a feature has, is
//! refused with its line and the options in force stay.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::error::ServiceError;
use crate::options::{self, Options, ParseError};

use super::{Service, now_ms};

/// What a reload installed.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[schema(example = json!({"file": "/etc/license-server/options", "rules": 4}))]
pub struct OptionsLoaded {
    /// The options file's path.
    pub file: String,
    /// `RESERVE`, `MAX`, `INCLUDE` and `EXCLUDE` lines in force.
    pub rules: usize,
}

impl Service {
    /// The options in force (none without `LICENSING_OPTIONS_FILE`).
    pub(super) fn options(&self) -> Option<Arc<Options>> {
        self.options.read().clone()
    }

    /// Reads the options file again and, when it is good, puts it in force. Checked
    /// against the rights held now (a server with none yet checks only the file's
    /// syntax; its features are checked at the next reload).
    pub fn reload_options(&self) -> Result<OptionsLoaded, ServiceError> {
        let Some(path) = &self.cfg.options_file else {
            return Err(ServiceError::validation(
                "options_file",
                "this server has no options file: set LICENSING_OPTIONS_FILE and restart it",
            ));
        };
        let shown = path.display().to_string();
        let refuse = |e: ParseError| {
            let err = ServiceError::BadOptions {
                line: e.line,
                message: format!(
                    "the options file {shown} is refused, line {}: {}; the options in force \
                     are kept",
                    e.line, e.message
                ),
            };
            tracing::warn!(file = %shown, line = e.line, error = %e.message, "options file refused");
            err
        };
        let text = read_capped(path).map_err(|m| {
            refuse(ParseError {
                line: 0,
                message: m,
            })
        })?;
        let parsed = options::parse(&text).map_err(refuse)?;
        let counts = {
            let st = self.state.lock();
            st.rights.is_some().then(|| {
                let mut counts: BTreeMap<String, u32> = BTreeMap::new();
                for f in st.features(now_ms()) {
                    let c = counts.entry(f.feature).or_default();
                    *c = c.saturating_add(f.count);
                }
                counts
            })
        };
        if let Some(counts) = &counts {
            parsed.check(counts).map_err(refuse)?;
        }
        let loaded = OptionsLoaded {
            file: shown,
            rules: parsed.rules.len(),
        };
        *self.options.write() = Some(Arc::new(parsed));
        tracing::info!(
            file = %loaded.file,
            rules = loaded.rules,
            features_checked = counts.is_some(),
            "options file in force"
        );
        Ok(loaded)
    }
}

/// The file's text, refused past [`options::MAX_FILE_BYTES`] without reading it all.
fn read_capped(path: &std::path::Path) -> Result<String, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| format!("it cannot be read: {e}"))?;
    let mut text = String::new();
    let limit = options::MAX_FILE_BYTES as u64 + 1;
    file.take(limit)
        .read_to_string(&mut text)
        .map_err(|e| format!("it cannot be read as UTF-8 text: {e}"))?;
    Ok(text)
}
