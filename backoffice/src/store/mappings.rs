//! Rights mapped to license servers: quantities of a line item given to a standalone server,
//! to a pair (held by its main) or to a three-member cluster (held by one member's row,
//! counted once), by hand or by a server's startup request, never more than the line
//! item's quantity; and the rights a holder has.

use std::collections::HashMap;

use diesel::prelude::*;
use serde::Serialize;
use shared::ErrorCode;
use shared::capability::{Right, Role};
use utoipa::ToSchema;

use super::servers::{account_server, holder_of};
use super::{lock_account, new_id};
use crate::db::DbConn;
use crate::domain::{registry as rules, validate};
use crate::error::{AppError, AppResult};
use crate::on_backend;
use crate::schema::{features, line_items, mappings, products};

/// Some of a line item, mapped to a holder.
#[derive(Clone, Debug, Serialize, PartialEq, Eq, ToSchema)]
pub struct Mapping {
    pub id: String,
    pub line_item_id: String,
    #[schema(example = "ACT-7K3M-Q9ZD-2WXR-H4TN")]
    pub activation_id: String,
    /// The server that holds the rights: the pair's main, the cluster's holder, or a
    /// standalone server.
    pub server_id: String,
    /// All of the line item now mapped to this holder.
    #[schema(example = 5)]
    pub quantity: i64,
}

/// A right as the View Server page lists it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq, ToSchema)]
pub struct MappedRight {
    pub mapping_id: String,
    pub line_item_id: String,
    pub activation_id: String,
    pub product_name: String,
    pub product_version: String,
    pub quantity: i64,
    /// Unix time, seconds.
    #[schema(format = Int64, minimum = 0, example = 1798366799)]
    pub starts_at: i64,
    /// Unix time, seconds; absent for a permanent right.
    #[schema(format = Int64, minimum = 0, example = 1829902799)]
    pub expires_at: Option<i64>,
    pub features: Vec<FeatureRef>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq, ToSchema)]
pub struct FeatureRef {
    pub name: String,
    pub version: String,
}

/// A line item of the account, by activation ID: (id, quantity).
fn line_item(conn: &mut DbConn, account_id: &str, activation_id: &str) -> AppResult<(String, i64)> {
    line_items::table
        .filter(line_items::activation_id.eq(activation_id))
        .filter(line_items::account_id.eq(account_id))
        .select((line_items::id, line_items::quantity))
        .first(conn)
        .optional()?
        .ok_or_else(|| unknown_rights(activation_id))
}

/// A line item's mappings: (mapping, holder, quantity).
fn mappings_of(conn: &mut DbConn, item_id: &str) -> AppResult<Vec<(String, String, i64)>> {
    Ok(mappings::table
        .filter(mappings::line_item_id.eq(item_id))
        .select((mappings::id, mappings::server_id, mappings::quantity))
        .load(conn)?)
}

/// Sets the holder's mapping of a line item to `quantity` (creating it if needed).
fn set_mapping(
    conn: &mut DbConn,
    account_id: &str,
    item_id: &str,
    holder: &str,
    existing: Option<&str>,
    quantity: i64,
    now: i64,
) -> AppResult<String> {
    if let Some(mid) = existing {
        diesel::update(mappings::table.find(mid))
            .set(mappings::quantity.eq(quantity))
            .execute(conn)?;
        return Ok(mid.to_owned());
    }
    let mid = new_id();
    diesel::insert_into(mappings::table)
        .values((
            mappings::id.eq(&mid),
            mappings::account_id.eq(account_id),
            mappings::line_item_id.eq(item_id),
            mappings::server_id.eq(holder),
            mappings::quantity.eq(quantity),
            mappings::created_at.eq(now),
        ))
        .execute(conn)?;
    Ok(mid)
}

/// Maps `quantity` more of a line item to a server or its pair.
pub fn map_rights(
    conn: &mut DbConn,
    account_id: &str,
    activation_id: &str,
    server_id: &str,
    quantity: i64,
) -> AppResult<Mapping> {
    validate::quantity("quantity", quantity)?;
    let now = shared::now_unix();
    conn.write_transaction::<_, AppError, _>(|c| {
        lock_account(c, account_id)?;
        let (item_id, total_qty) = line_item(c, account_id, activation_id)?;
        let row = account_server(c, account_id, server_id)?;
        if row.role() == Role::Backup && row.pair_id.is_none() {
            return Err(AppError::new(
                ErrorCode::RoleConflict,
                "this backup has no registered main; map rights to the main or the pair",
            ));
        }
        let holder = holder_of(c, &row)?;
        let maps = mappings_of(c, &item_id)?;
        let total: i64 = maps.iter().map(|m| m.2).sum();
        rules::check_map(activation_id, quantity, total, total_qty)?;
        let here = maps.iter().find(|m| m.1 == holder);
        let qty = here.map_or(0, |m| m.2) + quantity;
        let id = set_mapping(
            c,
            account_id,
            &item_id,
            &holder,
            here.map(|m| m.0.as_str()),
            qty,
            now,
        )?;
        Ok(Mapping {
            id,
            line_item_id: item_id,
            activation_id: activation_id.to_owned(),
            server_id: holder,
            quantity: qty,
        })
    })
}

/// Removes a mapping; the rights leave the servers at their next poll.
pub fn unmap(conn: &mut DbConn, account_id: &str, mapping_id: &str) -> AppResult<()> {
    conn.write_transaction::<_, AppError, _>(|c| {
        lock_account(c, account_id)?;
        let n = diesel::delete(
            mappings::table
                .filter(mappings::id.eq(mapping_id))
                .filter(mappings::account_id.eq(account_id)),
        )
        .execute(c)?;
        if n == 0 {
            return Err(AppError::not_found("mapping"));
        }
        Ok(())
    })
}

/// Ensures at least `count` of the line item with `activation_id` is mapped to `holder`
/// (a server's startup request asking for rights).
pub(super) fn ensure_rights(
    conn: &mut DbConn,
    account_id: &str,
    holder: &str,
    activation_id: &str,
    count: i64,
    now: i64,
) -> AppResult<()> {
    let (item_id, quantity) = line_item(conn, account_id, activation_id)?;
    let maps = mappings_of(conn, &item_id)?;
    let here = maps.iter().find(|m| m.1 == holder);
    let total: i64 = maps.iter().map(|m| m.2).sum();
    let new_qty = rules::ensure_mapping(
        activation_id,
        count,
        here.map_or(0, |m| m.2),
        total,
        quantity,
    )?;
    if let Some(q) = new_qty {
        set_mapping(
            conn,
            account_id,
            &item_id,
            holder,
            here.map(|m| m.0.as_str()),
            q,
            now,
        )?;
    }
    Ok(())
}

fn unknown_rights(activation_id: &str) -> AppError {
    AppError::new(
        ErrorCode::UnknownRightsId,
        format!(
            "no line item of this account has activation ID {}",
            activation_id.chars().take(64).collect::<String>()
        ),
    )
}

/// The rights mapped to a holder, with their products and features, by activation ID.
pub(super) fn mapped_rights(conn: &mut DbConn, holder: &str) -> AppResult<Vec<MappedRight>> {
    /// mapping, line item, activation ID, product name and version, quantity, start,
    /// expiry, product.
    type Row = (
        String,
        String,
        String,
        String,
        String,
        i64,
        i64,
        Option<i64>,
        String,
    );
    let maps: Vec<Row> = mappings::table
        .inner_join(line_items::table.inner_join(products::table))
        .filter(mappings::server_id.eq(holder))
        .select((
            mappings::id,
            line_items::id,
            line_items::activation_id,
            products::name,
            products::version,
            mappings::quantity,
            line_items::starts_at,
            line_items::expires_at,
            line_items::product_id,
        ))
        .order(line_items::activation_id)
        .load(conn)?;
    let mut rights = Vec::with_capacity(maps.len());
    for (mapping_id, line_item_id, activation_id, name, version, quantity, starts, expires, pid) in
        maps
    {
        let feats: Vec<(String, String)> = features::table
            .filter(features::product_id.eq(&pid))
            .select((features::name, features::version))
            .order(features::name)
            .load(conn)?;
        rights.push(MappedRight {
            mapping_id,
            line_item_id,
            activation_id,
            product_name: name,
            product_version: version,
            quantity,
            starts_at: starts,
            expires_at: expires,
            features: feats
                .into_iter()
                .map(|(name, version)| FeatureRef { name, version })
                .collect(),
        });
    }
    Ok(rights)
}

/// Rights mapped to holders as capability answers list them, by holder: one entry per
/// (line item, feature), in one query for all of them.
pub(super) fn rights_of(
    conn: &mut DbConn,
    holders: &[&str],
) -> AppResult<HashMap<String, Vec<Right>>> {
    if holders.is_empty() {
        return Ok(HashMap::new());
    }
    type Row = (
        String,
        String,
        i64,
        i64,
        Option<i64>,
        Option<i64>,
        i64,
        String,
        String,
    );
    let rows: Vec<Row> = on_backend!(conn, |c| mappings::table
        .inner_join(line_items::table)
        .inner_join(features::table.on(features::product_id.eq(line_items::product_id)))
        .filter(mappings::server_id.eq_any(holders))
        .select((
            mappings::server_id,
            line_items::activation_id,
            mappings::quantity,
            line_items::starts_at,
            line_items::expires_at,
            line_items::max_borrow_secs,
            line_items::overdraft,
            features::name,
            features::version,
        ))
        .order((line_items::activation_id, features::name))
        .load(c))?;
    let mut by_holder: HashMap<String, Vec<Right>> = HashMap::new();
    for (holder, activation_id, qty, starts_at, expires_at, borrow, overdraft, feature, version) in
        rows
    {
        by_holder.entry(holder).or_default().push(Right {
            activation_id,
            feature,
            version,
            count: u32::try_from(qty).unwrap_or(u32::MAX),
            starts_at,
            expires_at,
            max_borrow_secs: borrow.and_then(|s| u64::try_from(s).ok()),
            overdraft: u32::try_from(overdraft).unwrap_or(0),
        });
    }
    Ok(by_holder)
}
