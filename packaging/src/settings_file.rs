//! The packaged settings files (`packaging/*/NAME.toml`, installed into `/etc/NAME/`) list
//! every setting commented out, `#KEY = VALUE`, under a comment that explains it. VALUE is
//! the default, unless the comment says "no default" (then VALUE is an example).
//!
//! [`check`] holds a file to that against the service's own settings loader, so a setting
//! added to the code but not to the file, a renamed one, a value of the wrong type, or a
//! default that changed in the code fails the service's tests.

/// One setting of a packaged settings file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The setting's name, `LISTEN`.
    pub key: String,
    /// The line without its `#`, `LISTEN = "127.0.0.1:7070"`.
    pub line: String,
    /// The comment lines right above it, without their `#`, joined by spaces.
    pub comment: String,
}

impl Entry {
    /// Whether the comment says the value is an example rather than the default.
    pub fn has_no_default(&self) -> bool {
        self.comment.to_ascii_lowercase().contains("no default")
    }
}

/// The `#KEY = VALUE` lines of `text` (KEY in upper case, as the settings are named),
/// each with the comment block right above it.
pub fn entries(text: &str) -> Vec<Entry> {
    let mut out = Vec::new();
    let mut comment: Vec<&str> = Vec::new();
    for line in text.lines() {
        let Some(body) = line.strip_prefix('#') else {
            comment.clear();
            continue;
        };
        let key = body.split_once('=').map(|(k, _)| k.trim()).filter(|k| {
            !k.is_empty()
                && k.bytes()
                    .all(|b| b.is_ascii_uppercase() || b == b'_' || b.is_ascii_digit())
        });
        match key {
            Some(key) if !body.starts_with(' ') => {
                out.push(Entry {
                    key: key.to_owned(),
                    line: body.to_owned(),
                    comment: comment.join(" "),
                });
                comment.clear();
            }
            _ => comment.push(body.trim()),
        }
    }
    out
}

/// Checks a packaged settings file against the service's loader.
///
/// - its keys are exactly `names`, each once;
/// - `minimal` (the required settings, `KEY = VALUE` lines) loads, and so does `minimal`
///   with any one line of the file uncommented (replacing the minimal line of that key);
/// - a line loads to the same settings as `minimal` alone exactly when its comment does
///   not say "no default".
///
/// `load` reads a TOML text with the service's own loader and returns a fingerprint of the
/// settings (equal fingerprints, equal settings; secrets included) or the error. Returns
/// every problem found, each a sentence naming the setting.
pub fn check(
    text: &str,
    names: &[&str],
    minimal: &[(&str, &str)],
    load: impl Fn(&str) -> Result<String, String>,
) -> Result<(), Vec<String>> {
    let entries = entries(text);
    let mut problems = Vec::new();
    for name in names {
        match entries.iter().filter(|e| e.key == *name).count() {
            1 => {}
            0 => problems.push(format!("{name} is a setting but the file does not list it")),
            n => problems.push(format!("{name} is listed {n} times")),
        }
    }
    for e in &entries {
        if !names.contains(&e.key.as_str()) {
            problems.push(format!("{} is listed but is no setting", e.key));
        }
    }

    let toml = |replaced: Option<&Entry>| {
        let mut t: Vec<String> = minimal
            .iter()
            .filter(|(k, _)| replaced.is_none_or(|e| e.key != *k))
            .map(|(k, v)| format!("{k} = {v}"))
            .collect();
        t.extend(replaced.map(|e| e.line.clone()));
        t.join("\n")
    };
    let baseline = match load(&toml(None)) {
        Ok(b) => b,
        Err(e) => {
            problems.push(format!("the minimal settings do not load: {e}"));
            return Err(problems);
        }
    };
    for e in &entries {
        match load(&toml(Some(e))) {
            Err(err) => problems.push(format!("`{}` does not load: {err}", e.line)),
            Ok(got) if got == baseline && e.has_no_default() => problems.push(format!(
                "`{}` is the default, but its comment says there is no default",
                e.line
            )),
            Ok(got) if got != baseline && !e.has_no_default() => problems.push(format!(
                "`{}` is not the default (the code's differs), and its comment does not say \"no default\"",
                e.line
            )),
            Ok(_) => {}
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "\
# Header prose, not a setting.

# Address to listen on.
#LISTEN = \"127.0.0.1:7070\"

# Worker threads. No default: one per core; for example:
#WORKERS = 4
";

    /// A loader of two settings whose defaults are LISTEN 127.0.0.1:7070 and no WORKERS.
    fn load(text: &str) -> Result<String, String> {
        let mut listen = "127.0.0.1:7070".to_owned();
        let mut workers = None;
        for line in text.lines().filter(|l| !l.is_empty()) {
            let (k, v) = line.split_once(" = ").ok_or(format!("bad line {line}"))?;
            match k {
                "LISTEN" => listen = v.trim_matches('"').to_owned(),
                "WORKERS" => workers = Some(v.parse::<u32>().map_err(|e| e.to_string())?),
                "TOKEN" => {}
                _ => return Err(format!("unknown field {k}")),
            }
        }
        Ok(format!("{listen} {workers:?}"))
    }

    #[test]
    fn entries_are_the_commented_settings_with_their_comments() {
        let e = entries(FILE);
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].key, "LISTEN");
        assert_eq!(e[0].line, "LISTEN = \"127.0.0.1:7070\"");
        assert_eq!(e[0].comment, "Address to listen on.");
        assert!(!e[0].has_no_default());
        assert!(e[1].has_no_default());
    }

    #[test]
    fn a_file_true_to_the_loader_passes() {
        check(FILE, &["LISTEN", "WORKERS"], &[("TOKEN", "\"t\"")], load).unwrap();
    }

    #[test]
    fn a_setting_missing_from_the_file_or_unknown_to_the_code_fails() {
        let problems = check(FILE, &["LISTEN", "TLS_CERT"], &[], load).unwrap_err();
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("TLS_CERT is a setting")),
            "{problems:?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("WORKERS is listed but")),
            "{problems:?}"
        );
    }

    #[test]
    fn a_wrong_default_or_an_example_posing_as_a_default_fails() {
        let wrong = FILE
            .replace("7070", "8080")
            .replace("No default: one per core; f", "F");
        let problems = check(&wrong, &["LISTEN", "WORKERS"], &[], load).unwrap_err();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].starts_with("`LISTEN = \"127.0.0.1:8080\"` is not the default"));
        assert!(problems[1].starts_with("`WORKERS = 4` is not the default"));
    }

    #[test]
    fn a_value_the_loader_refuses_fails() {
        let bad = FILE.replace("#WORKERS = 4", "#WORKERS = four");
        let problems = check(&bad, &["LISTEN", "WORKERS"], &[], load).unwrap_err();
        assert!(
            problems[0].starts_with("`WORKERS = four` does not load"),
            "{problems:?}"
        );
    }
}
