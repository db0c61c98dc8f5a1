//! A real SMTP server for the license server's mail notifications: aiosmtpd (PyPI,
//! installed by `scripts/test`), run as its own process with its `Mailbox` handler, which
//! writes each mail it takes into a maildir the test reads. It can be started on a port
//! chosen before the license server (so that it starts after it: the mail server is down
//! first, then comes back) and stopped again. It speaks plain SMTP, SMTP with STARTTLS
//! required before any mail (`--tlscert`: aiosmtpd's `require_starttls`), or TLS from the
//! first byte (`--smtpscert`: SMTPS), with a certificate the test made ([`crate::tls`]).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::process::{Process, tail};
use crate::tls::ServerCert;

/// How a mail server with a certificate speaks (one without speaks plain SMTP and offers
/// no STARTTLS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    /// STARTTLS offered and required before MAIL FROM.
    StartTls,
    /// TLS from the first byte (SMTPS).
    Tls,
}

/// An aiosmtpd process on `127.0.0.1:port`, killed when dropped.
pub struct MailServer {
    pub port: u16,
    dir: PathBuf,
    tls: Option<(SmtpTls, PathBuf, PathBuf)>,
    process: Option<Process>,
}

/// One mail as received: its headers and body, as text.
#[derive(Debug, Clone)]
pub struct Mail {
    pub text: String,
}

impl Mail {
    /// The value of header `name` (first occurrence), unfolded.
    pub fn header(&self, name: &str) -> Option<String> {
        let head = self.text.split("\n\n").next()?;
        let mut value: Option<String> = None;
        for line in head.lines() {
            if let Some(v) = value.as_mut() {
                if line.starts_with([' ', '\t']) {
                    v.push(' ');
                    v.push_str(line.trim());
                    continue;
                }
                break;
            }
            if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case(name)
            {
                value = Some(v.trim().to_owned());
            }
        }
        value
    }

    pub fn subject(&self) -> String {
        self.header("Subject").unwrap_or_default()
    }
}

impl MailServer {
    /// A mail server to be on `port`, its maildir in `dir`; not started yet.
    pub fn new(dir: PathBuf, port: u16) -> MailServer {
        MailServer {
            port,
            dir,
            tls: None,
            process: None,
        }
    }

    /// Speaks `mode` with `cert`.
    pub fn with_tls(mut self, mode: SmtpTls, cert: &ServerCert) -> MailServer {
        self.tls = Some((mode, cert.cert.clone(), cert.key.clone()));
        self
    }

    /// Starts it and waits until it takes connections.
    pub async fn start(&mut self) -> Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let maildir = self.dir.join("maildir");
        let mut cmd = Command::new("python3");
        cmd.args(["-m", "aiosmtpd", "-n", "-l"])
            .arg(format!("127.0.0.1:{}", self.port));
        match &self.tls {
            Some((SmtpTls::StartTls, cert, key)) => {
                cmd.arg("--tlscert").arg(cert).arg("--tlskey").arg(key);
            }
            Some((SmtpTls::Tls, cert, key)) => {
                cmd.arg("--smtpscert").arg(cert).arg("--smtpskey").arg(key);
            }
            None => {}
        }
        cmd.args(["-c", "aiosmtpd.handlers.Mailbox"]).arg(&maildir);
        let mut p = Process::spawn("aiosmtpd", cmd, self.dir.join("aiosmtpd.log"))?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            if p.exited().is_some() || Instant::now() > deadline {
                bail!(
                    "aiosmtpd did not start (scripts/test installs it from PyPI: pip install aiosmtpd):\n{}",
                    tail(&p.log_text(), 20)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.process = Some(p);
        Ok(())
    }

    /// Stops it (the mails it took stay readable).
    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }

    /// Every mail taken so far.
    pub fn mails(&self) -> Vec<Mail> {
        let mut out = Vec::new();
        for sub in ["new", "cur"] {
            let Ok(entries) = std::fs::read_dir(self.dir.join("maildir").join(sub)) else {
                continue;
            };
            for e in entries.flatten() {
                if let Ok(text) = std::fs::read_to_string(e.path()) {
                    out.push(Mail {
                        text: text.replace("\r\n", "\n"),
                    });
                }
            }
        }
        out
    }

    /// The mails whose subject contains `needle`.
    pub fn with_subject(&self, needle: &str) -> Vec<Mail> {
        self.mails()
            .into_iter()
            .filter(|m| m.subject().contains(needle))
            .collect()
    }
}
