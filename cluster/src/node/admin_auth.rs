//! Who may use the admin endpoint: a request must name this node in its `Host` header (so a
//! web page cannot reach the endpoint through a DNS name rebound to loopback) and, for every
//! path but `GET /metrics`, present the admin token as `Authorization: Bearer <token>`.
//!
//! The token lives in a file, `<first data dir>/admin.token` unless `--admin-token-file` names
//! another (several nodes may share one): 64 hexadecimal digits, mode 0600, created at the
//! node's first start. A file readable by group or others is refused, as the cluster key is.

use std::io;
use std::net::SocketAddr;
use std::path::Path;

/// The admin endpoint's secret.
#[derive(Clone)]
pub struct AdminToken(String);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(<secret>)")
    }
}

/// Why a request was turned away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// 401: no token, or the wrong one.
    Unauthorized,
    /// 421: a `Host` this node is not (or none).
    StrangeHost,
}

impl AdminToken {
    /// A token from its text (the file's first non-comment line).
    pub fn parse(text: &str) -> Option<AdminToken> {
        let token = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))?;
        (token.len() >= 32 && token.bytes().all(|b| b.is_ascii_graphic()))
            .then(|| AdminToken(token.to_owned()))
    }

    /// Reads the token at `path`, creating it (mode 0600) if there is none yet.
    pub fn load_or_create(path: &Path) -> io::Result<AdminToken> {
        use std::io::Write;
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        match std::fs::metadata(path) {
            Ok(meta) => {
                let mode = meta.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        format!(
                            "the admin token {} can be read by others (mode {mode:o}): chmod 600 {0}",
                            path.display()
                        ),
                    ));
                }
                let text = std::fs::read_to_string(path)?;
                AdminToken::parse(&text).ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{} does not hold an admin token", path.display()),
                    )
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let mut bytes = [0u8; 32];
                rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
                let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)?;
                file.write_all(format!("{token}\n").as_bytes())?;
                file.sync_all()?;
                Ok(AdminToken(token))
            }
            Err(e) => Err(e),
        }
    }

    /// Whether `presented` is the token, in time that does not depend on where they differ.
    pub fn matches(&self, presented: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), presented.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
    }
}

/// The `Host` values that name this node's admin endpoint at `admin`.
pub fn own_hosts(admin: SocketAddr, hostname: &str) -> Vec<String> {
    let port = admin.port();
    let mut hosts = vec![
        admin.to_string(),
        format!("localhost:{port}"),
        format!("{hostname}:{port}"),
    ];
    if admin.ip().is_unspecified() || admin.ip().is_loopback() {
        hosts.push(format!("127.0.0.1:{port}"));
        hosts.push(format!("[::1]:{port}"));
    }
    hosts
}

/// Checks a request: its `Host` must be one of `hosts`; every path but `GET /metrics` needs
/// the token in `authorization`.
pub fn check(
    method: &str,
    path: &str,
    host: Option<&str>,
    authorization: Option<&str>,
    hosts: &[String],
    token: &AdminToken,
) -> Result<(), Refusal> {
    let host = host.map(str::trim).unwrap_or("");
    if !hosts.iter().any(|h| h.eq_ignore_ascii_case(host)) {
        return Err(Refusal::StrangeHost);
    }
    if method == "GET" && path == "/metrics" {
        return Ok(());
    }
    let presented = authorization
        .map(str::trim)
        .and_then(|value| {
            let (scheme, credentials) = value.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| credentials.trim())
        })
        .unwrap_or("");
    if token.matches(presented) {
        Ok(())
    } else {
        Err(Refusal::Unauthorized)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_made_once_kept_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.token");
        let made = AdminToken::load_or_create(&path).unwrap();
        let again = AdminToken::load_or_create(&path).unwrap();
        assert!(made.matches(&again.0));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let error = AdminToken::load_or_create(&path).unwrap_err().to_string();
        assert!(error.contains("chmod 600"), "{error}");
        assert!(format!("{made:?}").contains("secret"));
    }

    #[test]
    fn requests_need_this_nodes_host_and_the_token_except_metrics() {
        let token = AdminToken::parse(&"ab".repeat(32)).unwrap();
        let hosts = own_hosts("127.0.0.1:8025".parse().unwrap(), "mail.example.org");
        let bearer = format!("Bearer {}", "ab".repeat(32));
        let ok = |method, path, host, auth| check(method, path, host, auth, &hosts, &token);
        assert_eq!(
            ok(
                "GET",
                "/status",
                Some("127.0.0.1:8025"),
                Some(bearer.as_str())
            ),
            Ok(())
        );
        assert_eq!(
            ok(
                "GET",
                "/status",
                Some("localhost:8025"),
                Some("bearer  abababababababababababababababababababababababababababababababab")
            ),
            Ok(())
        );
        assert_eq!(ok("GET", "/metrics", Some("127.0.0.1:8025"), None), Ok(()));
        assert_eq!(
            ok("GET", "/status", Some("127.0.0.1:8025"), None),
            Err(Refusal::Unauthorized)
        );
        assert_eq!(
            ok(
                "POST",
                "/users",
                Some("127.0.0.1:8025"),
                Some("Bearer wrong")
            ),
            Err(Refusal::Unauthorized)
        );
        assert_eq!(
            ok("POST", "/metrics", Some("127.0.0.1:8025"), None),
            Err(Refusal::Unauthorized)
        );
        // A page on evil.example whose name now points at 127.0.0.1.
        assert_eq!(
            ok(
                "GET",
                "/metrics",
                Some("evil.example:8025"),
                Some(bearer.as_str())
            ),
            Err(Refusal::StrangeHost)
        );
        assert_eq!(ok("GET", "/metrics", None, None), Err(Refusal::StrangeHost));
        assert!(AdminToken::parse("short").is_none());
    }
}
