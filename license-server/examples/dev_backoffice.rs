//! A minimal signing back office for development and benchmarks: answers every
//! `POST /api/v1/capability` with the rights given on the command line, signed with a
//! fresh Ed25519 key whose public half it writes to `--out-dir/backoffice.pub.pem`.
//! It does no pairing and no accounting; use the real `backoffice` for that.
//!
//! ```text
//! cargo run --release -p license-server --example dev_backoffice -- \
//!     --listen 127.0.0.1:8080 --out-dir /tmp/bo --rights bench:1000 --token dev-token
//! ```

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use shared::capability::{CapabilityClaims, CapabilityRequest, CapabilityResponse, ISSUER, Right};
use shared::signing::{Signer, generate_keypair};
use shared::{ErrorBody, ErrorCode};

struct Bo {
    signer: Signer,
    rights: Vec<Right>,
    token: String,
}

async fn capability(
    State(bo): State<Arc<Bo>>,
    headers: HeaderMap,
    Json(req): Json<CapabilityRequest>,
) -> Response {
    let ok = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bearer {}", bo.token));
    if !ok {
        return (
            StatusCode::UNAUTHORIZED,
            Json(ErrorBody::new(
                ErrorCode::Unauthorized,
                "wrong server token",
            )),
        )
            .into_response();
    }
    let now = shared::now_unix();
    let claims = CapabilityClaims {
        iss: ISSUER.into(),
        sub: req.hostid.to_string(),
        request_id: req.request_id,
        iat: now,
        exp: now + 600,
        server_id: "dev".into(),
        role: req.role,
        pair: None,
        poll_interval_secs: 60,
        rights: bo.rights.clone(),
        serve_until: now + 30 * 86_400,
        binding: None,
        pair_token: None,
    };
    Json(CapabilityResponse {
        token: bo.signer.sign(&claims),
    })
    .into_response()
}

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
            })
        })
        .collect();
    let (private, public) = generate_keypair();
    std::fs::create_dir_all(&out_dir).unwrap();
    let key_path = out_dir.join("backoffice.pub.pem");
    std::fs::write(&key_path, public).unwrap();
    let bo = Arc::new(Bo {
        signer: Signer::from_pem(&private).unwrap(),
        rights,
        token,
    });
    let app = axum::Router::new()
        .route("/api/v1/capability", axum::routing::post(capability))
        .with_state(bo);
    let listener = tokio::net::TcpListener::bind(&listen).await.unwrap();
    eprintln!(
        "dev back office on http://{}; public key in {}",
        listener.local_addr().unwrap(),
        key_path.display()
    );
    axum::serve(listener, app).await.unwrap();
}
