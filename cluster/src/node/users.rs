//! User profiles: what is stored for a user, and password hashing (argon2id).
//!
//! A profile is stored as an engine profile record on the user's shard. Body format, version 1:
//! `porcupine-profile 1\n` then `password <PHC string>\n`. Unknown lines are ignored, so fields
//! can be added without a version bump; a different first line is refused.

use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::Argon2;

const HEADER: &str = "porcupine-profile 1\n";

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

/// The stored profile of a user with this password hash.
pub fn encode_profile(password_phc: &str) -> Vec<u8> {
    format!("{HEADER}password {password_phc}\n").into_bytes()
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
    fn profile_round_trip_and_password_check() {
        let phc = hash_password("secret").unwrap();
        let profile = encode_profile(&phc);
        let stored = password_of(&profile).unwrap();
        assert!(verify_password(&stored, "secret"));
        assert!(!verify_password(&stored, "Secret"));
        assert_eq!(password_of(b"something else"), None);
    }
}
