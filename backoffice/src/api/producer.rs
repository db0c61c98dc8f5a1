//! The producer API (administrators): products, accounts, users, entitlements, device
//! tokens; creating, reading, changing (PATCH) and deleting them under the rules of
//! `crate::domain::catalog`.

use actix_web::{HttpResponse, delete, get, patch, post, web};
use serde::Deserialize;
use utoipa::ToSchema;

use super::auth::{Admin, NewPerson};
use super::doc;
use crate::access;
use crate::error::AppResult;
use crate::state::{State, run};
use crate::store::auth::{self, User};
use crate::store::catalog::{
    self, Account, Entitlement, Feature, FeatureSpec, LineItem, LineItemChange, LineItemSpec,
    Product,
};
use crate::store::registry::{self, ServerSummary};
use crate::store::tokens::{self, DeviceToken, IssuedToken};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewProduct {
    #[schema(example = "CAD Suite")]
    name: String,
    #[serde(default)]
    #[schema(example = "2026")]
    version: String,
    #[serde(default)]
    features: Vec<FeatureSpec>,
}

/// Creates a product with its features.
#[utoipa::path(
    tag = "producer",
    security(("session" = [])),
    request_body = NewProduct,
    responses((status = 201, description = "The product, with its features", body = Product), doc::AdminCreate)
)]
#[post("/api/v1/products")]
pub async fn create_product(
    _: Admin,
    state: State,
    body: web::Json<NewProduct>,
) -> AppResult<HttpResponse> {
    let b = body.into_inner();
    let p = run(&state, move |c| {
        catalog::create_product(c, &b.name, &b.version, &b.features)
    })
    .await?;
    Ok(HttpResponse::Created().json(p))
}

/// Every product.
#[utoipa::path(
    tag = "producer",
    security(("session" = [])),
    responses((status = 200, description = "Every product, by name and version", body = Vec<Product>), doc::AdminRead)
)]
#[get("/api/v1/products")]
pub async fn list_products(_: Admin, state: State) -> AppResult<web::Json<Vec<Product>>> {
    Ok(web::Json(run(&state, catalog::list_products).await?))
}

/// One product.
#[utoipa::path(
    tag = "producer",
    security(("session" = [])),
    params(("id" = String, Path, description = "Product ID")),
    responses((status = 200, description = "The product, with its features", body = Product), doc::AdminReadOne)
)]
#[get("/api/v1/products/{id}")]
pub async fn get_product(
    _: Admin,
    state: State,
    id: web::Path<String>,
) -> AppResult<web::Json<Product>> {
    let id = id.into_inner();
    Ok(web::Json(
        run(&state, move |c| catalog::get_product(c, &id)).await?,
    ))
}

/// Adds a feature to a product.
#[utoipa::path(
    tag = "producer",
    security(("session" = [])),
    params(("id" = String, Path, description = "Product ID")),
    request_body = FeatureSpec,
    responses((status = 201, description = "The new feature", body = Feature), doc::AdminCreate)
)]
#[post("/api/v1/products/{id}/features")]
pub async fn add_feature(
    _: Admin,
    state: State,
    id: web::Path<String>,
    body: web::Json<FeatureSpec>,
) -> AppResult<HttpResponse> {
    let (id, spec) = (id.into_inner(), body.into_inner());
    let f = run(&state, move |c| catalog::add_feature(c, &id, &spec)).await?;
    Ok(HttpResponse::Created().json(f))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewAccount {
    #[schema(example = "Acme Engineering")]
    name: String,
}

/// Creates a customer account.
#[utoipa::path(
    tag = "producer",
    security(("session" = [])),
    request_body = NewAccount,
    responses((status = 201, description = "The new account", body = Account), doc::AdminCreate)
)]
#[post("/api/v1/accounts")]
pub async fn create_account(
    _: Admin,
    state: State,
    body: web::Json<NewAccount>,
) -> AppResult<HttpResponse> {
    let name = body.into_inner().name;
    let a = run(&state, move |c| catalog::create_account(c, &name)).await?;
    Ok(HttpResponse::Created().json(a))
}

/// Every customer account.
#[utoipa::path(
    tag = "producer",
    security(("session" = [])),
    responses((status = 200, description = "Every account, by name", body = Vec<Account>), doc::AdminRead)
)]
#[get("/api/v1/accounts")]
pub async fn list_accounts(_: Admin, state: State) -> AppResult<web::Json<Vec<Account>>> {
    Ok(web::Json(run(&state, catalog::list_accounts).await?))
}

/// One customer account.
#[utoipa::path(
    tag = "producer",
    security(("session" = [])),
    params(("id" = String, Path, description = "Account ID")),
    responses((status = 200, description = "The account", body = Account), doc::AdminReadOne)
)]
#[get("/api/v1/accounts/{id}")]
pub async fn get_account(
    _: Admin,
    state: State,
    id: web::Path<String>,
) -> AppResult<web::Json<Account>> {
    let id = id.into_inner();
    Ok(web::Json(
        run(&state, move |c| catalog::get_account(c, &id)).await?,
    ))
}

/// Adds a user to an account.
#[utoipa::path(
    tag = "producer",
    security(("session" = [])),
    params(("id" = String, Path, description = "Account ID")),
    request_body = NewPerson,
    responses((status = 201, description = "The new user", body = User), doc::AdminCreate)
)]
#[post("/api/v1/accounts/{id}/users")]
pub async fn create_user(
    _: Admin,
    state: State,
    id: web::Path<String>,
    body: web::Json<NewPerson>,
) -> AppResult<HttpResponse> {
    let b = body.into_inner();
    let u = access::add_user(&state, id.into_inner(), &b.email, &b.password).await?;
    Ok(HttpResponse::Created().json(u))
}

/// An account's users.
#[utoipa::path(
    tag = "producer",
    security(("session" = [])),
    params(("id" = String, Path, description = "Account ID")),
    responses((status = 200, description = "The account's users, by e-mail address", body = Vec<User>), doc::AdminReadOne)
)]
#[get("/api/v1/accounts/{id}/users")]
pub async fn list_users(
    _: Admin,
    state: State,
    id: web::Path<String>,
) -> AppResult<web::Json<Vec<User>>> {
    let id = id.into_inner();
    let users = run(&state, move |c| {
        catalog::get_account(c, &id)?;
        crate::store::auth::list_users(c, &id)
    })
    .await?;
    Ok(web::Json(users))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewEntitlement {
    #[serde(default = "default_entitlement_name")]
    #[schema(example = "Order 4711")]
    name: String,
    /// 1 to 100 line items; each gets an activation ID.
    line_items: Vec<LineItemSpec>,
}

fn default_entitlement_name() -> String {
    "Entitlement".to_owned()
}

/// Gives an account an entitlement. Times are Unix seconds: a value in milliseconds is
/// refused with `VALIDATION_ERROR` naming the field.
#[utoipa::path(
    tag = "producer",
    security(("session" = [])),
    params(("id" = String, Path, description = "Account ID")),
    request_body = NewEntitlement,
    responses((status = 201, description = "The entitlement, each line item with its activation ID", body = Entitlement), doc::AdminCreate)
)]
#[post("/api/v1/accounts/{id}/entitlements")]
pub async fn create_entitlement(
    _: Admin,
    state: State,
    id: web::Path<String>,
    body: web::Json<NewEntitlement>,
) -> AppResult<HttpResponse> {
    let (id, b) = (id.into_inner(), body.into_inner());
    let e = run(&state, move |c| {
        catalog::create_entitlement(c, &id, &b.name, &b.line_items)
    })
    .await?;
    Ok(HttpResponse::Created().json(e))
}

/// An account's entitlements, with where each line item is mapped.
#[utoipa::path(
    tag = "producer",
    security(("session" = [])),
    params(("id" = String, Path, description = "Account ID")),
    responses((status = 200, description = "The entitlements, oldest first", body = Vec<Entitlement>), doc::AdminReadOne)
)]
#[get("/api/v1/accounts/{id}/entitlements")]
pub async fn list_entitlements(
    _: Admin,
    state: State,
    id: web::Path<String>,
) -> AppResult<web::Json<Vec<Entitlement>>> {
    let id = id.into_inner();
    let e = run(&state, move |c| {
        catalog::get_account(c, &id)?;
        catalog::list_entitlements(c, &id)
    })
    .await?;
    Ok(web::Json(e))
}

/// An account's license servers.
#[utoipa::path(
    tag = "producer",
    security(("session" = [])),
    params(("id" = String, Path, description = "Account ID")),
    responses((status = 200, description = "The account's servers, by hostid", body = Vec<ServerSummary>), doc::AdminReadOne)
)]
#[get("/api/v1/accounts/{id}/servers")]
pub async fn list_servers(
    _: Admin,
    state: State,
    id: web::Path<String>,
) -> AppResult<web::Json<Vec<ServerSummary>>> {
    let id = id.into_inner();
    let timeout = state.server_timeout();
    let s = run(&state, move |c| {
        catalog::get_account(c, &id)?;
        registry::list_servers(c, &id, shared::now_unix(), timeout)
    })
    .await?;
    Ok(web::Json(s))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    #[schema(example = "Berlin servers")]
    pub name: String,
    /// Lifetime in days, 1 to 3650; the token does not expire when absent.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 3650, example = 365)]
    pub expires_in_days: Option<i64>,
}

/// Creates a device token for an account's servers; its secret is in this answer only.
#[utoipa::path(
    tag = "producer",
    security(("session" = [])),
    params(("id" = String, Path, description = "Account ID")),
    request_body = NewToken,
    responses((status = 201, description = "The token, with its secret (shown only now)", body = IssuedToken), doc::AdminCreate)
)]
#[post("/api/v1/accounts/{id}/device-tokens")]
pub async fn create_token(
    _: Admin,
    state: State,
    id: web::Path<String>,
    body: web::Json<NewToken>,
) -> AppResult<HttpResponse> {
    let (id, b) = (id.into_inner(), body.into_inner());
    let t = run(&state, move |c| {
        tokens::create_device_token(c, &id, &b.name, b.expires_in_days)
    })
    .await?;
    Ok(HttpResponse::Created().json(t))
}

/// An account's device tokens (without secrets).
#[utoipa::path(
    tag = "producer",
    security(("session" = [])),
    params(("id" = String, Path, description = "Account ID")),
    responses((status = 200, description = "The tokens, newest first", body = Vec<DeviceToken>), doc::AdminReadOne)
)]
#[get("/api/v1/accounts/{id}/device-tokens")]
pub async fn list_tokens(
    _: Admin,
    state: State,
    id: web::Path<String>,
) -> AppResult<web::Json<Vec<DeviceToken>>> {
    let id = id.into_inner();
    let t = run(&state, move |c| {
        catalog::get_account(c, &id)?;
        tokens::list_device_tokens(c, &id)
    })
    .await?;
    Ok(web::Json(t))
}

/// Revokes one of an account's device tokens.
#[utoipa::path(
    tag = "producer",
    security(("session" = [])),
    params(
        ("id" = String, Path, description = "Account ID"),
        ("token_id" = String, Path, description = "Device token ID"),
    ),
    responses((status = 204, description = "Revoked"), doc::AdminDelete)
)]
#[delete("/api/v1/accounts/{id}/device-tokens/{token_id}")]
pub async fn revoke_token(
    _: Admin,
    state: State,
    path: web::Path<(String, String)>,
) -> AppResult<HttpResponse> {
    let (id, token_id) = path.into_inner();
    run(&state, move |c| {
        tokens::revoke_device_token(c, &id, &token_id)
    })
    .await?;
    Ok(HttpResponse::NoContent().finish())
}

/// A change of a product or a feature; fields left out stay.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NameVersionChange {
    #[serde(default)]
    #[schema(example = "CAD Suite Pro")]
    name: Option<String>,
    #[serde(default)]
    #[schema(example = "2027")]
    version: Option<String>,
}

/// Renames a product or changes its version.
#[utoipa::path(
    tag = "producer",
    security(("session" = [])),
    params(("id" = String, Path, description = "Product ID")),
    request_body = NameVersionChange,
    responses((status = 200, description = "The product as it is now", body = Product), doc::AdminUpdate)
)]
#[patch("/api/v1/products/{id}")]
pub async fn update_product(
    _: Admin,
    state: State,
    id: web::Path<String>,
    body: web::Json<NameVersionChange>,
) -> AppResult<web::Json<Product>> {
    let (id, b) = (id.into_inner(), body.into_inner());
    let p = run(&state, move |c| {
        catalog::update_product(c, &id, b.name.as_deref(), b.version.as_deref())
    })
    .await?;
    Ok(web::Json(p))
}

/// Deletes a product with its features; refused with `IN_USE` while line items name it.
#[utoipa::path(
    tag = "producer",
    security(("session" = [])),
    params(("id" = String, Path, description = "Product ID")),
    responses((status = 204, description = "Deleted"), doc::AdminRemove)
)]
#[delete("/api/v1/products/{id}")]
pub async fn delete_product(
    _: Admin,
    state: State,
    id: web::Path<String>,
) -> AppResult<HttpResponse> {
    let id = id.into_inner();
    run(&state, move |c| catalog::delete_product(c, &id)).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Renames a feature or changes its version; refused with `IN_USE` once line items name
/// its product (servers' signed rights carry the name and version).
#[utoipa::path(
    tag = "producer",
    security(("session" = [])),
    params(
        ("id" = String, Path, description = "Product ID"),
        ("feature_id" = String, Path, description = "Feature ID"),
    ),
    request_body = NameVersionChange,
    responses((status = 200, description = "The feature as it is now", body = Feature), doc::AdminUpdate)
)]
#[patch("/api/v1/products/{id}/features/{feature_id}")]
pub async fn update_feature(
    _: Admin,
    state: State,
    path: web::Path<(String, String)>,
    body: web::Json<NameVersionChange>,
) -> AppResult<web::Json<Feature>> {
    let ((id, feature_id), b) = (path.into_inner(), body.into_inner());
    let f = run(&state, move |c| {
        catalog::update_feature(c, &id, &feature_id, b.name.as_deref(), b.version.as_deref())
    })
    .await?;
    Ok(web::Json(f))
}

/// Deletes a feature; refused with `IN_USE` while line items name its product.
#[utoipa::path(
    tag = "producer",
    security(("session" = [])),
    params(
        ("id" = String, Path, description = "Product ID"),
        ("feature_id" = String, Path, description = "Feature ID"),
    ),
    responses((status = 204, description = "Deleted"), doc::AdminRemove)
)]
#[delete("/api/v1/products/{id}/features/{feature_id}")]
pub async fn delete_feature(
    _: Admin,
    state: State,
    path: web::Path<(String, String)>,
) -> AppResult<HttpResponse> {
    let (id, feature_id) = path.into_inner();
    run(&state, move |c| {
        catalog::delete_feature(c, &id, &feature_id)
    })
    .await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Renames a customer account.
#[utoipa::path(
    tag = "producer",
    security(("session" = [])),
    params(("id" = String, Path, description = "Account ID")),
    request_body = NewAccount,
    responses((status = 200, description = "The account as it is now", body = Account), doc::AdminUpdate)
)]
#[patch("/api/v1/accounts/{id}")]
pub async fn update_account(
    _: Admin,
    state: State,
    id: web::Path<String>,
    body: web::Json<NewAccount>,
) -> AppResult<web::Json<Account>> {
    let (id, name) = (id.into_inner(), body.into_inner().name);
    let a = run(&state, move |c| catalog::update_account(c, &id, &name)).await?;
    Ok(web::Json(a))
}

/// Deletes a customer account with its users, device tokens and entitlements; refused with
/// `IN_USE` while license servers are registered to it.
#[utoipa::path(
    tag = "producer",
    security(("session" = [])),
    params(("id" = String, Path, description = "Account ID")),
    responses((status = 204, description = "Deleted"), doc::AdminRemove)
)]
#[delete("/api/v1/accounts/{id}")]
pub async fn delete_account(
    _: Admin,
    state: State,
    id: web::Path<String>,
) -> AppResult<HttpResponse> {
    let id = id.into_inner();
    run(&state, move |c| catalog::delete_account(c, &id)).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserChange {
    #[schema(example = "ops@customer.example")]
    email: String,
}

/// Changes an account user's e-mail address.
#[utoipa::path(
    tag = "producer",
    security(("session" = [])),
    params(
        ("id" = String, Path, description = "Account ID"),
        ("user_id" = String, Path, description = "User ID"),
    ),
    request_body = UserChange,
    responses((status = 200, description = "The user as it is now", body = User), doc::AdminUpdate)
)]
#[patch("/api/v1/accounts/{id}/users/{user_id}")]
pub async fn update_user(
    _: Admin,
    state: State,
    path: web::Path<(String, String)>,
    body: web::Json<UserChange>,
) -> AppResult<web::Json<User>> {
    let ((id, user_id), email) = (path.into_inner(), body.into_inner().email);
    let u = run(&state, move |c| {
        auth::update_user_email(c, &id, &user_id, &email)
    })
    .await?;
    Ok(web::Json(u))
}

/// Deletes an account user and ends its sessions.
#[utoipa::path(
    tag = "producer",
    security(("session" = [])),
    params(
        ("id" = String, Path, description = "Account ID"),
        ("user_id" = String, Path, description = "User ID"),
    ),
    responses((status = 204, description = "Deleted"), doc::AdminDelete)
)]
#[delete("/api/v1/accounts/{id}/users/{user_id}")]
pub async fn delete_user(
    _: Admin,
    state: State,
    path: web::Path<(String, String)>,
) -> AppResult<HttpResponse> {
    let (id, user_id) = path.into_inner();
    run(&state, move |c| auth::delete_user(c, &id, &user_id)).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EntitlementChange {
    #[schema(example = "Order 4711 (renewed)")]
    name: String,
}

/// Renames an entitlement.
#[utoipa::path(
    tag = "producer",
    security(("session" = [])),
    params(
        ("id" = String, Path, description = "Account ID"),
        ("entitlement_id" = String, Path, description = "Entitlement ID"),
    ),
    request_body = EntitlementChange,
    responses((status = 200, description = "The entitlement as it is now", body = Entitlement), doc::AdminUpdate)
)]
#[patch("/api/v1/accounts/{id}/entitlements/{entitlement_id}")]
pub async fn update_entitlement(
    _: Admin,
    state: State,
    path: web::Path<(String, String)>,
    body: web::Json<EntitlementChange>,
) -> AppResult<web::Json<Entitlement>> {
    let ((id, eid), name) = (path.into_inner(), body.into_inner().name);
    let e = run(&state, move |c| {
        catalog::update_entitlement(c, &id, &eid, &name)
    })
    .await?;
    Ok(web::Json(e))
}

/// Deletes an entitlement with its line items; refused with `IN_USE` while any of them is
/// mapped to a server.
#[utoipa::path(
    tag = "producer",
    security(("session" = [])),
    params(
        ("id" = String, Path, description = "Account ID"),
        ("entitlement_id" = String, Path, description = "Entitlement ID"),
    ),
    responses((status = 204, description = "Deleted"), doc::AdminRemove)
)]
#[delete("/api/v1/accounts/{id}/entitlements/{entitlement_id}")]
pub async fn delete_entitlement(
    _: Admin,
    state: State,
    path: web::Path<(String, String)>,
) -> AppResult<HttpResponse> {
    let (id, eid) = path.into_inner();
    run(&state, move |c| catalog::delete_entitlement(c, &id, &eid)).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// A change of a line item; fields left out stay. Times are Unix seconds.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LineItemPatch {
    /// Seats, 1 to 1,000,000, and not below what is mapped to servers.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1_000_000, example = 12)]
    quantity: Option<i64>,
    /// When the rights start (Unix time, seconds).
    #[serde(default)]
    #[schema(format = Int64, minimum = 0, maximum = 253_402_300_799_i64, example = 1798366799)]
    starts_at: Option<i64>,
    /// When they end (Unix time, seconds); `null` makes them permanent.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i64>, format = Int64, minimum = 0, maximum = 253_402_300_799_i64, example = 1829902799)]
    expires_at: Option<Option<i64>>,
    /// Whether clients may borrow its seats; `false` also drops `max_borrow_secs`.
    #[serde(default)]
    borrowable: Option<bool>,
    /// The longest borrow, 60 seconds to 365 days (the line item must be borrowable).
    #[serde(default)]
    #[schema(minimum = 60, maximum = 31_536_000, example = 604800)]
    max_borrow_secs: Option<i64>,
    /// Seats beyond the count a server may grant, 0 (none) to 1,000,000.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 1_000_000, example = 2)]
    overdraft: Option<i64>,
}

/// A field that is present, even as `null` (absent stays `None` by `default`).
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// Changes a line item's quantity, period, borrow policy or overdraft. A quantity below what is mapped to servers is
/// refused with `INSUFFICIENT_QUANTITY` (mapped and asked); servers get the new period at
/// their next poll.
#[utoipa::path(
    tag = "producer",
    security(("session" = [])),
    params(
        ("id" = String, Path, description = "Account ID"),
        ("entitlement_id" = String, Path, description = "Entitlement ID"),
        ("line_item_id" = String, Path, description = "Line item ID"),
    ),
    request_body = LineItemPatch,
    responses((status = 200, description = "The line item as it is now", body = LineItem), doc::AdminUpdate)
)]
#[patch("/api/v1/accounts/{id}/entitlements/{entitlement_id}/line-items/{line_item_id}")]
pub async fn update_line_item(
    _: Admin,
    state: State,
    path: web::Path<(String, String, String)>,
    body: web::Json<LineItemPatch>,
) -> AppResult<web::Json<LineItem>> {
    let ((id, eid, lid), b) = (path.into_inner(), body.into_inner());
    let change = LineItemChange {
        quantity: b.quantity,
        starts_at: b.starts_at,
        expires_at: b.expires_at,
        borrowable: b.borrowable,
        max_borrow_secs: b.max_borrow_secs,
        overdraft: b.overdraft,
    };
    let account = id.clone();
    let i = run(&state, move |c| {
        catalog::update_line_item(c, &id, &eid, &lid, &change)
    })
    .await?;
    state.links.changed(&account);
    Ok(web::Json(i))
}

/// Deletes a line item; refused with `IN_USE` while it is mapped to a server.
#[utoipa::path(
    tag = "producer",
    security(("session" = [])),
    params(
        ("id" = String, Path, description = "Account ID"),
        ("entitlement_id" = String, Path, description = "Entitlement ID"),
        ("line_item_id" = String, Path, description = "Line item ID"),
    ),
    responses((status = 204, description = "Deleted"), doc::AdminRemove)
)]
#[delete("/api/v1/accounts/{id}/entitlements/{entitlement_id}/line-items/{line_item_id}")]
pub async fn delete_line_item(
    _: Admin,
    state: State,
    path: web::Path<(String, String, String)>,
) -> AppResult<HttpResponse> {
    let (id, eid, lid) = path.into_inner();
    run(&state, move |c| {
        catalog::delete_line_item(c, &id, &eid, &lid)
    })
    .await?;
    Ok(HttpResponse::NoContent().finish())
}
