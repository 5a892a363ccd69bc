//! The greetings each target answered with. One server always greets the same way, so two
//! different greetings on one address mean two servers share it (another process bound the
//! same port, say): the run then measured both, and the report says so.

use std::collections::BTreeMap;
use std::net::SocketAddr;

/// Which of a target's services greeted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Service {
    Smtp,
    Pop3,
    Imap,
}

/// More distinct greetings than this per target are counted together.
const DISTINCT_MAX: usize = 16;
/// Greetings are kept up to this many characters.
const GREETING_CHARS_MAX: usize = 120;
const OTHERS: &str = "(other greetings)";

/// Distinct greetings per target, with how often each was seen.
#[derive(Clone, Debug, Default)]
pub struct Greetings {
    seen: BTreeMap<(Service, SocketAddr), BTreeMap<String, u64>>,
}

/// A greeting with its digits blurred after the reply code (`220 `, `+OK `): servers put a
/// pid, a time or an APOP stamp in their banner, and those must not make one server look like
/// several.
fn shape(greeting: &str) -> String {
    const CODE_CHARS: usize = 4;
    let mut out = String::with_capacity(greeting.len().min(GREETING_CHARS_MAX));
    let mut in_digits = false;
    for (i, c) in greeting
        .trim_end()
        .chars()
        .take(GREETING_CHARS_MAX)
        .enumerate()
    {
        if c.is_ascii_digit() && i >= CODE_CHARS {
            if !in_digits {
                out.push('#');
            }
            in_digits = true;
        } else {
            out.push(c);
            in_digits = false;
        }
    }
    out
}

impl Greetings {
    pub fn record(&mut self, service: Service, target: SocketAddr, greeting: &str) {
        let shaped = shape(greeting);
        let counts = self.seen.entry((service, target)).or_default();
        if let Some(count) = counts.get_mut(&shaped) {
            *count += 1;
        } else if counts.len() < DISTINCT_MAX {
            counts.insert(shaped, 1);
        } else {
            *counts.entry(OTHERS.to_owned()).or_default() += 1;
        }
    }

    pub fn merge(&mut self, other: Greetings) {
        for (key, counts) in other.seen {
            let mine = self.seen.entry(key).or_default();
            for (greeting, count) in counts {
                *mine.entry(greeting).or_default() += count;
            }
        }
    }

    /// "smtp 127.0.0.1:2525" → greeting → times seen, for the report.
    pub fn by_target(&self) -> BTreeMap<String, BTreeMap<String, u64>> {
        self.seen
            .iter()
            .map(|((service, addr), counts)| {
                let service = match service {
                    Service::Smtp => "smtp",
                    Service::Pop3 => "pop3",
                    Service::Imap => "imap",
                };
                (format!("{service} {addr}"), counts.clone())
            })
            .collect()
    }
}

/// Targets that answered with more than one greeting: (target, how many).
pub fn mixed(by_target: &BTreeMap<String, BTreeMap<String, u64>>) -> Vec<(String, usize)> {
    by_target
        .iter()
        .filter(|(_, counts)| counts.len() > 1)
        .map(|(target, counts)| (target.clone(), counts.len()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn two_servers_on_one_target_show_as_two_greetings() {
        let mut greetings = Greetings::default();
        for _ in 0..8 {
            greetings.record(
                Service::Smtp,
                addr(2525),
                "220 sbs.test ESMTP porcupine ready",
            );
        }
        for _ in 0..4 {
            greetings.record(Service::Smtp, addr(2525), "220 localhost ESMTP Postfix");
        }
        greetings.record(Service::Pop3, addr(1110), "+OK porcupine POP3 ready");
        let report = greetings.by_target();
        assert_eq!(report["smtp 127.0.0.1:2525"].len(), 2);
        assert_eq!(
            report["smtp 127.0.0.1:2525"]["220 localhost ESMTP Postfix"],
            4
        );
        assert_eq!(mixed(&report), vec![("smtp 127.0.0.1:2525".to_owned(), 2)]);
    }

    #[test]
    fn stamps_in_a_banner_do_not_make_one_server_look_like_several() {
        let mut greetings = Greetings::default();
        greetings.record(
            Service::Pop3,
            addr(110),
            "+OK ready <1896.697170952@dbc.example>",
        );
        greetings.record(
            Service::Pop3,
            addr(110),
            "+OK ready <2001.697170999@dbc.example>\r",
        );
        let mut other = Greetings::default();
        other.record(Service::Pop3, addr(110), "+OK ready <7.1@dbc.example>");
        greetings.merge(other);
        let report = greetings.by_target();
        assert_eq!(
            report["pop3 127.0.0.1:110"]["+OK ready <#.#@dbc.example>"],
            3
        );
        assert!(mixed(&report).is_empty());
    }

    #[test]
    fn a_server_with_endless_distinct_greetings_stays_bounded() {
        let mut greetings = Greetings::default();
        for n in 0..100 {
            let name: String = (0..3)
                .map(|i| char::from(b'a' + ((n >> (i * 3)) & 7) as u8))
                .collect();
            greetings.record(Service::Smtp, addr(25), &format!("220 {name}"));
        }
        let report = greetings.by_target();
        let counts = &report["smtp 127.0.0.1:25"];
        assert_eq!(counts.len(), DISTINCT_MAX + 1);
        assert_eq!(counts.values().sum::<u64>(), 100);
    }
}
