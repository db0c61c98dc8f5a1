//! The options file (`LICENSING_OPTIONS_FILE`): an administrator's rules for who gets
//! which feature, in FlexLM's keywords — `GROUP`, `HOST_GROUP`, `RESERVE`, `MAX`,
//! `INCLUDE`, `EXCLUDE` — parsed by [`parse`] (pure, line-numbered errors) and applied
//! by [`Options::decide`] (pure) at one place in the checkout decision.
//!
//! The rules apply to new grants: a lease granted before a reload runs on until it is
//! returned, expires or is released. Users match exactly, hosts ignoring ASCII case; a
//! checkout that names no user (host) matches no `USER` or `GROUP` (`HOST` or
//! `HOST_GROUP`) rule.

mod parse;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use parse::{MAX_FILE_BYTES, ParseError, parse};

/// Who a rule is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Subject {
    User(String),
    Host(String),
    /// A `GROUP` of users: its name and members.
    Group(String, Vec<String>),
    /// A `HOST_GROUP`: its name and members.
    HostGroup(String, Vec<String>),
}

impl Subject {
    /// Whether a client that named `who` is one of this subject's.
    pub fn matches(&self, who: Who<'_>) -> bool {
        match self {
            Subject::User(u) => !who.user.is_empty() && who.user == u,
            Subject::Host(h) => !who.host.is_empty() && who.host.eq_ignore_ascii_case(h),
            Subject::Group(_, users) => !who.user.is_empty() && users.iter().any(|u| u == who.user),
            Subject::HostGroup(_, hosts) => {
                !who.host.is_empty() && hosts.iter().any(|h| h.eq_ignore_ascii_case(who.host))
            }
        }
    }
}

/// What a rule does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// `RESERVE n`: n seats only for the subject.
    Reserve(u32),
    /// `MAX n`: the subject holds at most n seats.
    Max(u32),
    Include,
    Exclude,
}

/// One `RESERVE`, `MAX`, `INCLUDE` or `EXCLUDE` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// The line it starts on (1-based).
    pub line: u32,
    pub feature: String,
    pub action: Action,
    pub subject: Subject,
    /// The rule as written (continuations joined), for messages.
    pub text: String,
}

/// A parsed options file: its rules in the file's order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Options {
    pub rules: Vec<Rule>,
}

/// The user and host a checkout named ("" when it named none).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Who<'a> {
    pub user: &'a str,
    pub host: &'a str,
}

/// Which kind of rule refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RuleKind {
    /// `EXCLUDE` named the client, or `INCLUDE` rules exist and none names it.
    Excluded,
    /// A `MAX` would be exceeded.
    OverMax,
    /// The seats left are reserved for others.
    Reserved,
}

/// A refusal by a rule: which kind, the line, and a sentence for the client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleDenial {
    pub kind: RuleKind,
    pub line: u32,
    pub message: String,
}

/// A feature's seats as the checkout decision sees them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seats {
    /// Seats licensed now (every live version of the feature).
    pub count: u32,
    /// Seats held now.
    pub used: u32,
}

impl Options {
    /// Whether no rule names `feature` (the decision needs nothing then).
    pub fn is_open(&self, feature: &str) -> bool {
        !self.rules.iter().any(|r| r.feature == feature)
    }

    /// Whether deciding for `feature` needs the live leases (a `MAX` or `RESERVE` names it).
    pub fn counts_leases(&self, feature: &str) -> bool {
        self.rules.iter().any(|r| {
            r.feature == feature && matches!(r.action, Action::Max(_) | Action::Reserve(_))
        })
    }

    /// Checks the rules against the features licensed now (`counts`: feature → seats):
    /// every feature a rule names is licensed, and no feature reserves more seats than it
    /// has. The error names the line.
    pub fn check(&self, counts: &BTreeMap<String, u32>) -> Result<(), ParseError> {
        let mut reserved: BTreeMap<&str, u32> = BTreeMap::new();
        for r in &self.rules {
            let Some(&count) = counts.get(&r.feature) else {
                let known: Vec<&str> = counts.keys().map(String::as_str).collect();
                return Err(ParseError {
                    line: r.line,
                    message: format!(
                        "unknown feature `{}`: this server licenses {}",
                        r.feature,
                        if known.is_empty() {
                            "no feature".to_owned()
                        } else {
                            known.join(", ")
                        }
                    ),
                });
            };
            if let Action::Reserve(n) = r.action {
                let total = reserved.entry(&r.feature).or_default();
                *total = total.saturating_add(n);
                if *total > count {
                    return Err(ParseError {
                        line: r.line,
                        message: format!(
                            "the reservations of `{}` come to {} seats with this line, and it has \
                             {count}",
                            r.feature, *total
                        ),
                    });
                }
            }
        }
        Ok(())
    }

    /// Whether the rules let `who` take `want` more seats of `feature`. `leases`: the
    /// live leases of the feature, (who, seats) each; read only when
    /// [`Options::counts_leases`]. A refusal names its rule; when the rules allow it, the
    /// caller still needs a free seat.
    pub fn decide<'a>(
        &self,
        feature: &str,
        who: Who<'_>,
        want: u32,
        seats: Seats,
        leases: impl Iterator<Item = (Who<'a>, u32)>,
    ) -> Result<(), RuleDenial> {
        let rules: Vec<&Rule> = self.rules.iter().filter(|r| r.feature == feature).collect();
        if rules.is_empty() {
            return Ok(());
        }
        let deny = |kind, r: &Rule, why: String| RuleDenial {
            kind,
            line: r.line,
            message: format!("{why} (`{}`, options file line {})", r.text, r.line),
        };
        let named = describe(who);
        if let Some(r) = rules
            .iter()
            .find(|r| r.action == Action::Exclude && r.subject.matches(who))
        {
            return Err(deny(
                RuleKind::Excluded,
                r,
                format!("`{feature}` is closed to {named}"),
            ));
        }
        let mut includes = rules.iter().filter(|r| r.action == Action::Include);
        if let Some(first) = includes.clone().next()
            && !includes.any(|r| r.subject.matches(who))
        {
            return Err(deny(
                RuleKind::Excluded,
                first,
                format!("`{feature}` is open only to those its INCLUDE rules name, not to {named}"),
            ));
        }
        if !self.counts_leases(feature) {
            return Ok(());
        }
        let leases: Vec<(Who<'a>, u32)> = leases.collect();
        for r in &rules {
            let Action::Max(max) = r.action else { continue };
            if !r.subject.matches(who) {
                continue;
            }
            let held = leases
                .iter()
                .filter(|(w, _)| r.subject.matches(*w))
                .fold(0u32, |a, (_, n)| a.saturating_add(*n));
            if held.saturating_add(want) > max {
                return Err(deny(
                    RuleKind::OverMax,
                    r,
                    format!(
                        "{} may hold at most {max} seats of `{feature}`; {held} held, {want} asked for",
                        subject_name(&r.subject)
                    ),
                ));
            }
        }
        // Reserved seats held by their holders: each lease fills the reservations it
        // matches, in the file's order; what is left is kept from everyone else.
        let mut room: Vec<(&Rule, u32)> = rules
            .iter()
            .filter_map(|r| match r.action {
                Action::Reserve(n) => Some((*r, n)),
                _ => None,
            })
            .collect();
        for (w, n) in &leases {
            let mut left = *n;
            for (r, free) in room.iter_mut() {
                if left == 0 {
                    break;
                }
                if r.subject.matches(*w) {
                    let take = left.min(*free);
                    *free -= take;
                    left -= take;
                }
            }
        }
        let kept_from_me = room
            .iter()
            .filter(|(r, _)| !r.subject.matches(who))
            .fold(0u32, |a, (_, n)| a.saturating_add(*n));
        let free = seats.count.saturating_sub(seats.used);
        if want <= free
            && want > free.saturating_sub(kept_from_me)
            && let Some((r, _)) = room.iter().find(|(r, n)| *n > 0 && !r.subject.matches(who))
        {
            return Err(deny(
                RuleKind::Reserved,
                r,
                format!(
                    "{free} seats of `{feature}` are free, {kept_from_me} of them reserved for \
                     others, and {named} asked for {want}"
                ),
            ));
        }
        Ok(())
    }
}

fn describe(who: Who<'_>) -> String {
    match (who.user.is_empty(), who.host.is_empty()) {
        (false, false) => format!("user `{}` on host `{}`", who.user, who.host),
        (false, true) => format!("user `{}` (no host named)", who.user),
        (true, false) => format!("host `{}` (no user named)", who.host),
        (true, true) => "a client that named no user and no host".to_owned(),
    }
}

fn subject_name(s: &Subject) -> String {
    match s {
        Subject::User(u) => format!("user `{u}`"),
        Subject::Host(h) => format!("host `{h}`"),
        Subject::Group(g, _) => format!("group `{g}`"),
        Subject::HostGroup(g, _) => format!("host group `{g}`"),
    }
}
