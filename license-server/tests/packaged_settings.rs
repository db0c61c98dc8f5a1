//! The settings file the Debian package installs as /etc/license-server/license-server.toml
//! lists every setting of `license-server serve`, and each value shown is valid and is the
//! default unless its comment says there is none (`packaging::settings_file::check`).

use std::io::Write;

use license_server::settings::{NAMES, Settings};

const FILE: &str = include_str!("../../packaging/license-server/license-server.toml");

/// The settings without a default, so that the file's lines can be loaded one at a time.
const REQUIRED: &[(&str, &str)] = &[
    ("HOSTID", "\"string:packaged-settings-test\""),
    ("BACKOFFICE_URL", "\"http://127.0.0.1:9\""),
    ("BACKOFFICE_TOKEN", "\"device-token\""),
    ("BACKOFFICE_PUBLIC_KEY", "\"backoffice.pub.pem\""),
];

/// Loads `toml` with the server's own loader; the fingerprint shows the secrets too.
fn load(toml: &str) -> Result<String, String> {
    let mut file = tempfile::NamedTempFile::new().map_err(|e| e.to_string())?;
    file.write_all(toml.as_bytes()).map_err(|e| e.to_string())?;
    let s = Settings::load(Some(file.path())).map_err(|e| format!("{e:#}"))?;
    Ok(format!(
        "{s:?} {} {:?} {}",
        s.backoffice_token.expose(),
        s.admin_token.as_ref().map(|t| t.expose()),
        s.pair_token.expose()
    ))
}

#[test]
fn packaged_settings_file_lists_every_setting_with_its_default() {
    if let Err(problems) = packaging::settings_file::check(FILE, NAMES, REQUIRED, load) {
        panic!(
            "packaging/license-server/license-server.toml is out of step with the server's settings:\n  {}",
            problems.join("\n  ")
        );
    }
}
