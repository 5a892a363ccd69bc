//! User profiles: what is stored for a user, and password hashing (argon2id; SCRAM keys).
//!
//! A profile is stored as an engine profile record on the user's shard. Body format, version 1:
//!
//! | line                                   | meaning                                        |
//! |----------------------------------------|------------------------------------------------|
//! | `porcupine-profile 1`                  | the format and its version                     |
//! | `password <PHC string>`                | the argon2id hash (USER/PASS, SASL PLAIN)      |
//! | `scram-sha-256 <i> <salt> <stored> <server>` | SCRAM-SHA-256 credentials, base64 (since wave 2; older profiles lack it, and those users log in by password until it next changes) |
//! | `not-before <hlc>`                     | the address was deleted at this HLC and added again: mail stored up to then was the earlier user's ([`super::removed_users`]) |
//!
//! An empty profile is a deleted user's ([`super::user_removal`]).
//!
//! Unknown lines are ignored, so fields can be added without a version bump (the SCRAM line
//! was); a different first line is refused.

use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::Argon2;

use porcupine_protocols::sasl::{ScramCredentials, SCRAM_ITERATIONS};

const HEADER: &str = "porcupine-profile 1\n";
const SCRAM_FIELD: &str = "scram-sha-256 ";
const NOT_BEFORE_FIELD: &str = "not-before ";

/// What is stored to check a user's password: the argon2 hash and the SCRAM keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Secrets {
    pub phc: String,
    pub scram: ScramCredentials,
}

/// Both secrets for `password`, each with a fresh salt (slow on purpose: tens of ms).
pub fn make_secrets(password: &str) -> Result<Secrets, String> {
    let phc = hash_password(password)?;
    let mut salt = [0u8; 16];
    rand::RngCore::fill_bytes(&mut OsRng, &mut salt);
    let scram = ScramCredentials::derive(password, &salt, SCRAM_ITERATIONS);
    Ok(Secrets { phc, scram })
}

/// [`make_secrets`] on glommio's blocking threads: hashing takes tens of milliseconds, which a
/// serving core must not spend.
pub async fn secrets_off_core(password: &str) -> Result<Secrets, String> {
    let password = password.to_owned();
    glommio::executor()
        .spawn_blocking(move || make_secrets(&password))
        .await
}

/// Hashes a password with argon2id and a fresh salt (slow on purpose: tens of milliseconds).
pub fn hash_password(password: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| format!("cannot hash password: {e}"))
}

pub fn verify_password(phc: &str, password: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(hash) => Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .is_ok(),
        Err(_) => false,
    }
}

/// The stored profile of a user with these secrets.
pub fn encode_profile(secrets: &Secrets) -> Vec<u8> {
    encode_profile_after(secrets, None)
}

/// The stored profile of a user with these secrets whose address was deleted at HLC
/// `not_before` (if it was) before this user had it.
pub fn encode_profile_after(secrets: &Secrets, not_before: Option<u64>) -> Vec<u8> {
    let mut text = format!(
        "{HEADER}password {}\n{SCRAM_FIELD}{}\n",
        secrets.phc,
        secrets.scram.to_text()
    );
    if let Some(hlc) = not_before {
        text.push_str(&format!("{NOT_BEFORE_FIELD}{hlc}\n"));
    }
    text.into_bytes()
}

/// A profile made once for many users (bulk creation) for one of them: with their address's
/// `not-before`, if it was deleted before.
pub fn with_not_before(shared: &[u8], not_before: Option<u64>) -> Vec<u8> {
    let mut profile = shared.to_vec();
    if let Some(hlc) = not_before {
        profile.extend_from_slice(format!("{NOT_BEFORE_FIELD}{hlc}\n").as_bytes());
    }
    profile
}

/// When the address was last deleted before this user had it (an HLC), if it was.
pub fn not_before_of(profile: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(profile).ok()?;
    let rest = text.strip_prefix(HEADER)?;
    rest.lines()
        .find_map(|l| l.strip_prefix(NOT_BEFORE_FIELD))
        .and_then(|hlc| hlc.trim().parse().ok())
}

/// The SCRAM-SHA-256 credentials in a stored profile, if it has them.
pub fn scram_of(profile: &[u8]) -> Option<ScramCredentials> {
    let text = std::str::from_utf8(profile).ok()?;
    let rest = text.strip_prefix(HEADER)?;
    rest.lines()
        .find_map(|l| l.strip_prefix(SCRAM_FIELD))
        .and_then(ScramCredentials::from_text)
}

/// The password hash in a stored profile.
pub fn password_of(profile: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(profile).ok()?;
    let rest = text.strip_prefix(HEADER)?;
    rest.lines()
        .find_map(|l| l.strip_prefix("password "))
        .map(str::to_owned)
}

/// Checks that an address can be a user name: `local@domain`, printable, no spaces.
pub fn valid_user(address: &str) -> bool {
    porcupine_protocols::address::Mailbox::parse(address).is_ok() && address.len() <= 254
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_added_again_keeps_when_it_was_deleted() {
        let secrets = make_secrets("pw").unwrap();
        let profile = encode_profile_after(&secrets, Some(1234));
        assert_eq!(not_before_of(&profile), Some(1234));
        let shared = encode_profile(&secrets);
        assert_eq!(not_before_of(&with_not_before(&shared, Some(99))), Some(99));
        assert_eq!(with_not_before(&shared, None), shared);
        assert!(password_of(&profile).is_some());
        assert_eq!(not_before_of(&encode_profile(&secrets)), None);
        assert_eq!(not_before_of(b""), None);
    }

    #[test]
    fn profile_round_trip_and_password_check() {
        let secrets = make_secrets("secret").unwrap();
        let profile = encode_profile(&secrets);
        let stored = password_of(&profile).unwrap();
        assert!(verify_password(&stored, "secret"));
        assert!(!verify_password(&stored, "Secret"));
        assert_eq!(scram_of(&profile), Some(secrets.scram));
        assert_eq!(password_of(b"something else"), None);
    }

    /// A profile written before SCRAM keys were stored: its password still works, it has no
    /// SCRAM credentials, and nothing about it is refused.
    #[test]
    fn a_profile_of_the_first_format_still_reads() {
        let phc = hash_password("old").unwrap();
        let profile = format!("porcupine-profile 1\npassword {phc}\n").into_bytes();
        assert!(verify_password(&password_of(&profile).unwrap(), "old"));
        assert_eq!(scram_of(&profile), None);
    }
}
