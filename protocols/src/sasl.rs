//! SASL for the sessions, sans-IO: PLAIN (RFC 4616) and the server side of SCRAM-SHA-256
//! (RFC 5802, RFC 7677), and the base64 their exchanges travel in.
//!
//! SCRAM never sends the password: the client proves it knows it against what the server
//! stores (salt, iteration count, StoredKey, ServerKey), and the server proves it holds them
//! too. Randomness (the server nonce) comes from the caller. Passwords are used as their UTF-8
//! bytes, without SASLprep: a password of plain ASCII, as most are, is the same either way.

use ring::{digest, hmac, pbkdf2};

/// Mechanism names as the capability lists give them.
pub const PLAIN: &str = "PLAIN";
pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";
/// Iterations for new SCRAM credentials (RFC 7677 asks for at least 4096).
pub const SCRAM_ITERATIONS: u32 = 4096;
/// Iterations accepted in stored credentials (a bound on the work one login costs).
const SCRAM_ITERATIONS_MAX: u32 = 1 << 20;

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

pub fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(BASE64[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Strict base64 (padding required, no whitespace inside); `None` if it is not.
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let text = text.as_bytes();
    if text.len() % 4 != 0 {
        return None;
    }
    let value = |c: u8| BASE64.iter().position(|&b| b == c).map(|v| v as u32);
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    for (i, quad) in text.chunks(4).enumerate() {
        let last = i == text.len() / 4 - 1;
        let pad = quad.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut n = 0u32;
        for &c in &quad[..4 - pad] {
            n = (n << 6) | value(c)?;
        }
        n <<= 6 * pad as u32;
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    Some(out)
}

/// A PLAIN response: (authorization identity, user, password). An authorization identity
/// other than the user itself is refused by the caller (nobody may act as someone else).
pub fn parse_plain(response: &[u8]) -> Option<(String, String, String)> {
    let mut parts = response.split(|&b| b == 0);
    let authzid = std::str::from_utf8(parts.next()?).ok()?;
    let authcid = std::str::from_utf8(parts.next()?).ok()?;
    let password = std::str::from_utf8(parts.next()?).ok()?;
    if parts.next().is_some() || authcid.is_empty() {
        return None;
    }
    Some((authzid.to_owned(), authcid.to_owned(), password.to_owned()))
}

/// What the server stores to check a SCRAM-SHA-256 login.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScramCredentials {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    let mut out = [0u8; 32];
    out.copy_from_slice(hmac::sign(&key, data).as_ref());
    out
}

/// Equal keys, compared in time that does not depend on where they differ.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, data).as_ref());
    out
}

impl ScramCredentials {
    /// Credentials for `password` with this `salt` (16 random bytes from the caller).
    pub fn derive(password: &str, salt: &[u8], iterations: u32) -> ScramCredentials {
        let mut salted = [0u8; 32];
        let rounds =
            std::num::NonZeroU32::new(iterations.max(1)).unwrap_or(std::num::NonZeroU32::MIN);
        pbkdf2::derive(
            pbkdf2::PBKDF2_HMAC_SHA256,
            rounds,
            salt,
            password.as_bytes(),
            &mut salted,
        );
        let client_key = hmac_sha256(&salted, b"Client Key");
        ScramCredentials {
            iterations,
            salt: salt.to_vec(),
            stored_key: sha256(&client_key),
            server_key: hmac_sha256(&salted, b"Server Key"),
        }
    }

    /// `ITERATIONS SALT STOREDKEY SERVERKEY` (base64), as a profile stores them.
    pub fn to_text(&self) -> String {
        format!(
            "{} {} {} {}",
            self.iterations,
            base64_encode(&self.salt),
            base64_encode(&self.stored_key),
            base64_encode(&self.server_key)
        )
    }

    pub fn from_text(text: &str) -> Option<ScramCredentials> {
        let mut fields = text.split_whitespace();
        let iterations: u32 = fields.next()?.parse().ok()?;
        if iterations == 0 || iterations > SCRAM_ITERATIONS_MAX {
            return None;
        }
        let salt = base64_decode(fields.next()?)?;
        let stored_key = base64_decode(fields.next()?)?.try_into().ok()?;
        let server_key = base64_decode(fields.next()?)?.try_into().ok()?;
        Some(ScramCredentials {
            iterations,
            salt,
            stored_key,
            server_key,
        })
    }
}

/// Why a SCRAM exchange failed (the client is told only that it did).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScramError {
    Malformed,
    /// Channel binding was asked for; these sessions offer none.
    ChannelBinding,
    /// The proof does not match: wrong password, unknown user, or a forged message.
    Refused,
}

/// The server side of one SCRAM-SHA-256 exchange after its client-first message.
#[derive(Debug)]
pub struct ScramServer {
    user: String,
    gs2_header: String,
    client_first_bare: String,
    nonce: String,
    server_first: String,
}

/// Decodes a SCRAM `saslname` (`=2C` is a comma, `=3D` an equals sign).
fn saslname(text: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('=') {
        out.push_str(&rest[..at]);
        match rest.get(at + 1..at + 3)? {
            "2C" => out.push(','),
            "3D" => out.push('='),
            _ => return None,
        }
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    (!out.is_empty()).then_some(out)
}

impl ScramServer {
    /// Reads the client-first message; the user it names.
    pub fn start(client_first: &str) -> Result<(ScramServer, String), ScramError> {
        // gs2-header: "n,," (no binding), "y,," (client could but thinks we cannot), or
        // "p=..." (wants binding, which is refused), optionally with "a=authzid".
        let mut parts = client_first.splitn(3, ',');
        let binding = parts.next().ok_or(ScramError::Malformed)?;
        let authzid = parts.next().ok_or(ScramError::Malformed)?;
        let bare = parts.next().ok_or(ScramError::Malformed)?;
        match binding {
            "n" | "y" => {}
            b if b.starts_with("p=") => return Err(ScramError::ChannelBinding),
            _ => return Err(ScramError::Malformed),
        }
        let mut fields = bare.split(',');
        let user = fields
            .next()
            .and_then(|f| f.strip_prefix("n="))
            .and_then(saslname)
            .ok_or(ScramError::Malformed)?;
        let client_nonce = fields
            .next()
            .and_then(|f| f.strip_prefix("r="))
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_graphic() && b != b','))
            .ok_or(ScramError::Malformed)?;
        if !authzid.is_empty() {
            let acting_as = authzid
                .strip_prefix("a=")
                .and_then(saslname)
                .ok_or(ScramError::Malformed)?;
            if acting_as != user {
                return Err(ScramError::Refused);
            }
        }
        Ok((
            ScramServer {
                gs2_header: format!("{binding},{authzid},"),
                client_first_bare: bare.to_owned(),
                nonce: client_nonce.to_owned(),
                user: user.clone(),
                server_first: String::new(),
            },
            user,
        ))
    }

    /// The server-first message, for the stored `credentials` (for an unknown user the
    /// caller passes made-up ones, so the exchange looks the same and fails at the proof).
    /// `server_nonce`: random bytes from the caller.
    pub fn challenge(&mut self, credentials: &ScramCredentials, server_nonce: &[u8]) -> String {
        self.nonce.push_str(&base64_encode(server_nonce));
        self.server_first = format!(
            "r={},s={},i={}",
            self.nonce,
            base64_encode(&credentials.salt),
            credentials.iterations
        );
        self.server_first.clone()
    }

    /// Checks the client-final message; the server-final message (`v=…`) if the proof holds.
    pub fn finish(
        &self,
        client_final: &str,
        credentials: &ScramCredentials,
    ) -> Result<String, ScramError> {
        let (without_proof, proof) = client_final
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed)?;
        let mut fields = without_proof.split(',');
        let binding = fields
            .next()
            .and_then(|f| f.strip_prefix("c="))
            .and_then(base64_decode)
            .ok_or(ScramError::Malformed)?;
        let nonce = fields
            .next()
            .and_then(|f| f.strip_prefix("r="))
            .ok_or(ScramError::Malformed)?;
        if binding != self.gs2_header.as_bytes() || nonce != self.nonce {
            return Err(ScramError::Refused);
        }
        let proof: [u8; 32] = base64_decode(proof)
            .and_then(|p| p.try_into().ok())
            .ok_or(ScramError::Malformed)?;
        let auth_message = format!(
            "{},{},{without_proof}",
            self.client_first_bare, self.server_first
        );
        let signature = hmac_sha256(&credentials.stored_key, auth_message.as_bytes());
        let mut client_key = [0u8; 32];
        for (i, byte) in client_key.iter_mut().enumerate() {
            *byte = proof[i] ^ signature[i];
        }
        let stored = sha256(&client_key);
        if !same(&stored, &credentials.stored_key) {
            return Err(ScramError::Refused);
        }
        let server_signature = hmac_sha256(&credentials.server_key, auth_message.as_bytes());
        Ok(format!("v={}", base64_encode(&server_signature)))
    }

    pub fn user(&self) -> &str {
        &self.user
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_and_refuses_what_is_not() {
        for bytes in [&b""[..], b"f", b"fo", b"foo", b"foob", b"\0\xff\x10"] {
            assert_eq!(base64_decode(&base64_encode(bytes)).as_deref(), Some(bytes));
        }
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        for bad in ["Zm9", "Zm9v YmFy", "Z===", "Zg==Zg==", "Zm9*"] {
            assert_eq!(base64_decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn plain_names_the_user_and_the_password() {
        assert_eq!(
            parse_plain(b"\0alice\0secret"),
            Some(("".into(), "alice".into(), "secret".into()))
        );
        assert_eq!(parse_plain(b"alice"), None);
        assert_eq!(parse_plain(b"\0\0secret"), None);
        assert_eq!(parse_plain(b"a\0b\0c\0d"), None);
    }

    /// The exchange of RFC 7677, section 3 (user "user", password "pencil").
    #[test]
    fn the_rfc_7677_example_exchange_succeeds() {
        let salt = base64_decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let credentials = ScramCredentials::derive("pencil", &salt, 4096);
        let (mut server, user) = ScramServer::start("n,,n=user,r=rOprNGfwEbeRWgbNEkqO").unwrap();
        assert_eq!(user, "user");
        // The RFC's server nonce is not the base64 of anything: set it as it is, to replay
        // the example exactly.
        server.nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0".into();
        server.server_first = format!("r={},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", server.nonce);
        let final_message = server
            .finish(
                "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
                &credentials,
            )
            .unwrap();
        assert_eq!(
            final_message,
            "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
        // The same proof with another password's credentials fails.
        let other = ScramCredentials::derive("pencils", &salt, 4096);
        assert_eq!(
            server.finish(
                "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
                &other
            ),
            Err(ScramError::Refused)
        );
    }

    #[test]
    fn stored_credentials_round_trip_and_odd_messages_are_refused() {
        let credentials = ScramCredentials::derive("pw", b"0123456789abcdef", 4096);
        assert_eq!(
            ScramCredentials::from_text(&credentials.to_text()),
            Some(credentials.clone())
        );
        assert_eq!(ScramCredentials::from_text("0 AA== AA== AA=="), None);
        assert!(matches!(
            ScramServer::start("p=tls-unique,,n=u,r=abc"),
            Err(ScramError::ChannelBinding)
        ));
        assert!(matches!(
            ScramServer::start("n,,r=abc"),
            Err(ScramError::Malformed)
        ));
        assert!(matches!(
            ScramServer::start("n,a=bob,n=alice,r=abc"),
            Err(ScramError::Refused)
        ));
        let (mut server, user) = ScramServer::start("n,,n=a=2Cb,r=abc").unwrap();
        assert_eq!(user, "a,b");
        server.challenge(&credentials, b"server");
        assert_eq!(
            server.finish("c=biws,r=wrong,p=AAAA", &credentials),
            Err(ScramError::Refused)
        );
        assert_eq!(
            server.finish("garbage", &credentials),
            Err(ScramError::Malformed)
        );
    }
}
