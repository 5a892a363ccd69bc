//! UID and message-number sets as IMAP writes them (`3:5,9`), and the arithmetic QRESYNC needs
//! on them: which UIDs a client may hold that a mailbox no longer has, computed range by range
//! so a client's `1:4294967295` costs no more than the mailbox's own size.

use super::command::{SeqNum, SequenceSet};

/// Sorted, merged inclusive ranges of the values (duplicates dropped).
pub fn ranges(values: &[u32]) -> Vec<(u32, u32)> {
    let mut sorted: Vec<u32> = values.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut out: Vec<(u32, u32)> = Vec::new();
    for v in sorted {
        match out.last_mut() {
            Some((_, end)) if end.checked_add(1) == Some(v) => *end = v,
            _ => out.push((v, v)),
        }
    }
    out
}

/// Ranges written as an IMAP set.
pub fn write_ranges(ranges: &[(u32, u32)]) -> String {
    let mut out = String::new();
    for &(start, end) in ranges {
        if !out.is_empty() {
            out.push(',');
        }
        if start == end {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}:{end}"));
        }
    }
    out
}

/// Values as an IMAP set, sorted, ranges joined.
pub fn uid_set(values: &[u32]) -> String {
    write_ranges(&ranges(values))
}

/// Values as an IMAP set in their own order (COPYUID's two sets must correspond).
pub fn ordered_set(values: &[u32]) -> String {
    values
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// The UIDs of `set` from 1 to `largest` (`*` is `largest`) that are not in `present`
/// (ascending), as ranges.
pub fn absent_in(set: &SequenceSet, largest: u32, present: &[u32]) -> Vec<(u32, u32)> {
    let value = |s: SeqNum| match s {
        SeqNum::Value(v) => v.get(),
        SeqNum::Largest => largest,
        SeqNum::Saved => 0,
    };
    let mut wanted: Vec<(u32, u32)> = set
        .0
        .iter()
        .map(|&(a, b)| {
            let (a, b) = (value(a), value(b));
            (a.min(b).max(1), a.max(b).min(largest))
        })
        .filter(|(lo, hi)| lo <= hi)
        .collect();
    wanted.sort_unstable();
    let mut merged: Vec<(u32, u32)> = Vec::new();
    for (lo, hi) in wanted {
        match merged.last_mut() {
            Some((_, end)) if lo <= end.saturating_add(1) => *end = (*end).max(hi),
            _ => merged.push((lo, hi)),
        }
    }
    let mut out = Vec::new();
    for (lo, hi) in merged {
        let first = present.partition_point(|&u| u < lo);
        // u64: the UID after u32::MAX is past every range, not u32::MAX again.
        let mut next = u64::from(lo);
        for &uid in present[first..].iter().take_while(|&&u| u <= hi) {
            if u64::from(uid) > next {
                out.push((next as u32, uid - 1));
            }
            next = u64::from(uid) + 1;
        }
        if next <= u64::from(hi) {
            out.push((next as u32, hi));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imap::parser;

    fn set(text: &str) -> SequenceSet {
        let line = format!("a UID FETCH {text} FLAGS\r\n");
        match parser::parse(line.as_bytes()).map(|t| t.command) {
            Ok(crate::imap::command::Command::Fetch { set, .. }) => set,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn sets_are_written_as_ranges() {
        assert_eq!(uid_set(&[9, 3, 4, 5, 5, 1]), "1,3:5,9");
        assert_eq!(uid_set(&[]), "");
        assert_eq!(uid_set(&[u32::MAX, u32::MAX - 1]), "4294967294:4294967295");
        assert_eq!(ordered_set(&[5, 2, 3]), "5,2,3");
    }

    #[test]
    fn absent_uids_are_found_range_by_range() {
        let present = [2, 3, 7, 10];
        assert_eq!(
            absent_in(&set("1:*"), 12, &present),
            vec![(1, 1), (4, 6), (8, 9), (11, 12)]
        );
        assert_eq!(absent_in(&set("2:3"), 12, &present), vec![]);
        assert_eq!(
            absent_in(&set("3:8,7:9"), 12, &present),
            vec![(4, 6), (8, 9)]
        );
        // Beyond the mailbox's largest UID nothing is reported, however large the set.
        assert_eq!(
            absent_in(&set("11:4294967295"), 12, &present),
            vec![(11, 12)]
        );
        assert_eq!(absent_in(&set("1:*"), 0, &[]), vec![]);
        assert_eq!(absent_in(&set("5"), 12, &present), vec![(5, 5)]);
        assert_eq!(absent_in(&set("1:*"), 10, &[]), vec![(1, 10)]);
    }
}
