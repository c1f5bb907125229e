//! The parser on dumps written exactly as milter-greylist's dump.c, pending.c and autowhite.c
//! print them (tests/fixtures/milter-greylist/, one per layout).

use super::{parse_line, Kind, Line, Section};

/// (greylisted, autowhitelisted, tarpitted, bad lines, sections, version) of a dump.
fn census(text: &str) -> (usize, usize, usize, usize, Vec<Section>, Option<String>) {
    let (mut g, mut a, mut t, mut bad) = (0, 0, 0, 0);
    let mut sections = Vec::new();
    let mut version = None;
    for line in text.split('\n') {
        match parse_line(line) {
            Ok(Line::Tuple(tuple)) => match tuple.kind {
                Kind::Pending => g += 1,
                Kind::Auto => a += 1,
                Kind::Tarpit { .. } => t += 1,
            },
            Ok(Line::Section(s)) => sections.push(s),
            Ok(Line::Header { version: v, .. }) => version = Some(v.to_owned()),
            Ok(_) => {}
            Err(_) => bad += 1,
        }
    }
    (g, a, t, bad, sections, version)
}

macro_rules! fixture {
    ($name:literal) => {
        include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/milter-greylist/",
            $name
        ))
    };
}

#[test]
fn two_section_layout_of_4_2_and_older() {
    use Section::*;
    for text in [
        fixture!("4.2-two-sections.dump"),
        fixture!("4.2-two-sections-no-time-translation.dump"),
    ] {
        let (g, a, t, bad, sections, version) = census(text);
        assert_eq!((g, a, t, bad), (3, 2, 0, 0));
        assert_eq!(sections, vec![Greylisted, AutoWhitelisted]);
        assert_eq!(version.as_deref(), Some("4.2.7"));
    }
    let (g, a, _, bad, _, version) = census(fixture!("1.5-padded.dump"));
    assert_eq!((g, a, bad, version.as_deref()), (2, 1, 0, Some("1.5.5")));
}

#[test]
fn one_section_layout_of_4_3_2_and_later() {
    for text in [
        fixture!("4.6-stored-tuples.dump"),
        fixture!("4.6-stored-tuples-no-time-translation.dump"),
    ] {
        let (g, a, t, bad, sections, version) = census(text);
        assert_eq!((g, a, t, bad), (3, 2, 1, 0));
        assert_eq!(sections, vec![Section::Stored]);
        assert_eq!(version.as_deref(), Some("4.6.2"));
    }
}

#[test]
fn the_time_is_the_same_number_with_and_without_translation() {
    let tuples = |text: &'static str| -> Vec<(String, u64, Kind)> {
        text.lines()
            .filter_map(|l| match parse_line(l) {
                Ok(Line::Tuple(t)) => {
                    Some((format!("{} {} {}", t.ip, t.from, t.rcpt), t.time, t.kind))
                }
                _ => None,
            })
            .collect()
    };
    let with = tuples(fixture!("4.6-stored-tuples.dump"));
    assert_eq!(
        with,
        tuples(fixture!("4.6-stored-tuples-no-time-translation.dump"))
    );
    assert!(with.contains(&(
        "2001:db8::26 <> <v@example.org>".into(),
        1318003600,
        Kind::Auto
    )));
    assert!(with.contains(&(
        "192.0.2.30 <slow@sender.example> <u@example.org>".into(),
        1318001800,
        Kind::Tarpit { shortest: 30 }
    )));
    assert_eq!(
        tuples(fixture!("4.2-two-sections.dump")),
        tuples(fixture!("4.2-two-sections-no-time-translation.dump"))
    );
}

#[test]
fn corrupt_lines_are_reported_one_by_one() {
    let text = fixture!("corrupt.dump");
    let errors: Vec<(usize, String)> = text
        .split('\n')
        .enumerate()
        .filter_map(|(i, l)| parse_line(l).err().map(|e| (i + 1, e)))
        .collect();
    let lines: Vec<usize> = errors.iter().map(|(l, _)| *l).collect();
    assert_eq!(lines, vec![12, 13, 14, 15], "{errors:?}");
    assert!(errors[0].1.contains("not a time"), "{errors:?}");
    assert!(errors[1].1.contains("not an IP address"));
    assert!(errors[2].1.contains("unexpected `WHITE`"));
    assert!(errors[3].1.contains("got 3 fields"));
}
