//! The license server's tests use the workspace's test kit (the `tests` crate): the real
//! `license-server` binary on a port of its own, the fake back office with its
//! misbehaviour modes, certificates made in the test, one `eventually`. These are the
//! names they know it by.

use std::path::Path;

pub use tests::eventually as wait_for;
pub use tests::fake_backoffice::{FakeBackoffice, FakeBackoffice as TestBackoffice, Mode, right};
pub use tests::license_server::{LicenseServer, checkout, feature, get_json, http, with};

/// Certificates made in the test.
pub mod tls {
    pub use tests::tls::TestCa;
}

/// The settings of a license server `hostid` polling `bo`.
pub fn base_env(bo: &FakeBackoffice, hostid: &str) -> Vec<(String, String)> {
    bo.server_env(hostid)
}

/// A running `license-server serve` on a port of its own (see
/// [`tests::license_server::LicenseServer`], which it derefs to).
pub struct Server(LicenseServer);

impl Server {
    /// Starts it with `DATA_DIR=data_dir` and `env` (`LISTEN` in `env` picks the port),
    /// and waits until it answers; panics with its log if it does not.
    pub async fn start(data_dir: &Path, env: Vec<(String, String)>) -> Server {
        let port = env
            .iter()
            .find(|(k, _)| k == "LISTEN")
            .and_then(|(_, v)| v.rsplit_once(':')?.1.parse().ok())
            .unwrap_or(0);
        let env: Vec<_> = env.into_iter().filter(|(k, _)| k != "LISTEN").collect();
        match LicenseServer::builder(data_dir)
            .port(port)
            .envs(&env)
            .start()
            .await
        {
            Ok(s) => Server(s),
            Err(e) => panic!("{e:#}"),
        }
    }

    /// Everything it logged.
    pub fn log(&self) -> String {
        self.0.log_text()
    }

    /// SIGTERM and its exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.0
            .terminate()
            .expect("the license server exits within 10 s of SIGTERM")
    }
}

impl std::ops::Deref for Server {
    type Target = LicenseServer;
    fn deref(&self) -> &LicenseServer {
        &self.0
    }
}

impl std::ops::DerefMut for Server {
    fn deref_mut(&mut self) -> &mut LicenseServer {
        &mut self.0
    }
}
