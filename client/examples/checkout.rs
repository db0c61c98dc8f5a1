//! Checks a license out, lets the library renew it in the background, verifies the grant
//! with the producer's key once more (as another process would), and returns it.
//!
//! ```text
//! cargo run -p licensing-client --example checkout -- \
//!     http://127.0.0.1:7070,http://127.0.0.1:7071 signing-key.pub.pem cad
//! ```

use std::time::Duration;

use licensing_client::{Client, Expected, Verifier, now_unix, verify_grant};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [servers, key_path, feature] = args.as_slice() else {
        eprintln!("usage: checkout SERVERS PRODUCER_KEY_PEM FEATURE");
        std::process::exit(2);
    };

    // The producer's public key ships with the application: no grant is accepted without
    // a valid signature chain to it.
    let producer = Verifier::from_public_pem(&std::fs::read_to_string(key_path)?)?;
    let client = Client::with_servers(servers.split(','), producer.clone())?;

    // Check out: the grant is verified before the lease is handed over.
    let guard = client.checkout(feature, 1).await?;
    let first = guard.lease();
    println!(
        "checked out {feature}: lease {} until {}",
        first.lease_id, first.expires_at
    );

    // The work runs while the guard renews the lease in the background.
    let deadline = tokio::time::Instant::now()
        + Duration::from_secs(u64::try_from(first.expires_at - now_unix()).unwrap_or(0) + 5);
    let renewed = loop {
        let now = guard.lease();
        if now.expires_at > first.expires_at {
            break now;
        }
        if tokio::time::Instant::now() > deadline {
            let why = guard.last_error().map(|e| e.to_string());
            return Err(format!("the lease was not renewed: {why:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!("renewed in the background: until {}", renewed.expires_at);

    // Any holder of the lease can check its grant offline, with the same key.
    let verified = verify_grant(
        &producer,
        &renewed.grant,
        &renewed.binding,
        &Expected {
            client_id: &renewed.client_id,
            lease_id: Some(renewed.lease_id),
            feature,
            version: None,
            count: 1,
        },
        now_unix(),
        60,
    )?;
    println!(
        "grant verified: {} seat of {} for {}, signed by {}",
        verified.grant.count, verified.grant.feature, verified.grant.sub, verified.grant.iss
    );

    // Return it (dropping the guard would too, without waiting for the answer).
    guard.release().await?;
    println!("returned {}", renewed.lease_id);
    Ok(())
}
