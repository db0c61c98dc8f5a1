//! The settings file the Debian package installs as /etc/backoffice/backoffice.toml lists
//! every setting of the back office, and each value shown is valid and is the default
//! unless its comment says there is none (`packaging::settings_file::check`).

use std::io::Write;

use backoffice::Settings;
use backoffice::config::NAMES;

const FILE: &str = include_str!("../../packaging/backoffice/backoffice.toml");

/// Loads `toml` with the back office's own loader; the fingerprint shows the secrets too.
fn load(toml: &str) -> Result<String, String> {
    // The certificate and its key go together: a line naming one is loaded with the
    // file's example of the other.
    let mut toml = toml.to_owned();
    for (one, other) in [("TLS_CERT", "TLS_KEY"), ("TLS_KEY", "TLS_CERT")] {
        if toml.contains(&format!("{one} =")) && !toml.contains(&format!("{other} =")) {
            let example = FILE
                .lines()
                .find_map(|l| {
                    l.strip_prefix('#')
                        .filter(|l| l.starts_with(&format!("{other} =")))
                })
                .expect("the file has an example of each TLS setting");
            toml.push_str(&format!("\n{example}\n"));
        }
    }
    let mut file = tempfile::NamedTempFile::new().map_err(|e| e.to_string())?;
    file.write_all(toml.as_bytes()).map_err(|e| e.to_string())?;
    let s = Settings::load(Some(file.path())).map_err(|e| e.to_string())?;
    Ok(format!(
        "{s:?} {:?} {:?}",
        s.database_url.as_ref().map(|u| u.expose()),
        s.admin_password.as_ref().map(|p| p.expose())
    ))
}

#[test]
fn packaged_settings_file_lists_every_setting_with_its_default() {
    if let Err(problems) = packaging::settings_file::check(FILE, NAMES, &[], load) {
        panic!(
            "packaging/backoffice/backoffice.toml is out of step with the back office's settings:\n  {}",
            problems.join("\n  ")
        );
    }
}
