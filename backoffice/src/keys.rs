//! The signing key: loaded, or generated on first start (0600), with its public half written
//! beside it (`*.pub.pem`, readable by all: it is what license servers verify with).

use std::path::Path;

use anyhow::Context;
use shared::signing::{Signer, generate_keypair, public_pem_of};

use crate::files;

/// Loads the key at `path` (making it 0600 if it was more open), or creates it.
pub fn load_or_create(path: &Path) -> anyhow::Result<(Signer, String)> {
    let private = if path.exists() {
        files::restrict_if_present(path, 0o600)
            .with_context(|| format!("cannot restrict SIGNING_KEY {}", path.display()))?;
        std::fs::read_to_string(path)
            .with_context(|| format!("cannot read SIGNING_KEY {}", path.display()))?
    } else {
        let (private, _) = generate_keypair();
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).with_context(|| {
                format!(
                    "cannot create the directory of SIGNING_KEY {}",
                    path.display()
                )
            })?;
        }
        files::write_private(path, private.as_bytes())
            .with_context(|| format!("cannot create SIGNING_KEY {}", path.display()))?;
        tracing::info!(path = %path.display(), "generated a new signing key");
        private
    };
    let public = public_pem_of(&private).with_context(|| {
        format!(
            "SIGNING_KEY {} is not an Ed25519 private key in PKCS#8 PEM",
            path.display()
        )
    })?;
    let pub_path = path.with_extension("pub.pem");
    if std::fs::read_to_string(&pub_path).ok().as_deref() != Some(public.as_str()) {
        std::fs::write(&pub_path, &public)
            .with_context(|| format!("cannot write {}", pub_path.display()))?;
    }
    Ok((Signer::from_pem(&private)?, public))
}
