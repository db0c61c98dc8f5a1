//! Products and features, customer accounts, entitlements and their line items.

use diesel::prelude::*;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{new_id, unique_or};
use crate::db::DbConn;
use crate::domain::validate;
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

fn feature_name(value: &str) -> AppResult<String> {
    let v = validate::name("features.name", value)?;
    if v.len() > 64
        || !v
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Err(AppError::validation(
            "features.name",
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
        let n = feature_name(&f.name)?;
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
    conn.transaction::<_, AppError, _>(|c| {
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
        name: feature_name(&spec.name)?,
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
    for item in items {
        validate::quantity("line_items.quantity", item.quantity)?;
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
    conn.transaction::<_, AppError, _>(|c| {
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
        for item in items {
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

#[cfg(test)]
mod tests {
    #[test]
    fn activation_ids_look_right() {
        let a = super::new_activation_id();
        assert_eq!(a.len(), 3 + 4 * 5);
        assert!(a.starts_with("ACT-"));
        assert_ne!(a, super::new_activation_id());
    }
}
