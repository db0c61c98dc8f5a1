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

#[cfg(test)]
mod tests {
    use super::*;

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
