//! Mail addresses as SMTP carries them: parsing any text must not panic, and what parses has
//! a canonical form that parses to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use porcupine_protocols::address::Mailbox;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(mailbox) = Mailbox::parse(text) {
        let canonical = mailbox.canonical();
        let again = Mailbox::parse(&canonical).expect("a canonical address parses");
        assert_eq!(again.canonical(), canonical);
    }
});
