//! A minimal signing back office for development and benchmarks: answers every
//! `POST /api/v1/capability` with the rights given on the command line, signed with a
//! fresh Ed25519 key whose public half it writes to `--out-dir/backoffice.pub.pem`.
//! It does no pairing and no accounting; use the real `backoffice` for that. It is the
//! test kit's fake back office (`tests::fake_backoffice`), behaving.
//!
//! ```text
//! cargo run --release -p license-server --example dev_backoffice -- \
//!     --listen 127.0.0.1:8080 --out-dir /tmp/bo --rights bench:1000 --token dev-token
//! ```

use shared::capability::Right;
use tests::fake_backoffice::FakeBackoffice;

#[tokio::main]
async fn main() {
    let mut listen = "127.0.0.1:8080".to_owned();
    let mut out_dir = std::path::PathBuf::from(".");
    let mut rights = "bench:1000".to_owned();
    let mut token = "dev-token".to_owned();
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().unwrap_or_default();
        match flag.as_str() {
            "--listen" => listen = v,
            "--out-dir" => out_dir = v.into(),
            "--rights" => rights = v,
            "--token" => token = v,
            _ => {
                eprintln!(
                    "usage: dev_backoffice [--listen ADDR] [--out-dir DIR] [--rights FEATURE:COUNT,...] [--token TOKEN]"
                );
                std::process::exit(2);
            }
        }
    }
    let rights: Vec<Right> = rights
        .split(',')
        .filter_map(|item| {
            let (f, c) = item.trim().split_once(':')?;
            Some(Right {
                activation_id: format!("DEV-{f}"),
                feature: f.to_owned(),
                version: String::new(),
                count: c.parse().ok()?,
                starts_at: 0,
                expires_at: None,
                max_borrow_secs: None,
                overdraft: 0,
            })
        })
        .collect();
    let dir = out_dir.clone();
    let bo = FakeBackoffice::serve(&listen, &dir, rights, &token, 60, None).unwrap_or_else(|e| {
        eprintln!("dev_backoffice: {e}");
        std::process::exit(1)
    });
    eprintln!(
        "dev back office on {}; public key in {}",
        bo.url,
        bo.public_key.display()
    );
    std::future::pending::<()>().await;
}
