//! The options file's parser: text in, [`Options`] or the first error with its line out
//! (pure; the caller reads the file).
//!
//! One statement a line; a line ending in `\` continues on the next; a line whose first
//! non-blank character is `#` is a comment; keywords and the words `USER`, `HOST`,
//! `GROUP`, `HOST_GROUP` in any case; names are case-sensitive words.
//!
//! ```text
//! GROUP      name member…            (several lines of one name add up)
//! HOST_GROUP name host…
//! RESERVE n feature USER|HOST|GROUP|HOST_GROUP name
//! MAX     n feature USER|HOST|GROUP|HOST_GROUP name
//! INCLUDE   feature USER|HOST|GROUP|HOST_GROUP name
//! EXCLUDE   feature USER|HOST|GROUP|HOST_GROUP name
//! ```

use std::collections::BTreeMap;

use super::{Action, Options, Rule, Subject};

/// The longest options file read (bytes).
pub const MAX_FILE_BYTES: usize = 1 << 20;
/// The longest name (user, host, group, feature).
const MAX_NAME: usize = 256;

/// Why an options file is refused: the line (1-based; 0 for the file as a whole) and what
/// is wrong there.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ParseError {
    pub line: u32,
    pub message: String,
}

fn err(line: u32, message: impl Into<String>) -> ParseError {
    ParseError {
        line,
        message: message.into(),
    }
}

/// A statement: the line it starts on and its words (continuations joined).
struct Statement<'a> {
    line: u32,
    words: Vec<&'a str>,
}

fn statements(text: &str) -> Result<Vec<Statement<'_>>, ParseError> {
    let mut out = Vec::new();
    let mut open: Option<Statement<'_>> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = u32::try_from(i + 1).unwrap_or(u32::MAX);
        if raw.chars().any(|c| c.is_control() && c != '\t') {
            return Err(err(line, "the line holds a control character"));
        }
        let trimmed = raw.trim();
        if open.is_none() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        let (body, continues) = match trimmed.strip_suffix('\\') {
            Some(b) => (b, true),
            None => (trimmed, false),
        };
        let st = open.get_or_insert_with(|| Statement {
            line,
            words: Vec::new(),
        });
        st.words.extend(body.split_whitespace());
        if !continues {
            out.extend(open.take());
        }
    }
    if let Some(st) = open {
        return Err(err(
            st.line,
            "the statement ends in `\\` (a continuation) but the file ends there",
        ));
    }
    Ok(out.into_iter().filter(|s| !s.words.is_empty()).collect())
}

fn name(line: u32, what: &str, w: &str) -> Result<String, ParseError> {
    if w.len() > MAX_NAME {
        return Err(err(
            line,
            format!("the {what} is longer than {MAX_NAME} bytes"),
        ));
    }
    Ok(w.to_owned())
}

fn number(line: u32, keyword: &str, w: &str) -> Result<u32, ParseError> {
    w.parse::<u32>().map_err(|_| {
        err(
            line,
            format!(
                "{keyword} takes a number of seats first (0 to {}), not `{w}`",
                u32::MAX
            ),
        )
    })
}

/// Parses an options file. Every error names its line; names of `GROUP`s and
/// `HOST_GROUP`s used by a rule must be defined somewhere in the file.
pub fn parse(text: &str) -> Result<Options, ParseError> {
    if text.len() > MAX_FILE_BYTES {
        return Err(err(
            0,
            format!("the file is larger than {MAX_FILE_BYTES} bytes"),
        ));
    }
    let statements = statements(text)?;
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut host_groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for st in &statements {
        let keyword = st.words[0].to_ascii_uppercase();
        let table = match keyword.as_str() {
            "GROUP" => &mut groups,
            "HOST_GROUP" => &mut host_groups,
            _ => continue,
        };
        let [_, group, members @ ..] = st.words.as_slice() else {
            return Err(err(
                st.line,
                format!("{keyword} needs a name and its members"),
            ));
        };
        if members.is_empty() {
            return Err(err(st.line, format!("{keyword} `{group}` names no member")));
        }
        let list = table
            .entry(name(st.line, "group name", group)?)
            .or_default();
        for m in members {
            list.push(name(st.line, "member", m)?);
        }
    }
    let mut rules = Vec::new();
    for st in &statements {
        let keyword = st.words[0].to_ascii_uppercase();
        let (action, rest) = match keyword.as_str() {
            "GROUP" | "HOST_GROUP" => continue,
            "RESERVE" | "MAX" => {
                let Some(n) = st.words.get(1) else {
                    return Err(err(
                        st.line,
                        format!(
                            "{keyword} needs: {keyword} n feature USER|HOST|GROUP|HOST_GROUP name"
                        ),
                    ));
                };
                let n = number(st.line, &keyword, n)?;
                let action = if keyword == "MAX" {
                    Action::Max(n)
                } else if n == 0 {
                    return Err(err(
                        st.line,
                        "RESERVE 0 reserves nothing: reserve 1 seat or more",
                    ));
                } else {
                    Action::Reserve(n)
                };
                (action, &st.words[2..])
            }
            "INCLUDE" => (Action::Include, &st.words[1..]),
            "EXCLUDE" => (Action::Exclude, &st.words[1..]),
            _ => {
                return Err(err(
                    st.line,
                    format!(
                        "unknown keyword `{}`: this server knows GROUP, HOST_GROUP, RESERVE, \
                         MAX, INCLUDE and EXCLUDE",
                        st.words[0]
                    ),
                ));
            }
        };
        let [feature, kind, who] = rest else {
            let usage = match action {
                Action::Reserve(_) | Action::Max(_) => format!("{keyword} n"),
                _ => keyword.clone(),
            };
            return Err(err(
                st.line,
                format!(
                    "{keyword} needs: {usage} feature USER|HOST|GROUP|HOST_GROUP name (one name \
                     a line; a GROUP for several)"
                ),
            ));
        };
        let who = name(st.line, "name", who)?;
        let subject = match kind.to_ascii_uppercase().as_str() {
            "USER" => Subject::User(who),
            "HOST" => Subject::Host(who),
            "GROUP" => match groups.get(&who) {
                Some(m) => Subject::Group(who, m.clone()),
                None => {
                    return Err(err(
                        st.line,
                        format!("no GROUP `{who}` is defined in this file"),
                    ));
                }
            },
            "HOST_GROUP" => match host_groups.get(&who) {
                Some(m) => Subject::HostGroup(who, m.clone()),
                None => {
                    return Err(err(
                        st.line,
                        format!("no HOST_GROUP `{who}` is defined in this file"),
                    ));
                }
            },
            other => {
                return Err(err(
                    st.line,
                    format!("`{other}` is not USER, HOST, GROUP or HOST_GROUP"),
                ));
            }
        };
        rules.push(Rule {
            line: st.line,
            feature: name(st.line, "feature", feature)?,
            action,
            subject,
            text: st.words.join(" "),
        });
    }
    Ok(Options { rules })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::{RuleKind, Seats, Who};

    const FILE: &str = "\
# engineering gets two seats of cad; nobody takes more than three
GROUP eng alice bob
GROUP eng carol
HOST_GROUP lab ws-1 \\
    ws-2
RESERVE 2 cad GROUP eng
max 3 cad USER dave
EXCLUDE cad HOST kiosk
INCLUDE sim HOST_GROUP lab
";

    fn who<'a>(user: &'a str, host: &'a str) -> Who<'a> {
        Who { user, host }
    }

    #[test]
    fn a_file_parses_into_its_rules_with_their_lines() {
        let o = parse(FILE).unwrap();
        let lines: Vec<u32> = o.rules.iter().map(|r| r.line).collect();
        assert_eq!(lines, [6, 7, 8, 9]);
        assert_eq!(
            o.rules[0].subject,
            Subject::Group(
                "eng".into(),
                vec!["alice".into(), "bob".into(), "carol".into()]
            )
        );
        assert_eq!(o.rules[1].action, Action::Max(3));
        assert_eq!(
            o.rules[3].subject,
            Subject::HostGroup("lab".into(), vec!["ws-1".into(), "ws-2".into()])
        );
        assert_eq!(o.rules[3].text, "INCLUDE sim HOST_GROUP lab");
    }

    #[test]
    fn bad_files_are_refused_with_the_line() {
        let cases: &[(&str, u32, &str)] = &[
            (
                "GROUP a x\nRESREVE 1 cad USER x",
                2,
                "unknown keyword `RESREVE`",
            ),
            ("\n\nRESERVE two cad USER x", 3, "number of seats"),
            ("RESERVE 0 cad USER x", 1, "reserves nothing"),
            ("MAX 1 cad USER", 1, "MAX needs"),
            ("INCLUDE cad USER a b", 1, "INCLUDE needs"),
            ("EXCLUDE cad PROJECT x", 1, "not USER, HOST"),
            ("# c\nINCLUDE cad GROUP nobody", 2, "no GROUP `nobody`"),
            ("EXCLUDE cad HOST_GROUP g", 1, "no HOST_GROUP `g`"),
            ("GROUP lonely", 1, "names no member"),
            ("GROUP", 1, "needs a name"),
            ("EXCLUDE cad USER x \\", 1, "file ends there"),
            ("EXCLUDE cad USER x\u{7}", 1, "control character"),
            ("MAX -1 cad USER x", 1, "number of seats"),
        ];
        for (text, line, needle) in cases {
            let e = parse(text).unwrap_err();
            assert_eq!(e.line, *line, "{text:?}: {e}");
            assert!(e.message.contains(needle), "{text:?}: {e}");
        }
        let long = format!("EXCLUDE cad USER {}", "u".repeat(300));
        assert!(parse(&long).unwrap_err().message.contains("longer than"));
        let huge = "#".repeat(MAX_FILE_BYTES + 1);
        assert_eq!(parse(&huge).unwrap_err().line, 0);
    }

    #[test]
    fn comments_blank_lines_and_an_empty_file_are_no_rules() {
        assert_eq!(parse("").unwrap(), Options::default());
        assert_eq!(parse("  # only\n\n\t\n").unwrap(), Options::default());
    }

    #[test]
    fn rules_are_checked_against_the_licensed_features() {
        let o = parse(FILE).unwrap();
        let counts = BTreeMap::from([("cad".to_owned(), 5), ("sim".to_owned(), 1)]);
        o.check(&counts).unwrap();
        let e = o
            .check(&BTreeMap::from([("cad".to_owned(), 5)]))
            .unwrap_err();
        assert_eq!(e.line, 9);
        assert!(e.message.contains("unknown feature `sim`"), "{e}");
        let e = o
            .check(&BTreeMap::from([
                ("cad".to_owned(), 1),
                ("sim".to_owned(), 1),
            ]))
            .unwrap_err();
        assert_eq!(e.line, 6);
        assert!(
            e.message.contains("2 seats") && e.message.contains("has 1"),
            "{e}"
        );
    }

    #[test]
    fn exclude_and_include_name_their_rule() {
        let o = parse(FILE).unwrap();
        let seats = Seats { count: 5, used: 0 };
        let e = o
            .decide("cad", who("alice", "KIOSK"), 1, seats, std::iter::empty())
            .unwrap_err();
        assert_eq!((e.kind, e.line), (RuleKind::Excluded, 8));
        assert!(e.message.contains("options file line 8"), "{}", e.message);
        let e = o
            .decide("sim", who("alice", "ws-9"), 1, seats, std::iter::empty())
            .unwrap_err();
        assert_eq!((e.kind, e.line), (RuleKind::Excluded, 9));
        o.decide("sim", who("alice", "ws-2"), 1, seats, std::iter::empty())
            .unwrap();
        // A feature no rule names is open to all, even to a client that named nobody.
        o.decide("other", who("", ""), 1, seats, std::iter::empty())
            .unwrap();
    }

    #[test]
    fn max_counts_what_the_subject_holds() {
        let o = parse(FILE).unwrap();
        let held = [(who("dave", "a"), 2), (who("erin", "b"), 1)];
        let seats = Seats { count: 10, used: 3 };
        o.decide("cad", who("dave", "c"), 1, seats, held.into_iter())
            .unwrap();
        let e = o
            .decide("cad", who("dave", "c"), 2, seats, held.into_iter())
            .unwrap_err();
        assert_eq!((e.kind, e.line), (RuleKind::OverMax, 7));
        assert!(e.message.contains("2 held, 2 asked for"), "{}", e.message);
    }

    #[test]
    fn reserved_seats_go_only_to_their_holders() {
        let o = parse(FILE).unwrap();
        // 5 seats, 2 reserved for eng, 3 held by others: the 2 left are eng's.
        let held = [(who("x", "h"), 3)];
        let seats = Seats { count: 5, used: 3 };
        let e = o
            .decide("cad", who("erin", "h"), 1, seats, held.into_iter())
            .unwrap_err();
        assert_eq!((e.kind, e.line), (RuleKind::Reserved, 6));
        o.decide("cad", who("bob", "h"), 2, seats, held.into_iter())
            .unwrap();
        // With one reserved seat in use by carol, the other is still kept from erin.
        let held = [(who("carol", "h"), 1), (who("x", "h"), 2)];
        let e = o
            .decide("cad", who("erin", "h"), 2, seats, held.into_iter())
            .unwrap_err();
        assert_eq!(e.kind, RuleKind::Reserved);
        o.decide("cad", who("erin", "h"), 1, seats, held.into_iter())
            .unwrap();
        // Every seat taken: not a reservation's doing (the caller answers no seat).
        let seats = Seats { count: 5, used: 5 };
        o.decide("cad", who("erin", "h"), 1, seats, std::iter::empty())
            .unwrap();
    }
}
