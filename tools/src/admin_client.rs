//! A minimal HTTP/1.1 client for the node's admin endpoint (loopback; one request per
//! connection), so the CLI needs no HTTP stack.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// Sends a request; returns (status, body).
pub fn request(
    admin: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&admin, Duration::from_secs(5))
        .with_context(|| format!("cannot reach the node's admin endpoint at {admin} (is `porcupine serve` running? see --admin)"))?;
    stream.set_read_timeout(Some(timeout))?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {admin}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .context("reading the admin endpoint's answer")?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("malformed answer from the admin endpoint");
    };
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("malformed status line from the admin endpoint")?;
    Ok((status, body.to_owned()))
}
