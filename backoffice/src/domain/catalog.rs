//! The producer's rules for changing and deleting what it sells and to whom: nothing that
//! servers hold or an entitlement names goes away under them, and a line item never holds
//! fewer seats than are mapped to servers. Pure: no HTTP, no SQL.

use shared::ErrorCode;

use super::DomainError;

/// How many holders a refusal names before it says how many more there are.
const NAMED: usize = 5;

/// `IN_USE`: `what` cannot go (or change) while its `total` holders hold it, of which
/// `holders` are the first few; `then` says what to do.
pub fn in_use(what: &str, holders: &[String], total: usize, then: &str) -> DomainError {
    let mut named = holders
        .iter()
        .take(NAMED)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    let shown = holders.len().min(NAMED);
    if total > shown {
        named.push_str(&format!(" and {} more", total - shown));
    }
    DomainError::new(
        ErrorCode::InUse,
        format!("{what} is held by {named}; {then}"),
    )
}

/// A line item's new quantity against what is mapped of it, per server (hostid, seats):
/// it may not fall below the seats the servers hold.
pub fn check_quantity(
    activation_id: &str,
    quantity: i64,
    mapped: &[(String, i64)],
) -> Result<(), DomainError> {
    let total: i64 = mapped.iter().map(|m| m.1).sum();
    if quantity >= total {
        return Ok(());
    }
    let servers = mapped
        .iter()
        .map(|(h, q)| format!("{h} {q}"))
        .collect::<Vec<_>>()
        .join(", ");
    Err(DomainError::new(
        ErrorCode::InsufficientQuantity,
        format!(
            "{activation_id}: mapped {total} ({servers}), asked {quantity}: the quantity cannot \
             fall below what servers hold; unmap {} first",
            total - quantity
        ),
    )
    .with_field("quantity"))
}

/// A line item's period: it must end after it starts.
pub fn check_period(starts_at: i64, expires_at: Option<i64>) -> Result<(), DomainError> {
    match expires_at {
        Some(e) if e <= starts_at => Err(DomainError::validation(
            "expires_at",
            "a line item must expire after it starts",
        )),
        _ => Ok(()),
    }
}

/// The shortest and the longest borrow period a line item may allow (1 minute, 365 days).
pub const BORROW_SECS: std::ops::RangeInclusive<i64> = 60..=365 * 86_400;

/// The most overdraft seats a line item may allow (as many as its largest quantity).
pub const MAX_OVERDRAFT: i64 = 1_000_000;

/// A line item's borrow policy and overdraft, checked as a whole (after a change is
/// merged with what is kept): `max_borrow_secs` is the longest borrow, `None` when the
/// line item is not borrowable. `prefix` names the fields (`line_items.` in a new
/// entitlement).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LendingPolicy {
    pub max_borrow_secs: Option<i64>,
    pub overdraft: i64,
}

impl LendingPolicy {
    /// From the API's fields: borrowable needs a maximum period within [`BORROW_SECS`], a
    /// maximum without borrowable is refused (it would be silently ignored), and the
    /// overdraft is 0 to [`MAX_OVERDRAFT`].
    pub fn check(
        prefix: &str,
        borrowable: bool,
        max_borrow_secs: Option<i64>,
        overdraft: i64,
    ) -> Result<LendingPolicy, DomainError> {
        let max = match (borrowable, max_borrow_secs) {
            (false, None) => None,
            (false, Some(_)) => {
                return Err(DomainError::validation(
                    &format!("{prefix}max_borrow_secs"),
                    "max_borrow_secs is only for a borrowable line item: set borrowable to true, or leave max_borrow_secs out",
                ));
            }
            (true, None) => {
                return Err(DomainError::validation(
                    &format!("{prefix}max_borrow_secs"),
                    "a borrowable line item needs max_borrow_secs, the longest borrow in seconds",
                ));
            }
            (true, Some(secs)) if !BORROW_SECS.contains(&secs) => {
                return Err(DomainError::validation(
                    &format!("{prefix}max_borrow_secs"),
                    format!(
                        "max_borrow_secs is {secs}; it must be between {} (a minute) and {} (365 days) seconds",
                        BORROW_SECS.start(),
                        BORROW_SECS.end()
                    ),
                ));
            }
            (true, Some(secs)) => Some(secs),
        };
        if !(0..=MAX_OVERDRAFT).contains(&overdraft) {
            return Err(DomainError::validation(
                &format!("{prefix}overdraft"),
                format!(
                    "overdraft is {overdraft}; it must be between 0 (none) and {MAX_OVERDRAFT} seats"
                ),
            ));
        }
        Ok(LendingPolicy {
            max_borrow_secs: max,
            overdraft,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lending_policy_is_whole_and_within_bounds() {
        let ok = LendingPolicy::check("", true, Some(7 * 86_400), 3).unwrap();
        assert_eq!(ok.max_borrow_secs, Some(7 * 86_400));
        assert_eq!(ok.overdraft, 3);
        assert_eq!(
            LendingPolicy::check("", false, None, 0).unwrap(),
            LendingPolicy {
                max_borrow_secs: None,
                overdraft: 0
            }
        );
        let field = |r: Result<LendingPolicy, DomainError>| r.unwrap_err().field.unwrap();
        assert_eq!(
            field(LendingPolicy::check("", true, None, 0)),
            "max_borrow_secs"
        );
        assert_eq!(
            field(LendingPolicy::check("", false, Some(600), 0)),
            "max_borrow_secs"
        );
        assert_eq!(
            field(LendingPolicy::check("", true, Some(59), 0)),
            "max_borrow_secs"
        );
        assert_eq!(
            field(LendingPolicy::check(
                "line_items.",
                true,
                Some(366 * 86_400),
                0
            )),
            "line_items.max_borrow_secs"
        );
        assert_eq!(
            field(LendingPolicy::check("", false, None, -1)),
            "overdraft"
        );
        assert_eq!(
            field(LendingPolicy::check("", false, None, 1_000_001)),
            "overdraft"
        );
    }

    #[test]
    fn a_quantity_may_fall_to_what_is_mapped_and_no_lower() {
        let mapped = [("string:a".to_owned(), 4), ("string:b".to_owned(), 2)];
        assert!(check_quantity("ACT-1", 6, &mapped).is_ok());
        assert!(check_quantity("ACT-1", 100, &mapped).is_ok());
        let e = check_quantity("ACT-1", 5, &mapped).unwrap_err();
        assert_eq!(e.code, ErrorCode::InsufficientQuantity);
        assert!(e.message.contains("mapped 6"), "{}", e.message);
        assert!(e.message.contains("asked 5"), "{}", e.message);
        assert!(
            e.message.contains("string:a 4, string:b 2"),
            "{}",
            e.message
        );
        assert!(check_quantity("ACT-1", 1, &[]).is_ok());
    }

    #[test]
    fn a_refusal_names_a_few_holders_and_counts_the_rest() {
        let holders: Vec<String> = (0..8).map(|i| format!("h{i}")).collect();
        let e = in_use("product P", &holders, 8, "delete them first");
        assert_eq!(e.code, ErrorCode::InUse);
        assert!(
            e.message.contains("h0, h1, h2, h3, h4 and 3 more"),
            "{}",
            e.message
        );
        assert!(!e.message.contains("h5"));
        let e = in_use("product P", &holders[..2], 40, "delete them first");
        assert!(e.message.contains("h0, h1 and 38 more"), "{}", e.message);
    }

    #[test]
    fn a_period_ends_after_it_starts() {
        assert!(check_period(10, None).is_ok());
        assert!(check_period(10, Some(11)).is_ok());
        assert_eq!(
            check_period(10, Some(10)).unwrap_err().field.as_deref(),
            Some("expires_at")
        );
    }
}
