//! The options file in the running server: read at start (a bad file refuses the start),
//! read again on `SIGHUP` or an operator's request; a file that does not parse, or names
//! a feature this server does not license, or reserves more seats than a feature has, is
//! refused with its line and the options in force stay. The options in force are part of
//! the state (`OptionsChanged` events): durable, and replicated to the backup, which
//! honours its main's options when it takes over.

use std::collections::BTreeMap;
use std::path::Path;

use shared::capability::Role;

use crate::domain::Event;
use crate::error::ServiceError;
use crate::options::{self, Options, ParseError};
use crate::store;

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
    /// The options at start: a main or standalone server puts its file in force (or, with
    /// none, ends the options its store still holds); a bad file refuses the start. A
    /// backup honours its main's options, replicated: its own file, if any, must parse,
    /// and is otherwise ignored (with a warning).
    pub async fn start_options(&self) -> Result<(), ServiceError> {
        match (&self.cfg.options_file, self.cfg.role) {
            (Some(path), Role::Backup) => {
                read_options(path)?;
                tracing::warn!(
                    file = %path.display(),
                    "LICENSING_OPTIONS_FILE is not used on a backup: it honours the options its main replicates (set it on the main)"
                );
                Ok(())
            }
            (Some(_), _) => self.reload_options().await.map(|_| ()),
            (None, Role::Backup) => Ok(()),
            (None, _) => {
                if self.state.lock().options.is_some() {
                    tracing::info!(
                        "no LICENSING_OPTIONS_FILE: the options the store held are no longer in force"
                    );
                }
                self.put_options(String::new()).await
            }
        }
    }

    /// Reads the options file again and, when it is good, puts it in force (durable,
    /// and on the backup before the answer while the pair is in sync). Checked against
    /// the rights held now (a server with none yet checks only the file's syntax; its
    /// features are checked at the next reload).
    pub async fn reload_options(&self) -> Result<OptionsLoaded, ServiceError> {
        if self.cfg.role == Role::Backup {
            return Err(ServiceError::RoleConflict(
                "this server is a backup: it honours the options its main replicates; reload \
                 the main's options file (`license-server reload-options --url MAIN_URL`)"
                    .into(),
            ));
        }
        let Some(path) = &self.cfg.options_file else {
            return Err(ServiceError::validation(
                "options_file",
                "this server has no options file: set LICENSING_OPTIONS_FILE and restart it",
            ));
        };
        let (text, parsed) = read_options(path)?;
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
            parsed.check(counts).map_err(|e| refused(path, e))?;
        }
        self.put_options(text).await?;
        let loaded = OptionsLoaded {
            file: path.display().to_string(),
            rules: parsed.rules.len(),
        };
        tracing::info!(
            file = %loaded.file,
            rules = loaded.rules,
            features_checked = counts.is_some(),
            "options file in force"
        );
        Ok(loaded)
    }

    /// Makes `text` the options in force unless it is already: an event like any
    /// change, durable and replicated before this returns.
    async fn put_options(&self, text: String) -> Result<(), ServiceError> {
        let (seq, rx) = {
            let mut st = self.state.lock();
            if st.options.as_ref().map_or("", |o| &*o.text) == text {
                return Ok(());
            }
            let ev = Event::OptionsChanged { text, at: now_ms() };
            let seq = st.apply(&ev);
            (seq, self.store.submit(seq, ev))
        };
        store::acked(rx).await?;
        self.replicated(seq).await;
        Ok(())
    }
}

/// The file's text and rules, or its refusal.
fn read_options(path: &Path) -> Result<(String, Options), ServiceError> {
    let text =
        read_capped(path).map_err(|message| refused(path, ParseError { line: 0, message }))?;
    let parsed = options::parse(&text).map_err(|e| refused(path, e))?;
    Ok((text, parsed))
}

/// The refusal of a file: its line, logged for the operator.
fn refused(path: &Path, e: ParseError) -> ServiceError {
    tracing::warn!(file = %path.display(), line = e.line, error = %e.message, "options file refused");
    ServiceError::BadOptions {
        line: e.line,
        message: format!(
            "the options file {} is refused, line {}: {}; the options in force are kept",
            path.display(),
            e.line,
            e.message
        ),
    }
}

/// The file's text, refused past [`options::MAX_FILE_BYTES`] without reading it all.
fn read_capped(path: &Path) -> Result<String, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| format!("it cannot be read: {e}"))?;
    let mut text = String::new();
    let limit = options::MAX_FILE_BYTES as u64 + 1;
    file.take(limit)
        .read_to_string(&mut text)
        .map_err(|e| format!("it cannot be read as UTF-8 text: {e}"))?;
    Ok(text)
}
