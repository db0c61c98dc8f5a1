//! Pairing, clustering and ordering rules of the license-server registry.
//!
//! Given what the registry holds about the hostids a capability request names, decide what
//! to do. The storage layer loads the facts, calls [`plan`] (a standalone server, a pair's
//! main or backup) or [`plan_member`] (a member of a three-member cluster), and carries
//! out the plan in one transaction.
//!
//! A cluster is registered by the first request of any of its members, which names the
//! other two (`CLUSTER_MEMBER_HOSTIDS`), or by hand in the portal; the other members'
//! requests then find it. Unlike a pair's backup, which does not name its main, every
//! member's request describes the whole cluster, so no member waits for another: there is
//! no `MAIN_NOT_REGISTERED` for clusters. What is refused is a request that disagrees with
//! the registry: a member list that names another set than the cluster registered
//! (`ROLE_CONFLICT`, naming both sets), a server of a pair or of another cluster named as
//! a member, or a cluster member that starts in another role.

use shared::capability::{CapabilityRequest, Role};
use shared::{ErrorCode, HostId};

use super::DomainError;

/// How a server came to be in the registry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerState {
    /// Has spoken to the back office in its role.
    Registered,
    /// Named by a pair (by hand, or as a main's backup) but not yet heard from.
    Expected,
    /// A backup that asked before its main had registered the pair.
    Waiting,
}

impl ServerState {
    pub fn as_str(self) -> &'static str {
        match self {
            ServerState::Registered => "registered",
            ServerState::Expected => "expected",
            ServerState::Waiting => "waiting",
        }
    }

    pub fn parse(s: &str) -> ServerState {
        match s {
            "registered" => ServerState::Registered,
            "waiting" => ServerState::Waiting,
            _ => ServerState::Expected,
        }
    }
}

/// What the registry knows of one hostid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Known {
    pub server_id: String,
    pub same_account: bool,
    pub role: Role,
    pub state: ServerState,
    /// The pair it belongs to, with the other member's hostid.
    pub pair: Option<KnownPair>,
    /// The cluster it is a member of.
    pub cluster: Option<KnownCluster>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KnownCluster {
    pub cluster_id: String,
    /// The member whose row holds the cluster's rights.
    pub holder_server_id: String,
    /// The three members' hostids, sorted.
    pub members: Vec<HostId>,
}

/// Hostids as a list for messages: `a, b, c`.
pub fn hostid_list(h: &[HostId]) -> String {
    h.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KnownPair {
    pub pair_id: String,
    /// The main's server id: the holder of the pair's rights.
    pub main_server_id: String,
    pub main_hostid: HostId,
    pub backup_hostid: Option<HostId>,
}

/// What to do for a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Nothing to change but the contact time.
    Known,
    /// A new standalone server.
    CreateStandalone,
    /// A server known only as a waiting backup starts standalone.
    WaitingBecomesStandalone,
    /// Register the pair: create or update the main and backup rows as needed.
    RegisterPair {
        /// The main's row, if it exists (standalone, waiting or expected).
        main: Option<String>,
        /// The backup's row, if it exists (waiting or expected).
        backup: Option<String>,
        /// The pair, if one exists (registered by hand, or the main's after a backup was removed).
        pair: Option<String>,
    },
    /// The backup is refused with `MAIN_NOT_REGISTERED` and recorded as waiting.
    RecordWaitingBackup { existing: Option<String> },
    /// Register a cluster: its three members, the requester first, each with its row if
    /// it has one (the requester's own standalone row, whose rights become the cluster's,
    /// or a waiting backup's).
    RegisterCluster {
        members: Vec<(HostId, Option<String>)>,
    },
}

/// A hostid held elsewhere. The message says no more than that it cannot be used: whether
/// another account holds it is not this account's business.
pub fn in_use(h: &HostId) -> DomainError {
    DomainError::new(
        ErrorCode::HostidInUse,
        format!(
            "hostid {h} cannot be registered to this account; check the hostid, or ask the \
             producer if it is yours"
        ),
    )
}

fn main_not_registered(b: &HostId) -> DomainError {
    DomainError::new(
        ErrorCode::MainNotRegistered,
        format!(
            "no failover pair names {b} as its backup yet: start the main license server \
             (with BACKUP_SERVER_HOSTID={b}) first, or register the pair in the portal; \
             this server will be accepted once the main has registered"
        ),
    )
}

/// Decides what a capability request from `hostid` in `role` does.
///
/// `main` is what the registry knows of the requesting hostid; `backup` what it knows of
/// the backup hostid a main names.
pub fn plan(
    hostid: &HostId,
    role: Role,
    backup_hostid: Option<&HostId>,
    known: Option<&Known>,
    known_backup: Option<&Known>,
) -> Result<Plan, DomainError> {
    if let Some(k) = known
        && !k.same_account
    {
        return Err(in_use(hostid));
    }
    if let Some(c) = known.and_then(|k| k.cluster.as_ref()) {
        return Err(DomainError::new(
            ErrorCode::RoleConflict,
            format!(
                "{hostid} is a member of the cluster of {}; start it with \
                 CLUSTER_MEMBER_HOSTIDS naming the other two members",
                hostid_list(&c.members)
            ),
        ));
    }
    if let (Some(b), Some(c)) = (backup_hostid, known_backup.and_then(|k| k.cluster.as_ref())) {
        return Err(DomainError::new(
            ErrorCode::RoleConflict,
            format!(
                "{b} is a member of the cluster of {}; it cannot be a backup",
                hostid_list(&c.members)
            ),
        ));
    }
    match role {
        Role::Standalone => match known {
            None => Ok(Plan::CreateStandalone),
            Some(k) if k.role == Role::Standalone => Ok(Plan::Known),
            Some(k) if k.state == ServerState::Waiting => Ok(Plan::WaitingBecomesStandalone),
            Some(k) => Err(DomainError::new(
                ErrorCode::RoleConflict,
                format!(
                    "{hostid} is registered as the {} of a failover pair; start it with its \
                     pair settings, or remove the pair's backup first",
                    k.role
                ),
            )),
        },
        Role::Main => {
            let b = backup_hostid.ok_or_else(|| {
                DomainError::validation("backup_hostid", "a main server must name its backup")
            })?;
            if b.kind() != hostid.kind() {
                return Err(DomainError::new(
                    ErrorCode::HostidTypeMismatch,
                    format!(
                        "the main's hostid is of type {} but BACKUP_SERVER_HOSTID is of type {}; \
                         a pair's hostids must be of the same type",
                        hostid.kind(),
                        b.kind()
                    ),
                ));
            }
            if b == hostid {
                return Err(DomainError::validation(
                    "backup_hostid",
                    "a server cannot be its own backup",
                ));
            }
            // The main's side.
            let mut pair_id = None;
            if let Some(k) = known {
                match (k.role, &k.pair) {
                    (Role::Backup, Some(p)) => {
                        return Err(DomainError::new(
                            ErrorCode::RoleConflict,
                            format!(
                                "{hostid} is registered as the backup of {}; it cannot be a main",
                                p.main_hostid
                            ),
                        ));
                    }
                    (Role::Main, Some(p)) => {
                        match &p.backup_hostid {
                            Some(current) if current == b && k.state == ServerState::Registered => {
                                return Ok(Plan::Known);
                            }
                            Some(current) if current == b => {}
                            Some(current) => {
                                return Err(DomainError::new(
                                    ErrorCode::RoleConflict,
                                    format!(
                                        "{hostid} is the main of a pair whose backup is {current}, \
                                         not {b}; remove that backup first"
                                    ),
                                ));
                            }
                            None => {}
                        }
                        pair_id = Some(p.pair_id.clone());
                    }
                    _ => {}
                }
            }
            // The backup's side.
            if let Some(kb) = known_backup {
                if !kb.same_account {
                    return Err(in_use(b));
                }
                match (kb.role, &kb.pair) {
                    (Role::Backup, Some(p)) if &p.main_hostid != hostid => {
                        return Err(DomainError::new(
                            ErrorCode::HostidInUse,
                            format!("{b} is already the backup of {}", p.main_hostid),
                        ));
                    }
                    (Role::Backup, _) => {}
                    (_, _) if kb.state == ServerState::Waiting => {}
                    (role, _) => {
                        return Err(DomainError::new(
                            ErrorCode::RoleConflict,
                            format!("{b} is registered as a {role} server; it cannot be a backup"),
                        ));
                    }
                }
            }
            Ok(Plan::RegisterPair {
                main: known.map(|k| k.server_id.clone()),
                backup: known_backup.map(|k| k.server_id.clone()),
                pair: pair_id,
            })
        }
        Role::Backup => match known {
            None => Ok(Plan::RecordWaitingBackup { existing: None }),
            Some(k) if k.state == ServerState::Waiting => Ok(Plan::RecordWaitingBackup {
                existing: Some(k.server_id.clone()),
            }),
            Some(k) if k.role == Role::Backup && k.pair.is_some() => Ok(Plan::Known),
            Some(k) if k.role == Role::Backup => Ok(Plan::RecordWaitingBackup {
                existing: Some(k.server_id.clone()),
            }),
            Some(k) => Err(DomainError::new(
                ErrorCode::RoleConflict,
                format!(
                    "{hostid} is registered as a {} server; it cannot start as a backup",
                    k.role
                ),
            )),
        },
    }
}

/// Decides what a capability request from `hostid`, a member of a three-member cluster
/// naming the other two members `others`, does. `known` is what the registry knows of the
/// requester, `known_others` of each of `others`, in order.
pub fn plan_member(
    hostid: &HostId,
    others: &[HostId],
    known: Option<&Known>,
    known_others: &[Option<&Known>],
) -> Result<Plan, DomainError> {
    let field = "cluster_member_hostids";
    if others.len() != 2 {
        return Err(DomainError::validation(
            field,
            format!(
                "a cluster has three members: name the other two ({} named)",
                others.len()
            ),
        ));
    }
    if others.contains(hostid) {
        return Err(DomainError::validation(
            field,
            format!("the list names this server's own hostid {hostid}: name the other two members"),
        ));
    }
    if others[0] == others[1] {
        return Err(DomainError::validation(
            field,
            format!(
                "the list names {} twice: name the other two members",
                others[0]
            ),
        ));
    }
    if let Some(o) = others.iter().find(|o| o.kind() != hostid.kind()) {
        return Err(not_of_type(hostid, o));
    }
    let mut members: Vec<HostId> = std::iter::once(hostid.clone())
        .chain(others.iter().cloned())
        .collect();
    members.sort_by_key(ToString::to_string);
    let named = |h: &HostId, k: Option<&Known>| -> Result<(), DomainError> {
        let Some(k) = k else { return Ok(()) };
        if !k.same_account {
            return Err(in_use(h));
        }
        Ok(())
    };
    // What is known of each other member (nothing, when the caller did not look).
    let others: Vec<(&HostId, Option<&Known>)> = others
        .iter()
        .enumerate()
        .map(|(i, o)| (o, known_others.get(i).copied().flatten()))
        .collect();
    named(hostid, known)?;
    for (o, k) in &others {
        named(o, *k)?;
    }
    // The requester's side.
    if let Some(k) = known {
        if let Some(c) = &k.cluster {
            if c.members == members {
                return Ok(Plan::Known);
            }
            return Err(DomainError::new(
                ErrorCode::RoleConflict,
                format!(
                    "{hostid} is a member of the cluster of {}, but names {}: set \
                     CLUSTER_MEMBER_HOSTIDS on every member to the other two of the same \
                     three (or take it out of its cluster first)",
                    hostid_list(&c.members),
                    hostid_list(&members),
                ),
            ));
        }
        in_a_pair(hostid, k)?;
    }
    // The other members' side.
    for (o, k) in &others {
        if let Some(k) = k {
            joinable(o, k)?;
        }
    }
    Ok(Plan::RegisterCluster {
        members: std::iter::once((hostid.clone(), known.map(|k| k.server_id.clone())))
            .chain(
                others
                    .iter()
                    .map(|(o, k)| ((*o).clone(), k.map(|k| k.server_id.clone()))),
            )
            .collect(),
    })
}

/// Whether a cluster's member `out` may be replaced by `new` (by hand): `out` is one of its
/// members, `new` is not, is of the same hostid type, and is free to join (unknown, or a
/// waiting backup, of this account). The cluster keeps three members; `out` leaves it
/// and gets none of its rights again.
pub fn plan_replace(
    cluster: &KnownCluster,
    out: &HostId,
    new: &HostId,
    known_new: Option<&Known>,
) -> Result<(), DomainError> {
    if !cluster.members.contains(out) {
        return Err(DomainError::validation(
            "out_hostid",
            format!(
                "{out} is not a member of the cluster of {}",
                hostid_list(&cluster.members)
            ),
        ));
    }
    if cluster.members.contains(new) {
        return Err(DomainError::validation(
            "new_hostid",
            format!("{new} is already a member of this cluster"),
        ));
    }
    if new.kind() != out.kind() {
        return Err(not_of_type(out, new));
    }
    match known_new {
        Some(k) if !k.same_account => Err(in_use(new)),
        Some(k) => joinable(new, k),
        None => Ok(()),
    }
}

fn not_of_type(member: &HostId, h: &HostId) -> DomainError {
    DomainError::new(
        ErrorCode::HostidTypeMismatch,
        format!(
            "{member} is of type {} but {h} is of type {}; a cluster's hostids must be of the \
             same type",
            member.kind(),
            h.kind()
        ),
    )
}

/// Whether a server of the account the registry knows may be made a member of a cluster
/// it does not register itself: only a waiting backup (no pair, no cluster, no rights).
fn joinable(h: &HostId, k: &Known) -> Result<(), DomainError> {
    if let Some(c) = &k.cluster {
        return Err(DomainError::new(
            ErrorCode::RoleConflict,
            format!(
                "{h} is already a member of the cluster of {}; a server is in one cluster",
                hostid_list(&c.members)
            ),
        ));
    }
    in_a_pair(h, k)?;
    if k.state != ServerState::Waiting {
        return Err(DomainError::new(
            ErrorCode::RoleConflict,
            format!(
                "{h} is registered as a {} server; a standalone server joins a cluster only \
                 by registering it, with its own first request as a member (its rights \
                 become the cluster's), never by being named by another or added by hand",
                k.role
            ),
        ));
    }
    Ok(())
}

/// A server of a pair is no cluster member.
fn in_a_pair(h: &HostId, k: &Known) -> Result<(), DomainError> {
    if k.pair.is_some() || k.role == Role::Main {
        return Err(DomainError::new(
            ErrorCode::RoleConflict,
            format!(
                "{h} is registered as the {} of a failover pair; a server is in one pair or \
                 one cluster",
                k.role
            ),
        ));
    }
    Ok(())
}

/// Decides what a capability request does: [`plan_member`] for a cluster member (a
/// request naming `cluster_member_hostids`, which goes with role `standalone` and no
/// backup), [`plan`] for any other. `known_others` is what the registry knows of each of
/// the other members named, in order (left empty, the rules decide without them: only a
/// registration needs them).
pub fn plan_request(
    req: &CapabilityRequest,
    known: Option<&Known>,
    known_backup: Option<&Known>,
    known_others: &[Option<&Known>],
) -> Result<Plan, DomainError> {
    if req.cluster_member_hostids.is_empty() {
        return plan(
            &req.hostid,
            req.role,
            req.backup_hostid.as_ref(),
            known,
            known_backup,
        );
    }
    if req.role != Role::Standalone || req.backup_hostid.is_some() {
        return Err(DomainError::validation(
            "cluster_member_hostids",
            format!(
                "a cluster member sends role standalone and no backup_hostid (this request: \
                 role {}); a server is in one pair or one cluster",
                req.role
            ),
        ));
    }
    plan_member(
        &req.hostid,
        &req.cluster_member_hostids,
        known,
        known_others,
    )
}

/// The error a waiting backup is answered with.
pub fn waiting_backup_error(b: &HostId) -> DomainError {
    main_not_registered(b)
}

/// The rule for rights asked for in a request: ensure at least `count` of a line item is
/// mapped to the holder. Returns the new mapped quantity for the holder, or an error.
///
/// `mapped_here` is what the holder already has, `mapped_total` what all holders have,
/// `quantity` the line item's quantity.
pub fn ensure_mapping(
    activation_id: &str,
    count: i64,
    mapped_here: i64,
    mapped_total: i64,
    quantity: i64,
) -> Result<Option<i64>, DomainError> {
    if count <= mapped_here {
        return Ok(None);
    }
    let needed = count - mapped_here;
    let available = quantity - mapped_total;
    if needed > available {
        return Err(DomainError::new(
            ErrorCode::InsufficientQuantity,
            format!(
                "{activation_id}: asked for {count}, this server has {mapped_here} and \
                 {available} more are unmapped (quantity {quantity})"
            ),
        ));
    }
    Ok(Some(count))
}

/// Adding `quantity` to a line item's mappings: the new total must stay within its quantity.
pub fn check_map(
    activation_id: &str,
    add: i64,
    mapped_total: i64,
    quantity: i64,
) -> Result<(), DomainError> {
    if add <= 0 {
        return Err(DomainError::validation(
            "quantity",
            "the quantity must be at least 1",
        ));
    }
    if mapped_total + add > quantity {
        return Err(DomainError::new(
            ErrorCode::InsufficientQuantity,
            format!(
                "{activation_id}: {} of {quantity} are unmapped; cannot map {add}",
                quantity - mapped_total
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> HostId {
        HostId::parse(s).unwrap()
    }

    fn known(role: Role, state: ServerState, pair: Option<KnownPair>) -> Known {
        Known {
            server_id: "s".into(),
            same_account: true,
            role,
            state,
            pair,
            cluster: None,
        }
    }

    fn hs(list: &[&str]) -> Vec<HostId> {
        list.iter().map(|s| h(s)).collect()
    }

    fn member_of(members: &[&str]) -> Known {
        let mut k = known(Role::Standalone, ServerState::Registered, None);
        let mut m = hs(members);
        m.sort_by_key(ToString::to_string);
        k.cluster = Some(KnownCluster {
            cluster_id: "c".into(),
            holder_server_id: "s".into(),
            members: m,
        });
        k
    }

    fn code(r: Result<Plan, DomainError>) -> ErrorCode {
        r.unwrap_err().code()
    }

    #[test]
    fn the_first_member_registers_the_cluster_and_the_others_find_it() {
        let a = h("string:a");
        let others = hs(&["string:b", "string:c"]);
        // Whether or not the caller looked the other two up: all three are registered.
        for known_others in [&[None, None][..], &[]] {
            let Plan::RegisterCluster { members } =
                plan_member(&a, &others, None, known_others).unwrap()
            else {
                panic!("not a registration");
            };
            assert_eq!(members[0], (a.clone(), None));
            assert_eq!(members.len(), 3);
        }
        // The cluster registered (by a member or in the portal): each member, naming the
        // other two in any order, is known.
        let k = member_of(&["string:a", "string:b", "string:c"]);
        for (me, o) in [
            ("string:a", ["string:c", "string:b"]),
            ("string:b", ["string:a", "string:c"]),
            ("string:c", ["string:b", "string:a"]),
        ] {
            assert_eq!(
                plan_member(&h(me), &hs(&o), Some(&k), &[Some(&k), Some(&k)]).unwrap(),
                Plan::Known
            );
        }
        // A standalone server that registers a cluster keeps its row (and its rights); a
        // waiting backup named as a member is adopted.
        let solo = known(Role::Standalone, ServerState::Registered, None);
        let waiting = known(Role::Backup, ServerState::Waiting, None);
        assert!(matches!(
            plan_member(&a, &others, Some(&solo), &[Some(&waiting), None]).unwrap(),
            Plan::RegisterCluster { members } if members[0].1.is_some() && members[1].1.is_some()
        ));
    }

    #[test]
    fn a_member_list_must_name_two_other_distinct_hostids_of_its_type() {
        let a = h("string:a");
        let bad = |others: &[&str]| code(plan_member(&a, &hs(others), None, &[None, None]));
        assert_eq!(bad(&["string:b"]), ErrorCode::ValidationError);
        assert_eq!(
            bad(&["string:b", "string:c", "string:d"]),
            ErrorCode::ValidationError
        );
        assert_eq!(bad(&["string:a", "string:b"]), ErrorCode::ValidationError);
        assert_eq!(bad(&["string:b", "string:b"]), ErrorCode::ValidationError);
        assert_eq!(
            bad(&["string:b", "ethernet:00163E5A1B2C"]),
            ErrorCode::HostidTypeMismatch
        );
    }

    #[test]
    fn a_member_of_another_cluster_or_a_pair_or_another_account_is_refused() {
        let a = h("string:a");
        let others = hs(&["string:b", "string:c"]);
        let theirs = member_of(&["string:b", "string:x", "string:y"]);
        // A fourth server naming members of a cluster.
        let e = plan_member(&a, &others, None, &[Some(&theirs), None]).unwrap_err();
        assert_eq!(e.code(), ErrorCode::RoleConflict);
        assert!(
            e.message.contains("string:b, string:x, string:y"),
            "{}",
            e.message
        );
        // A member that names another set than its cluster's: both sets named.
        let mine = member_of(&["string:a", "string:b", "string:d"]);
        let e = plan_member(&a, &others, Some(&mine), &[Some(&mine), None]).unwrap_err();
        assert_eq!(e.code(), ErrorCode::RoleConflict);
        assert!(
            e.message.contains("string:a, string:b, string:d")
                && e.message.contains("string:a, string:b, string:c"),
            "{}",
            e.message
        );
        // Pair members, either side.
        let pair = KnownPair {
            pair_id: "p".into(),
            main_server_id: "s".into(),
            main_hostid: h("string:m"),
            backup_hostid: Some(h("string:b")),
        };
        let main = known(Role::Main, ServerState::Registered, Some(pair.clone()));
        let backup = known(Role::Backup, ServerState::Expected, Some(pair));
        assert_eq!(
            code(plan_member(&a, &others, Some(&main), &[None, None])),
            ErrorCode::RoleConflict
        );
        assert_eq!(
            code(plan_member(&a, &others, None, &[Some(&backup), None])),
            ErrorCode::RoleConflict
        );
        // A registered standalone server named by another.
        let solo = known(Role::Standalone, ServerState::Registered, None);
        assert_eq!(
            code(plan_member(&a, &others, None, &[None, Some(&solo)])),
            ErrorCode::RoleConflict
        );
        // Another account's hostid, without saying whose.
        let mut foreign = known(Role::Standalone, ServerState::Registered, None);
        foreign.same_account = false;
        let e = plan_member(&a, &others, None, &[None, Some(&foreign)]).unwrap_err();
        assert_eq!(e.code(), ErrorCode::HostidInUse);
        assert!(!e.message.contains("another account"), "{}", e.message);
    }

    #[test]
    fn a_member_is_replaced_only_by_a_free_server_of_its_type() {
        let k = member_of(&["string:a", "string:b", "string:c"]);
        let c = k.cluster.clone().unwrap();
        let (a, d) = (h("string:a"), h("string:d"));
        assert!(plan_replace(&c, &a, &d, None).is_ok());
        let waiting = known(Role::Backup, ServerState::Waiting, None);
        assert!(plan_replace(&c, &a, &d, Some(&waiting)).is_ok());
        let bad = |out: &str, new: &str, k: Option<&Known>| {
            plan_replace(&c, &h(out), &h(new), k).unwrap_err().code()
        };
        assert_eq!(
            bad("string:x", "string:d", None),
            ErrorCode::ValidationError
        );
        assert_eq!(
            bad("string:a", "string:b", None),
            ErrorCode::ValidationError
        );
        assert_eq!(
            bad("string:a", "ethernet:00163E5A1B2C", None),
            ErrorCode::HostidTypeMismatch
        );
        let other = member_of(&["string:d", "string:e", "string:f"]);
        assert_eq!(
            bad("string:a", "string:d", Some(&other)),
            ErrorCode::RoleConflict
        );
        let solo = known(Role::Standalone, ServerState::Registered, None);
        assert_eq!(
            bad("string:a", "string:d", Some(&solo)),
            ErrorCode::RoleConflict
        );
        let mut foreign = known(Role::Standalone, ServerState::Registered, None);
        foreign.same_account = false;
        assert_eq!(
            bad("string:a", "string:d", Some(&foreign)),
            ErrorCode::HostidInUse
        );
    }

    #[test]
    fn a_cluster_member_cannot_start_standalone_or_in_a_pair() {
        let k = member_of(&["string:a", "string:b", "string:c"]);
        let a = h("string:a");
        assert_eq!(
            code(plan(&a, Role::Standalone, None, Some(&k), None)),
            ErrorCode::RoleConflict
        );
        assert_eq!(
            code(plan(&a, Role::Backup, None, Some(&k), None)),
            ErrorCode::RoleConflict
        );
        assert_eq!(
            code(plan(&a, Role::Main, Some(&h("string:z")), Some(&k), None)),
            ErrorCode::RoleConflict
        );
        // Named as a pair's backup.
        let e = plan(&h("string:m"), Role::Main, Some(&a), None, Some(&k)).unwrap_err();
        assert_eq!(e.code(), ErrorCode::RoleConflict);
        assert!(e.message.contains("cluster"), "{}", e.message);
    }

    #[test]
    fn backup_before_main_is_refused_and_recorded() {
        let b = h("string:b");
        assert_eq!(
            plan(&b, Role::Backup, None, None, None).unwrap(),
            Plan::RecordWaitingBackup { existing: None }
        );
        let waiting = known(Role::Backup, ServerState::Waiting, None);
        assert!(matches!(
            plan(&b, Role::Backup, None, Some(&waiting), None).unwrap(),
            Plan::RecordWaitingBackup { existing: Some(_) }
        ));
        // A waiting backup never passes for a main of anything: the main's request adopts it.
        let m = h("string:m");
        assert!(matches!(
            plan(&m, Role::Main, Some(&b), None, Some(&waiting)).unwrap(),
            Plan::RegisterPair {
                main: None,
                backup: Some(_),
                pair: None
            }
        ));
    }

    #[test]
    fn backup_of_registered_pair_is_known() {
        let b = h("string:b");
        let pair = KnownPair {
            pair_id: "p".into(),
            main_server_id: "s".into(),
            main_hostid: h("string:m"),
            backup_hostid: Some(b.clone()),
        };
        let k = known(Role::Backup, ServerState::Expected, Some(pair));
        assert_eq!(
            plan(&b, Role::Backup, None, Some(&k), None).unwrap(),
            Plan::Known
        );
    }

    #[test]
    fn hostid_types_must_match() {
        let e = plan(
            &h("string:m"),
            Role::Main,
            Some(&h("ethernet:00163E5A1B2C")),
            None,
            None,
        )
        .unwrap_err();
        assert_eq!(e.code(), ErrorCode::HostidTypeMismatch);
    }

    #[test]
    fn another_accounts_hostid_is_in_use() {
        let mut k = known(Role::Standalone, ServerState::Registered, None);
        k.same_account = false;
        let e = plan(&h("string:m"), Role::Standalone, None, Some(&k), None).unwrap_err();
        assert_eq!(e.code(), ErrorCode::HostidInUse);
        // Nothing about who holds it.
        assert!(!e.message.contains("another account"), "{}", e.message);
        let e = plan(
            &h("string:m"),
            Role::Main,
            Some(&h("string:b")),
            None,
            Some(&k),
        )
        .unwrap_err();
        assert_eq!(e.code(), ErrorCode::HostidInUse);
    }

    #[test]
    fn role_conflicts() {
        let m = h("string:m");
        let b = h("string:b");
        let pair = KnownPair {
            pair_id: "p".into(),
            main_server_id: "s".into(),
            main_hostid: m.clone(),
            backup_hostid: Some(b.clone()),
        };
        // The main restarted without BACKUP_SERVER_HOSTID.
        let km = known(Role::Main, ServerState::Registered, Some(pair.clone()));
        let e = plan(&m, Role::Standalone, None, Some(&km), None).unwrap_err();
        assert_eq!(e.code(), ErrorCode::RoleConflict);
        // The backup claims to be a main.
        let kb = known(Role::Backup, ServerState::Registered, Some(pair.clone()));
        let e = plan(&b, Role::Main, Some(&h("string:c")), Some(&kb), None).unwrap_err();
        assert_eq!(e.code(), ErrorCode::RoleConflict);
        // A main names a different backup than its pair has.
        let e = plan(&m, Role::Main, Some(&h("string:c")), Some(&km), None).unwrap_err();
        assert_eq!(e.code(), ErrorCode::RoleConflict);
        // A standalone server named as a backup.
        let ks = known(Role::Standalone, ServerState::Registered, None);
        let e = plan(&h("string:x"), Role::Main, Some(&b), None, Some(&ks)).unwrap_err();
        assert_eq!(e.code(), ErrorCode::RoleConflict);
        // A standalone server starting as backup.
        let e = plan(&b, Role::Backup, None, Some(&ks), None).unwrap_err();
        assert_eq!(e.code(), ErrorCode::RoleConflict);
    }

    #[test]
    fn main_matches_pair_registered_by_hand() {
        let m = h("string:m");
        let b = h("string:b");
        let pair = KnownPair {
            pair_id: "p".into(),
            main_server_id: "s".into(),
            main_hostid: m.clone(),
            backup_hostid: Some(b.clone()),
        };
        let km = known(Role::Main, ServerState::Expected, Some(pair.clone()));
        let kb = known(Role::Backup, ServerState::Expected, Some(pair));
        assert_eq!(
            plan(&m, Role::Main, Some(&b), Some(&km), Some(&kb)).unwrap(),
            Plan::RegisterPair {
                main: Some("s".into()),
                backup: Some("s".into()),
                pair: Some("p".into())
            }
        );
    }

    /// The storage's fast path plans without the backup's row: a main already paired with
    /// the backup it names is `Known` whatever that row says, and only then.
    #[test]
    fn registered_main_is_known_without_the_backups_row() {
        let m = h("string:m");
        let b = h("string:b");
        let pair = KnownPair {
            pair_id: "p".into(),
            main_server_id: "s".into(),
            main_hostid: m.clone(),
            backup_hostid: Some(b.clone()),
        };
        let km = known(Role::Main, ServerState::Registered, Some(pair.clone()));
        let mut other = known(Role::Standalone, ServerState::Registered, None);
        other.same_account = false;
        for kb in [
            None,
            Some(known(
                Role::Backup,
                ServerState::Expected,
                Some(pair.clone()),
            )),
            Some(known(Role::Backup, ServerState::Registered, Some(pair))),
            Some(other),
        ] {
            assert_eq!(
                plan(&m, Role::Main, Some(&b), Some(&km), kb.as_ref()).unwrap(),
                Plan::Known
            );
        }
        let expected = known(Role::Main, ServerState::Expected, km.pair.clone());
        assert_ne!(
            plan(&m, Role::Main, Some(&b), Some(&expected), None).unwrap(),
            Plan::Known
        );
    }

    #[test]
    fn mapping_quantities() {
        assert_eq!(ensure_mapping("A", 5, 0, 0, 10).unwrap(), Some(5));
        assert_eq!(ensure_mapping("A", 5, 5, 5, 10).unwrap(), None);
        assert_eq!(
            ensure_mapping("A", 8, 5, 9, 10).unwrap_err().code(),
            ErrorCode::InsufficientQuantity
        );
        assert_eq!(ensure_mapping("A", 6, 5, 9, 10).unwrap(), Some(6));
        assert!(check_map("A", 10, 0, 10).is_ok());
        assert_eq!(
            check_map("A", 1, 10, 10).unwrap_err().code(),
            ErrorCode::InsufficientQuantity
        );
        assert_eq!(
            check_map("A", 0, 0, 10).unwrap_err().code(),
            ErrorCode::ValidationError
        );
    }
}
