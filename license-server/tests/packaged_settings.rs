//! The settings file the Debian package installs as /etc/license-server/license-server.toml
//! lists every setting of `license-server serve`, and each value shown is valid and is the
//! default unless its comment says there is none (`packaging::settings_file::check`).

use std::io::Write;
use std::path::Path;

use license_server::settings::{NAMES, Settings};
use tests::tls;

const FILE: &str = include_str!("../../packaging/license-server/license-server.toml");

/// The settings without a default, so that the file's lines can be loaded one at a time.
const REQUIRED: &[(&str, &str)] = &[
    ("HOSTID", "\"string:packaged-settings-test\""),
    ("BACKOFFICE_URL", "\"http://127.0.0.1:9\""),
    ("BACKOFFICE_TOKEN", "\"device-token\""),
    ("BACKOFFICE_PUBLIC_KEY", "\"backoffice.pub.pem\""),
];

/// Where the file's examples put files of their own (certificates, a CA bundle).
const EXAMPLE_DIR: &str = "/etc/license-server/";

/// Real PEM files at the examples' paths, under `root` instead of /etc/license-server.
fn stage_example_files(root: &Path) {
    let ca = tls::TestCa::new(&root.join("ca-dir"), "example");
    std::fs::copy(&ca.cert, root.join("ca.pem")).unwrap();
    let leaf = ca.issue("example");
    std::fs::create_dir_all(root.join("tls")).unwrap();
    std::fs::copy(&leaf.cert, root.join("tls/cert.pem")).unwrap();
    std::fs::copy(&leaf.key, root.join("tls/key.pem")).unwrap();
}

/// Loads `toml` with the server's own loader, the examples' files read from `root`; the
/// fingerprint shows the secrets too.
fn load(root: &Path, toml: &str) -> Result<String, String> {
    let mut toml = toml.to_owned();
    // The certificate and its key go together, and so do a cluster's members, their URLs
    // and the members' and operators' secrets, the mail server, its sender and its
    // recipients: a line naming one is loaded with the file's example of
    // the other.
    for (one, other) in [
        ("TLS_CERT", "TLS_KEY"),
        ("TLS_KEY", "TLS_CERT"),
        ("CLUSTER_MEMBER_HOSTIDS", "CLUSTER_MEMBER_URIS"),
        ("CLUSTER_MEMBER_URIS", "CLUSTER_MEMBER_HOSTIDS"),
        ("CLUSTER_MEMBER_HOSTIDS", "PAIR_TOKEN"),
        ("CLUSTER_MEMBER_URIS", "PAIR_TOKEN"),
        ("CLUSTER_MEMBER_HOSTIDS", "ADMIN_TOKEN"),
        ("CLUSTER_MEMBER_URIS", "ADMIN_TOKEN"),
        ("MAIL_SMTP_CA", "MAIL_SMTP_HOST"),
        ("MAIL_FROM", "MAIL_SMTP_HOST"),
        ("MAIL_TO", "MAIL_SMTP_HOST"),
        ("MAIL_SMTP_HOST", "MAIL_FROM"),
        ("MAIL_SMTP_HOST", "MAIL_TO"),
    ] {
        if toml.contains(&format!("{one} =")) && !toml.contains(&format!("{other} =")) {
            let example = FILE
                .lines()
                .find_map(|l| {
                    l.strip_prefix('#')
                        .filter(|l| l.starts_with(&format!("{other} =")))
                })
                .expect("the file has an example of each setting of the pair");
            toml.push_str(&format!("\n{example}\n"));
        }
    }
    let toml = toml.replace(EXAMPLE_DIR, &format!("{}/", root.display()));
    let mut file = tempfile::NamedTempFile::new().map_err(|e| e.to_string())?;
    file.write_all(toml.as_bytes()).map_err(|e| e.to_string())?;
    let s = Settings::load(Some(file.path())).map_err(|e| format!("{e:#}"))?;
    Ok(format!(
        "{s:?} {} {:?} {:?} {:?}",
        s.backoffice_token.expose(),
        s.admin_token.as_ref().map(|t| t.expose()),
        s.admin_readonly_token.as_ref().map(|t| t.expose()),
        s.pair_token.as_ref().map(|t| t.expose())
    ))
}

#[test]
fn packaged_settings_file_lists_every_setting_with_its_default() {
    let root = tempfile::tempdir().unwrap();
    stage_example_files(root.path());
    let load = |toml: &str| load(root.path(), toml);
    if let Err(problems) = packaging::settings_file::check(FILE, NAMES, REQUIRED, load) {
        panic!(
            "packaging/license-server/license-server.toml is out of step with the server's settings:\n  {}",
            problems.join("\n  ")
        );
    }
}
