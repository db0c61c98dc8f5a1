//! Products and features, customer accounts, entitlements and their line items.

use diesel::prelude::*;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use shared::ErrorCode;

use super::{lock_account, new_id, unique_or};
use crate::db::DbConn;
use crate::domain::{catalog as rules, validate};
use crate::error::{AppError, AppResult};
use crate::schema::{accounts, entitlements, features, line_items, mappings, products, servers};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FeatureSpec {
    pub name: String,
    #[serde(default)]
    pub version: String,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq, ToSchema)]
pub struct Feature {
    pub id: String,
    pub name: String,
    pub version: String,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq, ToSchema)]
pub struct Product {
    pub id: String,
    pub name: String,
    pub version: String,
    /// Unix time, seconds.
    #[schema(format = Int64, minimum = 0, example = 1798366799)]
    pub created_at: i64,
    pub features: Vec<Feature>,
}

/// A feature name, as the input `field` (`features.name` in a product, `name` alone).
fn feature_name(field: &str, value: &str) -> AppResult<String> {
    let v = validate::name(field, value)?;
    if v.len() > 64
        || !v
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Err(AppError::validation(
            field,
            "a feature name is 1 to 64 letters, digits, `_`, `-` or `.`",
        ));
    }
    Ok(v)
}

fn version(field: &str, value: &str) -> AppResult<String> {
    let v = value.trim();
    if v.len() > 32 || v.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(AppError::validation(
            field,
            "a version is at most 32 characters without spaces",
        ));
    }
    Ok(v.to_owned())
}

pub fn create_product(
    conn: &mut DbConn,
    name: &str,
    product_version: &str,
    feature_specs: &[FeatureSpec],
) -> AppResult<Product> {
    let name = validate::name("name", name)?;
    let product_version = version("version", product_version)?;
    if feature_specs.len() > 200 {
        return Err(AppError::validation(
            "features",
            "at most 200 features per product",
        ));
    }
    let mut specs = Vec::with_capacity(feature_specs.len());
    for f in feature_specs {
        let n = feature_name("features.name", &f.name)?;
        if specs.iter().any(|(m, _): &(String, String)| *m == n) {
            return Err(AppError::validation(
                "features.name",
                format!("feature {n} is listed twice"),
            ));
        }
        specs.push((n, version("features.version", &f.version)?));
    }
    let product = Product {
        id: new_id(),
        name,
        version: product_version,
        created_at: shared::now_unix(),
        features: specs
            .into_iter()
            .map(|(name, version)| Feature {
                id: new_id(),
                name,
                version,
            })
            .collect(),
    };
    conn.write_transaction::<_, AppError, _>(|c| {
        diesel::insert_into(products::table)
            .values((
                products::id.eq(&product.id),
                products::name.eq(&product.name),
                products::version.eq(&product.version),
                products::created_at.eq(product.created_at),
            ))
            .execute(c)
            .map_err(|e| {
                unique_or(e, || {
                    AppError::already_exists("name", "a product of that name and version exists")
                })
            })?;
        for f in &product.features {
            insert_feature(c, &product.id, f)?;
        }
        Ok(())
    })?;
    Ok(product)
}

fn insert_feature(conn: &mut DbConn, product_id: &str, f: &Feature) -> AppResult<()> {
    diesel::insert_into(features::table)
        .values((
            features::id.eq(&f.id),
            features::product_id.eq(product_id),
            features::name.eq(&f.name),
            features::version.eq(&f.version),
        ))
        .execute(conn)
        .map_err(|e| {
            unique_or(e, || {
                AppError::already_exists("name", "the product has that feature already")
            })
        })?;
    Ok(())
}

pub fn add_feature(conn: &mut DbConn, product_id: &str, spec: &FeatureSpec) -> AppResult<Feature> {
    let f = Feature {
        id: new_id(),
        name: feature_name("name", &spec.name)?,
        version: version("version", &spec.version)?,
    };
    let exists: i64 = products::table.find(product_id).count().get_result(conn)?;
    if exists == 0 {
        return Err(AppError::not_found("product"));
    }
    insert_feature(conn, product_id, &f)?;
    Ok(f)
}

pub fn list_products(conn: &mut DbConn) -> AppResult<Vec<Product>> {
    let rows: Vec<(String, String, String, i64)> = products::table
        .select((
            products::id,
            products::name,
            products::version,
            products::created_at,
        ))
        .order((products::name, products::version))
        .load(conn)?;
    let feats: Vec<(String, String, String, String)> = features::table
        .select((
            features::product_id,
            features::id,
            features::name,
            features::version,
        ))
        .order(features::name)
        .load(conn)?;
    Ok(rows
        .into_iter()
        .map(|(id, name, version, created_at)| Product {
            features: feats
                .iter()
                .filter(|f| f.0 == id)
                .map(|(_, fid, n, v)| Feature {
                    id: fid.clone(),
                    name: n.clone(),
                    version: v.clone(),
                })
                .collect(),
            id,
            name,
            version,
            created_at,
        })
        .collect())
}

pub fn get_product(conn: &mut DbConn, id: &str) -> AppResult<Product> {
    let (pid, name, version, created_at): (String, String, String, i64) = products::table
        .find(id)
        .select((
            products::id,
            products::name,
            products::version,
            products::created_at,
        ))
        .first(conn)
        .optional()?
        .ok_or_else(|| AppError::not_found("product"))?;
    let feats: Vec<(String, String, String)> = features::table
        .filter(features::product_id.eq(&pid))
        .select((features::id, features::name, features::version))
        .order(features::name)
        .load(conn)?;
    Ok(Product {
        id: pid,
        name,
        version,
        created_at,
        features: feats
            .into_iter()
            .map(|(id, name, version)| Feature { id, name, version })
            .collect(),
    })
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq, ToSchema)]
pub struct Account {
    pub id: String,
    pub name: String,
    /// Unix time, seconds.
    #[schema(format = Int64, minimum = 0, example = 1798366799)]
    pub created_at: i64,
}

pub fn create_account(conn: &mut DbConn, name: &str) -> AppResult<Account> {
    let account = Account {
        id: new_id(),
        name: validate::name("name", name)?,
        created_at: shared::now_unix(),
    };
    diesel::insert_into(accounts::table)
        .values((
            accounts::id.eq(&account.id),
            accounts::name.eq(&account.name),
            accounts::lock_version.eq(0),
            accounts::created_at.eq(account.created_at),
        ))
        .execute(conn)
        .map_err(|e| {
            unique_or(e, || {
                AppError::already_exists("name", "an account of that name exists")
            })
        })?;
    Ok(account)
}

pub fn list_accounts(conn: &mut DbConn) -> AppResult<Vec<Account>> {
    let rows: Vec<(String, String, i64)> = accounts::table
        .select((accounts::id, accounts::name, accounts::created_at))
        .order(accounts::name)
        .load(conn)?;
    Ok(rows
        .into_iter()
        .map(|(id, name, created_at)| Account {
            id,
            name,
            created_at,
        })
        .collect())
}

pub fn get_account(conn: &mut DbConn, id: &str) -> AppResult<Account> {
    let (id, name, created_at): (String, String, i64) = accounts::table
        .find(id)
        .select((accounts::id, accounts::name, accounts::created_at))
        .first(conn)
        .optional()?
        .ok_or_else(|| AppError::not_found("account"))?;
    Ok(Account {
        id,
        name,
        created_at,
    })
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LineItemSpec {
    pub product_id: String,
    /// Seats, 1 to 1,000,000.
    #[schema(minimum = 1, maximum = 1_000_000, example = 10)]
    pub quantity: i64,
    /// When the rights start (Unix time, seconds, not milliseconds); now when absent.
    #[serde(default)]
    #[schema(format = Int64, minimum = 0, maximum = 253_402_300_799_i64, example = 1798366799)]
    pub starts_at: Option<i64>,
    /// When they end (Unix time, seconds, not milliseconds); permanent when absent.
    #[serde(default)]
    #[schema(format = Int64, minimum = 0, maximum = 253_402_300_799_i64, example = 1829902799)]
    pub expires_at: Option<i64>,
    /// Clients may borrow its seats (use them offline) for up to `max_borrow_secs`.
    #[serde(default)]
    pub borrowable: bool,
    /// The longest borrow, 60 seconds to 365 days; only with `borrowable`.
    #[serde(default)]
    #[schema(minimum = 60, maximum = 31_536_000, example = 604800)]
    pub max_borrow_secs: Option<i64>,
    /// Seats a server may grant beyond the count once it is used up, marked as overdraft
    /// and reported as overage; 0 (none) when absent.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 1_000_000, example = 2)]
    pub overdraft: i64,
}

/// Where some of a line item is mapped.
#[derive(Clone, Debug, Serialize, PartialEq, Eq, ToSchema)]
pub struct MappedTo {
    pub mapping_id: String,
    pub server_id: String,
    pub hostid: String,
    pub quantity: i64,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq, ToSchema)]
pub struct LineItem {
    pub id: String,
    pub entitlement_id: String,
    pub activation_id: String,
    pub product_id: String,
    pub product_name: String,
    pub product_version: String,
    pub quantity: i64,
    pub mapped: i64,
    /// Unix time, seconds.
    #[schema(format = Int64, minimum = 0, example = 1798366799)]
    pub starts_at: i64,
    /// Unix time, seconds; absent for a permanent right.
    #[schema(format = Int64, minimum = 0, example = 1829902799)]
    pub expires_at: Option<i64>,
    /// Clients may borrow its seats for up to `max_borrow_secs`.
    pub borrowable: bool,
    /// The longest borrow in seconds; absent when not borrowable.
    #[schema(example = 604800)]
    pub max_borrow_secs: Option<i64>,
    /// Seats beyond the count a server may grant (0: none).
    #[schema(example = 2)]
    pub overdraft: i64,
    pub mappings: Vec<MappedTo>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq, ToSchema)]
pub struct Entitlement {
    pub id: String,
    pub account_id: String,
    pub name: String,
    /// Unix time, seconds.
    #[schema(format = Int64, minimum = 0, example = 1798366799)]
    pub created_at: i64,
    pub line_items: Vec<LineItem>,
}

/// A new activation ID: `ACT-XXXX-XXXX-XXXX-XXXX`, 80 random bits in Crockford base32.
pub fn new_activation_id() -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let bytes = shared::random_bytes::<10>();
    let mut bits: u128 = 0;
    for b in bytes {
        bits = (bits << 8) | u128::from(b);
    }
    let mut s = String::from("ACT");
    for i in 0..16 {
        if i % 4 == 0 {
            s.push('-');
        }
        let idx = ((bits >> (75 - 5 * i)) & 31) as usize;
        s.push(ALPHABET[idx] as char);
    }
    s
}

pub fn create_entitlement(
    conn: &mut DbConn,
    account_id: &str,
    name: &str,
    items: &[LineItemSpec],
) -> AppResult<Entitlement> {
    let name = validate::name("name", name)?;
    if items.is_empty() || items.len() > 100 {
        return Err(AppError::validation(
            "line_items",
            "an entitlement has 1 to 100 line items",
        ));
    }
    let now = shared::now_unix();
    let mut policies = Vec::with_capacity(items.len());
    for item in items {
        validate::quantity("line_items.quantity", item.quantity)?;
        policies.push(rules::LendingPolicy::check(
            "line_items.",
            item.borrowable,
            item.max_borrow_secs,
            item.overdraft,
        )?);
        let starts = match item.starts_at {
            Some(t) => validate::unix_seconds("line_items.starts_at", t)?,
            None => now,
        };
        if let Some(e) = item.expires_at {
            validate::unix_seconds("line_items.expires_at", e)?;
            if e <= starts {
                return Err(AppError::validation(
                    "line_items.expires_at",
                    "a line item must expire after it starts",
                ));
            }
        }
    }
    let id = new_id();
    conn.write_transaction::<_, AppError, _>(|c| {
        let exists: i64 = accounts::table.find(account_id).count().get_result(c)?;
        if exists == 0 {
            return Err(AppError::not_found("account"));
        }
        diesel::insert_into(entitlements::table)
            .values((
                entitlements::id.eq(&id),
                entitlements::account_id.eq(account_id),
                entitlements::name.eq(&name),
                entitlements::created_at.eq(now),
            ))
            .execute(c)?;
        for (item, policy) in items.iter().zip(&policies) {
            let product: i64 = products::table
                .find(&item.product_id)
                .count()
                .get_result(c)?;
            if product == 0 {
                let id: String = item.product_id.chars().take(64).collect();
                return Err(AppError::not_found(&format!("product {id}"))
                    .with_field("line_items.product_id"));
            }
            diesel::insert_into(line_items::table)
                .values((
                    line_items::id.eq(new_id()),
                    line_items::entitlement_id.eq(&id),
                    line_items::account_id.eq(account_id),
                    line_items::activation_id.eq(new_activation_id()),
                    line_items::product_id.eq(&item.product_id),
                    line_items::quantity.eq(item.quantity),
                    line_items::starts_at.eq(item.starts_at.unwrap_or(now)),
                    line_items::expires_at.eq(item.expires_at),
                    line_items::created_at.eq(now),
                    line_items::max_borrow_secs.eq(policy.max_borrow_secs),
                    line_items::overdraft.eq(policy.overdraft),
                ))
                .execute(c)?;
        }
        Ok(())
    })?;
    list_entitlements(conn, account_id)?
        .into_iter()
        .find(|e| e.id == id)
        .ok_or_else(|| AppError::internal("entitlement vanished after insert"))
}

type LineItemRow = (
    String,
    String,
    String,
    String,
    String,
    String,
    i64,
    i64,
    Option<i64>,
    Option<i64>,
    i64,
);

/// The account's entitlements with their line items and where each is mapped.
pub fn list_entitlements(conn: &mut DbConn, account_id: &str) -> AppResult<Vec<Entitlement>> {
    let ents: Vec<(String, String, i64)> = entitlements::table
        .filter(entitlements::account_id.eq(account_id))
        .select((
            entitlements::id,
            entitlements::name,
            entitlements::created_at,
        ))
        .order(entitlements::created_at)
        .load(conn)?;
    let items: Vec<LineItemRow> = line_items::table
        .inner_join(products::table)
        .filter(line_items::account_id.eq(account_id))
        .select((
            line_items::id,
            line_items::entitlement_id,
            line_items::activation_id,
            line_items::product_id,
            products::name,
            products::version,
            line_items::quantity,
            line_items::starts_at,
            line_items::expires_at,
            line_items::max_borrow_secs,
            line_items::overdraft,
        ))
        .order(line_items::created_at)
        .load(conn)?;
    let maps: Vec<(String, String, String, String, i64)> = mappings::table
        .inner_join(servers::table)
        .filter(mappings::account_id.eq(account_id))
        .select((
            mappings::id,
            mappings::line_item_id,
            mappings::server_id,
            servers::hostid,
            mappings::quantity,
        ))
        .load(conn)?;
    Ok(ents
        .into_iter()
        .map(|(id, name, created_at)| Entitlement {
            line_items: items
                .iter()
                .filter(|i| i.1 == id)
                .map(|i| {
                    let mappings: Vec<MappedTo> = maps
                        .iter()
                        .filter(|m| m.1 == i.0)
                        .map(|m| MappedTo {
                            mapping_id: m.0.clone(),
                            server_id: m.2.clone(),
                            hostid: m.3.clone(),
                            quantity: m.4,
                        })
                        .collect();
                    LineItem {
                        id: i.0.clone(),
                        entitlement_id: i.1.clone(),
                        activation_id: i.2.clone(),
                        product_id: i.3.clone(),
                        product_name: i.4.clone(),
                        product_version: i.5.clone(),
                        quantity: i.6,
                        mapped: mappings.iter().map(|m| m.quantity).sum(),
                        starts_at: i.7,
                        expires_at: i.8,
                        borrowable: i.9.is_some(),
                        max_borrow_secs: i.9,
                        overdraft: i.10,
                        mappings,
                    }
                })
                .collect(),
            id,
            account_id: account_id.to_owned(),
            name,
            created_at,
        })
        .collect())
}

// Changing and deleting (the producer's rules: `crate::domain::catalog`).

/// Maps a foreign-key violation (something came to hold the row while it was being
/// deleted) to `on_held`, anything else as usual.
fn held_or(e: diesel::result::Error, on_held: impl FnOnce() -> AppError) -> AppError {
    use diesel::result::{DatabaseErrorKind, Error};
    if matches!(
        e,
        Error::DatabaseError(DatabaseErrorKind::ForeignKeyViolation, _)
    ) {
        on_held()
    } else {
        e.into()
    }
}

/// Takes the product's row for the rest of the transaction, so no line item comes to name
/// it meanwhile: PostgreSQL's `FOR UPDATE` waits for (and then keeps out) a line item being
/// inserted for it; on SQLite a write takes the one writer's lock before anything is read.
fn lock_product(c: &mut DbConn, id: &str) -> AppResult<()> {
    let found = match c {
        DbConn::Pg(c) => products::table
            .find(id)
            .select(products::id)
            .for_update()
            .first::<String>(c)
            .optional()?
            .is_some(),
        DbConn::Sqlite(c) => {
            diesel::update(products::table.find(id))
                .set(products::created_at.eq(products::created_at))
                .execute(c)?
                == 1
        }
    };
    if found {
        Ok(())
    } else {
        Err(AppError::not_found("product"))
    }
}

/// `IN_USE` if line items name the product: it (and its features) are part of what
/// customers bought. Call with the product locked.
fn check_product_unused(c: &mut DbConn, product_id: &str, what: &str, then: &str) -> AppResult<()> {
    let naming = || line_items::table.filter(line_items::product_id.eq(product_id));
    let total: i64 = naming().count().get_result(c)?;
    if total == 0 {
        return Ok(());
    }
    let first: Vec<String> = naming()
        .select(line_items::activation_id)
        .order(line_items::activation_id)
        .limit(5)
        .load(c)?;
    let holders: Vec<String> = first
        .into_iter()
        .map(|a| format!("line item {a}"))
        .collect();
    Err(rules::in_use(
        what,
        &holders,
        usize::try_from(total).unwrap_or(usize::MAX),
        then,
    )
    .into())
}

/// Renames a product or changes its version; fields left out stay.
pub fn update_product(
    conn: &mut DbConn,
    id: &str,
    name: Option<&str>,
    product_version: Option<&str>,
) -> AppResult<Product> {
    let name = name.map(|n| validate::name("name", n)).transpose()?;
    let product_version = product_version.map(|v| version("version", v)).transpose()?;
    conn.write_transaction::<_, AppError, _>(|c| {
        let current = get_product(c, id)?;
        diesel::update(products::table.find(id))
            .set((
                products::name.eq(name.unwrap_or(current.name)),
                products::version.eq(product_version.unwrap_or(current.version)),
            ))
            .execute(c)
            .map_err(|e| {
                unique_or(e, || {
                    AppError::already_exists("name", "a product of that name and version exists")
                })
            })?;
        get_product(c, id)
    })
}

/// Deletes a product and its features; refused (`IN_USE`) while line items name it.
pub fn delete_product(conn: &mut DbConn, id: &str) -> AppResult<()> {
    let held = || AppError::new(ErrorCode::InUse, "line items name this product");
    conn.write_transaction::<_, AppError, _>(|c| {
        lock_product(c, id)?;
        check_product_unused(
            c,
            id,
            "this product",
            "delete those line items (or their entitlements) first",
        )?;
        diesel::delete(features::table.filter(features::product_id.eq(id))).execute(c)?;
        diesel::delete(products::table.find(id))
            .execute(c)
            .map_err(|e| held_or(e, held))?;
        Ok(())
    })
}

/// One of the product's features, or `NOT_FOUND` (another product's feature is not found).
fn product_feature(c: &mut DbConn, product_id: &str, feature_id: &str) -> AppResult<Feature> {
    let (id, name, version) = features::table
        .filter(features::id.eq(feature_id))
        .filter(features::product_id.eq(product_id))
        .select((features::id, features::name, features::version))
        .first::<(String, String, String)>(c)
        .optional()?
        .ok_or_else(|| AppError::not_found("feature"))?;
    Ok(Feature { id, name, version })
}

/// Renames a feature or changes its version; refused (`IN_USE`) once line items name its
/// product, because the servers' signed rights carry the name and version.
pub fn update_feature(
    conn: &mut DbConn,
    product_id: &str,
    feature_id: &str,
    name: Option<&str>,
    feature_version: Option<&str>,
) -> AppResult<Feature> {
    let name = name.map(|n| feature_name("name", n)).transpose()?;
    let feature_version = feature_version.map(|v| version("version", v)).transpose()?;
    conn.write_transaction::<_, AppError, _>(|c| {
        lock_product(c, product_id)?;
        let current = product_feature(c, product_id, feature_id)?;
        let next = Feature {
            name: name.unwrap_or_else(|| current.name.clone()),
            version: feature_version.unwrap_or_else(|| current.version.clone()),
            id: current.id.clone(),
        };
        if next == current {
            return Ok(current);
        }
        check_product_unused(
            c,
            product_id,
            &format!("feature {}", current.name),
            "customers' rights carry its name and version: add a new feature or product \
             version instead",
        )?;
        diesel::update(features::table.find(feature_id))
            .set((
                features::name.eq(&next.name),
                features::version.eq(&next.version),
            ))
            .execute(c)
            .map_err(|e| {
                unique_or(e, || {
                    AppError::already_exists("name", "the product has a feature of that name")
                })
            })?;
        Ok(next)
    })
}

/// Deletes a feature; refused (`IN_USE`) while line items name its product.
pub fn delete_feature(conn: &mut DbConn, product_id: &str, feature_id: &str) -> AppResult<()> {
    conn.write_transaction::<_, AppError, _>(|c| {
        lock_product(c, product_id)?;
        let f = product_feature(c, product_id, feature_id)?;
        check_product_unused(
            c,
            product_id,
            &format!("feature {}", f.name),
            "servers are given it with those line items; delete them first",
        )?;
        diesel::delete(features::table.find(feature_id)).execute(c)?;
        Ok(())
    })
}

/// Renames an account.
pub fn update_account(conn: &mut DbConn, id: &str, name: &str) -> AppResult<Account> {
    let name = validate::name("name", name)?;
    conn.write_transaction::<_, AppError, _>(|c| {
        lock_account(c, id)?;
        diesel::update(accounts::table.find(id))
            .set(accounts::name.eq(&name))
            .execute(c)
            .map_err(|e| {
                unique_or(e, || {
                    AppError::already_exists("name", "an account of that name exists")
                })
            })?;
        get_account(c, id)
    })
}

/// Deletes an account with its users (and their sessions), device tokens and entitlements;
/// refused (`IN_USE`) while license servers are registered to it, since they hold its
/// rights and speak with its device tokens.
pub fn delete_account(conn: &mut DbConn, id: &str) -> AppResult<()> {
    conn.write_transaction::<_, AppError, _>(|c| {
        lock_account(c, id)?;
        let of_account = || servers::table.filter(servers::account_id.eq(id));
        let total: i64 = of_account().count().get_result(c)?;
        if total > 0 {
            let first: Vec<String> = of_account()
                .select(servers::hostid)
                .order(servers::hostid)
                .limit(5)
                .load(c)?;
            let holders: Vec<String> = first.into_iter().map(|h| format!("server {h}")).collect();
            return Err(rules::in_use(
                "this account",
                &holders,
                usize::try_from(total).unwrap_or(usize::MAX),
                "an account is deleted only when no license server is registered to it",
            )
            .into());
        }
        super::auth::delete_account_users(c, id)?;
        super::tokens::delete_account_tokens(c, id)?;
        // Usage reports of servers no longer registered (backups that left their pairs).
        diesel::delete(
            crate::schema::usage_intervals::table
                .filter(crate::schema::usage_intervals::account_id.eq(id)),
        )
        .execute(c)?;
        diesel::delete(line_items::table.filter(line_items::account_id.eq(id))).execute(c)?;
        diesel::delete(entitlements::table.filter(entitlements::account_id.eq(id))).execute(c)?;
        diesel::delete(accounts::table.find(id))
            .execute(c)
            .map_err(|e| {
                held_or(e, || {
                    AppError::new(
                        ErrorCode::InUse,
                        "something came to hold this account; try again",
                    )
                })
            })?;
        Ok(())
    })
}

/// The account's entitlement with `id`, or `NOT_FOUND`.
fn account_entitlement(c: &mut DbConn, account_id: &str, id: &str) -> AppResult<Entitlement> {
    list_entitlements(c, account_id)?
        .into_iter()
        .find(|e| e.id == id)
        .ok_or_else(|| AppError::not_found("entitlement"))
}

/// Where a set of line items is mapped, as `IN_USE` holders: "server H (ACT-…, N seats)".
fn mapped_holders(items: &[&LineItem]) -> Vec<String> {
    items
        .iter()
        .flat_map(|i| {
            i.mappings.iter().map(|m| {
                format!(
                    "server {} ({}, {} seats)",
                    m.hostid, i.activation_id, m.quantity
                )
            })
        })
        .collect()
}

/// Renames an entitlement.
pub fn update_entitlement(
    conn: &mut DbConn,
    account_id: &str,
    id: &str,
    name: &str,
) -> AppResult<Entitlement> {
    let name = validate::name("name", name)?;
    conn.write_transaction::<_, AppError, _>(|c| {
        lock_account(c, account_id)?;
        account_entitlement(c, account_id, id)?;
        diesel::update(entitlements::table.find(id))
            .set(entitlements::name.eq(&name))
            .execute(c)?;
        account_entitlement(c, account_id, id)
    })
}

/// Deletes an entitlement and its line items; refused (`IN_USE`) while any of them is
/// mapped to a server.
pub fn delete_entitlement(conn: &mut DbConn, account_id: &str, id: &str) -> AppResult<()> {
    conn.write_transaction::<_, AppError, _>(|c| {
        lock_account(c, account_id)?;
        let e = account_entitlement(c, account_id, id)?;
        let holders = mapped_holders(&e.line_items.iter().collect::<Vec<_>>());
        if !holders.is_empty() {
            return Err(rules::in_use(
                &format!("entitlement {}", e.name),
                &holders,
                holders.len(),
                "unmap its rights from those servers first",
            )
            .into());
        }
        diesel::delete(line_items::table.filter(line_items::entitlement_id.eq(id))).execute(c)?;
        diesel::delete(entitlements::table.find(id)).execute(c)?;
        Ok(())
    })
}

/// What a line item's change asks for; fields left out stay.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LineItemChange {
    pub quantity: Option<i64>,
    pub starts_at: Option<i64>,
    /// `Some(None)` makes the right permanent.
    pub expires_at: Option<Option<i64>>,
    /// `Some(false)` makes it not borrowable (and drops its maximum).
    pub borrowable: Option<bool>,
    pub max_borrow_secs: Option<i64>,
    pub overdraft: Option<i64>,
}

/// The account's line item `id` of entitlement `entitlement_id`, or `NOT_FOUND`.
fn account_line_item(
    c: &mut DbConn,
    account_id: &str,
    entitlement_id: &str,
    id: &str,
) -> AppResult<LineItem> {
    account_entitlement(c, account_id, entitlement_id)?
        .line_items
        .into_iter()
        .find(|i| i.id == id)
        .ok_or_else(|| AppError::not_found("line item"))
}

/// Changes a line item's quantity or period. The quantity may not fall below what is
/// mapped to servers (`INSUFFICIENT_QUANTITY`, with both numbers); servers that hold it get
/// the new period at their next poll.
pub fn update_line_item(
    conn: &mut DbConn,
    account_id: &str,
    entitlement_id: &str,
    id: &str,
    change: &LineItemChange,
) -> AppResult<LineItem> {
    if let Some(q) = change.quantity {
        validate::quantity("quantity", q)?;
    }
    if let Some(s) = change.starts_at {
        validate::unix_seconds("starts_at", s)?;
    }
    if let Some(Some(e)) = change.expires_at {
        validate::unix_seconds("expires_at", e)?;
    }
    conn.write_transaction::<_, AppError, _>(|c| {
        lock_account(c, account_id)?;
        let item = account_line_item(c, account_id, entitlement_id, id)?;
        let quantity = change.quantity.unwrap_or(item.quantity);
        let starts_at = change.starts_at.unwrap_or(item.starts_at);
        let expires_at = change.expires_at.unwrap_or(item.expires_at);
        rules::check_period(starts_at, expires_at)?;
        let borrowable = change.borrowable.unwrap_or(item.borrowable);
        let max_borrow_secs = match (change.max_borrow_secs, borrowable) {
            (Some(m), _) => Some(m),
            (None, true) => item.max_borrow_secs,
            (None, false) => None,
        };
        let policy = rules::LendingPolicy::check(
            "",
            borrowable,
            max_borrow_secs,
            change.overdraft.unwrap_or(item.overdraft),
        )?;
        let mapped: Vec<(String, i64)> = item
            .mappings
            .iter()
            .map(|m| (m.hostid.clone(), m.quantity))
            .collect();
        rules::check_quantity(&item.activation_id, quantity, &mapped)?;
        diesel::update(line_items::table.find(id))
            .set((
                line_items::quantity.eq(quantity),
                line_items::starts_at.eq(starts_at),
                line_items::expires_at.eq(expires_at),
                line_items::max_borrow_secs.eq(policy.max_borrow_secs),
                line_items::overdraft.eq(policy.overdraft),
            ))
            .execute(c)?;
        account_line_item(c, account_id, entitlement_id, id)
    })
}

/// Deletes a line item; refused (`IN_USE`) while it is mapped to a server.
pub fn delete_line_item(
    conn: &mut DbConn,
    account_id: &str,
    entitlement_id: &str,
    id: &str,
) -> AppResult<()> {
    conn.write_transaction::<_, AppError, _>(|c| {
        lock_account(c, account_id)?;
        let item = account_line_item(c, account_id, entitlement_id, id)?;
        let holders = mapped_holders(&[&item]);
        if !holders.is_empty() {
            return Err(rules::in_use(
                &format!("line item {}", item.activation_id),
                &holders,
                holders.len(),
                "unmap it from those servers first",
            )
            .into());
        }
        diesel::delete(line_items::table.find(id)).execute(c)?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use crate::db::{self, testing};

    /// Writers that read first (a rename reads the product, then updates it) on connections
    /// of their own, all at once: each waits its turn. On SQLite a deferred transaction
    /// would fail at its write with `database is locked` as soon as another wrote since its
    /// read, and the request would be answered 503 (the API fuzzer found it).
    #[test]
    fn concurrent_writers_that_read_first_all_succeed() {
        for tdb in testing::databases() {
            let (pool, _) = db::connect(&tdb.url, 8).unwrap();
            let product = super::create_product(&mut pool.get().unwrap(), "CAD", "1.0", &[])
                .unwrap()
                .id;
            std::thread::scope(|s| {
                let workers: Vec<_> = (0..8)
                    .map(|w| {
                        let (pool, product) = (&pool, &product);
                        s.spawn(move || {
                            let mut c = pool.get().unwrap();
                            (0..25)
                                .map(|i| {
                                    super::update_product(
                                        &mut c,
                                        product,
                                        None,
                                        Some(&format!("{w}.{i}")),
                                    )
                                    .map(|_| ())
                                })
                                .collect::<Result<Vec<_>, _>>()
                        })
                    })
                    .collect();
                for w in workers {
                    if let Err(e) = w.join().unwrap() {
                        panic!("{}: a rename failed: {e}", tdb.url);
                    }
                }
            });
        }
    }

    #[test]
    fn activation_ids_look_right() {
        let a = super::new_activation_id();
        assert_eq!(a.len(), 3 + 4 * 5);
        assert!(a.starts_with("ACT-"));
        assert_ne!(a, super::new_activation_id());
    }
}
