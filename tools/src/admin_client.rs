//! How the CLI reaches a node's admin endpoint: where it finds the admin token and the CA to
//! trust. The client itself is the node crate's [`AdminClient`], the one every caller uses.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
pub use porcupine_cluster::admin_client::{AdminClient, AdminError, Response};

/// The environment variable that may hold the admin token.
pub const TOKEN_ENV: &str = "PORCUPINE_ADMIN_TOKEN";

/// A client of the endpoint at `addr` with the token from `token_file`, else from
/// `$PORCUPINE_ADMIN_TOKEN`, else from `<data>/admin.token` (the node's first data directory);
/// over HTTPS trusting `ca` when given (an endpoint started with --admin-public).
pub fn connect(
    addr: SocketAddr,
    token_file: Option<&Path>,
    data: &Path,
    ca: Option<&Path>,
) -> Result<AdminClient> {
    let token = match (token_file, std::env::var(TOKEN_ENV)) {
        (Some(file), _) => read_token(file)?,
        (None, Ok(token)) if !token.trim().is_empty() => token.trim().to_owned(),
        _ => {
            let path: PathBuf = data.join("admin.token");
            read_token(&path).with_context(|| {
                format!(
                    "no admin token: give --admin-token-file FILE, set {TOKEN_ENV}, or \
                     --data DIR (the node's data directory, which holds admin.token)"
                )
            })?
        }
    };
    let client = AdminClient::new(addr).with_token(&token);
    Ok(match ca {
        Some(ca) => client.with_tls(porcupine_cluster::admin_client::trusting(ca)?),
        None => client,
    })
}

/// The first line of `path` that is neither blank nor a `#` comment.
fn read_token(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the admin token {}", path.display()))?;
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .with_context(|| format!("{} holds no admin token", path.display()))
}
