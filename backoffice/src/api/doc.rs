//! The frame of the API's OpenAPI document (title, tags, the two bearer schemes) and the
//! contract errors of each operation. The paths and schemas come from the handlers
//! themselves (`#[utoipa::path]`, collected by `routes.rs`).
//!
//! Each operation lists the codes it can answer with through a type made by [`errors!`]:
//! its responses give, per HTTP status, the codes (as an `enum` on `code`, so a client
//! generator sees them), what each means, and an example of each.

use std::collections::BTreeMap;

use serde_json::json;
use shared::{ErrorBody, ErrorCode};
use utoipa::openapi::example::ExampleBuilder;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::schema::{AllOfBuilder, ObjectBuilder, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, Response, ResponseBuilder};
use utoipa::{Modify, OpenApi, ToSchema};

/// The security scheme of signed-in administrators and users (`POST /api/v1/auth/login`).
pub const SESSION: &str = "session";
/// The security scheme of license servers (a device token, `dt_ID.SECRET`).
pub const DEVICE_TOKEN: &str = "device_token";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Licensing back office",
        description = "Products, customer accounts, entitlements and the registry of license \
            servers and failover pairs; the capability protocol license servers speak.\n\n\
            Every time is a Unix time in **seconds** (an integer, `format: int64`); a value \
            in milliseconds is refused with `VALIDATION_ERROR` naming the field. Every error \
            is `{\"code\": …, \"message\": …}` with the codes each operation lists. \
            `TOO_MANY_REQUESTS` comes with `Retry-After` (seconds).",
        license(name = "Apache-2.0")
    ),
    tags(
        (name = "system", description = "Health, metrics, this document, the signing key"),
        (name = "auth", description = "Signing in and out, passwords"),
        (name = "admins", description = "Producer administrators"),
        (name = "producer", description = "Products, accounts, users, entitlements, device tokens (administrators)"),
        (name = "account", description = "A customer account's servers, pairs, rights and tokens (its users)"),
        (name = "capability", description = "License servers register, poll and get signed rights"),
    ),
    components(schemas(ErrorBody, ErrorCode)),
    modifiers(&BearerSchemes)
)]
pub struct ApiDoc;

struct BearerSchemes;

impl Modify for BearerSchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let bearer = |description: &str| {
            let mut http = HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build();
            http.description = Some(description.to_owned());
            SecurityScheme::Http(http)
        };
        components.add_security_scheme(
            SESSION,
            bearer("A session token from `POST /api/v1/auth/login`."),
        );
        components.add_security_scheme(
            DEVICE_TOKEN,
            bearer("A device token of the server's account, `dt_ID.SECRET`."),
        );
    }
}

/// What a code means, as the document says it.
fn meaning(code: ErrorCode) -> &'static str {
    use ErrorCode::*;
    match code {
        ValidationError => "the request is malformed; `field` names the part",
        Unauthorized => "no valid session or token, or a wrong password",
        Forbidden => "signed in, but not as who this needs",
        NotFound => "no such object in what the caller may see",
        AlreadyExists => "it exists already; `field` names what clashes",
        MainNotRegistered => "a backup asked before its main registered the pair",
        HostidTypeMismatch => "a pair's hostids are of different types",
        HostidInUse => "the hostid cannot be registered to this account",
        RoleConflict => "the server is registered in another role",
        UnknownRightsId => "no line item of this account has that activation ID",
        InsufficientQuantity => {
            "not that many seats are unmapped, or a quantity below what is mapped"
        }
        PairHasActiveRights => "the pair's seats are in use",
        InUse => "something holds it (servers, an entitlement); the message names what",
        ClockSkew => "the sender's clock is too far off",
        ReplayedRequest => "this request ID was seen before",
        TooManyRequests => {
            "too many failed sign-ins, or the password checks are busy; wait `Retry-After` seconds"
        }
        Unavailable => "the database cannot store or cannot be reached right now; try again later",
        InternalError => "a failure of the back office; it logged the cause",
        NoLicenseAvailable
        | Excluded
        | OverMax
        | Reserved
        | SessionHeld
        | FeatureExpired
        | NotServing
        | MaintenanceIntervalExpired
        | OutOfSync
        | RightsExpired
        | ServerNotBound
        | UnverifiedRights
        | Unknown => "(not answered by the back office)",
    }
}

/// Every operation can meet this.
const ALWAYS: &[ErrorCode] = &[ErrorCode::InternalError];

/// The responses for `codes` (plus [`ALWAYS`]), one per HTTP status. Every operation that
/// touches storage lists `UNAVAILABLE`.
pub fn error_responses(codes: &[ErrorCode]) -> BTreeMap<String, RefOr<Response>> {
    let mut by_status: BTreeMap<u16, Vec<ErrorCode>> = BTreeMap::new();
    for &code in codes.iter().chain(ALWAYS) {
        let v = by_status.entry(code.http_status()).or_default();
        if !v.contains(&code) {
            v.push(code);
        }
    }
    by_status
        .into_iter()
        .map(|(status, codes)| (status.to_string(), RefOr::T(response(status, &codes))))
        .collect()
}

fn response(status: u16, codes: &[ErrorCode]) -> Response {
    let description = codes
        .iter()
        .map(|c| format!("`{c}`: {}", meaning(*c)))
        .collect::<Vec<_>>()
        .join("; ");
    // The contract's body, with `code` narrowed to what this status can carry here.
    let schema = AllOfBuilder::new()
        .item(Ref::from_schema_name(ErrorBody::name()))
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Object)
                .property(
                    "code",
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .enum_values(Some(codes.iter().map(|c| c.as_str()))),
                )
                .required("code"),
        );
    let examples = codes.iter().map(|c| {
        (
            c.as_str(),
            ExampleBuilder::new()
                .summary(meaning(*c))
                .value(Some(
                    json!({"code": c.as_str(), "message": example_message(*c)}),
                ))
                .build(),
        )
    });
    let mut r = ResponseBuilder::new().description(description).content(
        "application/json",
        ContentBuilder::new()
            .schema(Some(schema))
            .examples_from_iter(examples)
            .build(),
    );
    if status == 429 {
        r = r.header(
            "Retry-After",
            HeaderBuilder::new()
                .schema(
                    ObjectBuilder::new()
                        .schema_type(Type::Integer)
                        .minimum(Some(1)),
                )
                .description(Some("Seconds to wait before trying again."))
                .build(),
        );
    }
    r.build()
}

fn example_message(code: ErrorCode) -> &'static str {
    use ErrorCode::*;
    match code {
        ValidationError => {
            "line_items.starts_at is 1798366799000, which is not a time in Unix seconds"
        }
        Unauthorized => "wrong e-mail or password",
        Forbidden => "this needs a producer administrator",
        NotFound => "server not found",
        AlreadyExists => "that e-mail address is taken",
        MainNotRegistered => {
            "no failover pair names string:lls-b as its backup yet: start the main first"
        }
        HostidTypeMismatch => "a pair's hostids must be of the same type",
        HostidInUse => "hostid string:lls-a cannot be registered to this account",
        RoleConflict => "string:lls-a is registered as a standalone server; it cannot be a backup",
        UnknownRightsId => "no line item of this account has activation ID ACT-NOPE",
        InsufficientQuantity => "ACT-7K3M-Q9ZD-2WXR-H4TN: 2 of 10 are unmapped; cannot map 5",
        PairHasActiveRights => "3 seats of this pair's rights are in use",
        InUse => {
            "line item ACT-7K3M-Q9ZD-2WXR-H4TN is mapped to string:lls-a (4 seats); unmap it first"
        }
        ClockSkew => "the server's clock is 3600 s off the back office's",
        ReplayedRequest => "this request ID was seen before; send each request with a new ID",
        TooManyRequests => {
            "too many failed sign-ins for this account or from this address; try again in 4 s"
        }
        Unavailable => crate::error::STORAGE_FAILING,
        InternalError => "internal error; the back office logged the cause",
        NoLicenseAvailable
        | Excluded
        | OverMax
        | Reserved
        | SessionHeld
        | FeatureExpired
        | NotServing
        | MaintenanceIntervalExpired
        | OutOfSync
        | RightsExpired
        | ServerNotBound
        | UnverifiedRights
        | Unknown => "",
    }
}

/// `errors!(Name: CODE, …)` makes a type whose responses are those codes' (for
/// `responses(…, Name)` in `#[utoipa::path]`).
macro_rules! errors {
    ($($(#[$meta:meta])* $name:ident: $($code:ident),+;)+) => {
        $(
            $(#[$meta])*
            pub struct $name;

            impl utoipa::IntoResponses for $name {
                fn responses() -> std::collections::BTreeMap<
                    String,
                    utoipa::openapi::RefOr<utoipa::openapi::response::Response>,
                > {
                    error_responses(&[$(shared::ErrorCode::$code),+])
                }
            }
        )+
    };
}

errors! {
    /// What needs nothing but the process (no storage).
    Static: InternalError;
    /// What needs nothing but the database.
    Public: Unavailable;
    /// Signing in.
    SignIn: ValidationError, Unauthorized, TooManyRequests, Unavailable;
    /// Anything that needs a session.
    Session: Unauthorized, Unavailable;
    /// A change of one's own password.
    PasswordChange: ValidationError, Unauthorized, TooManyRequests, Unavailable;
    /// An administrator reading.
    AdminRead: Unauthorized, Forbidden, Unavailable;
    /// An administrator reading one object.
    AdminReadOne: ValidationError, Unauthorized, Forbidden, NotFound, Unavailable;
    /// An administrator creating.
    AdminCreate: ValidationError, Unauthorized, Forbidden, NotFound, AlreadyExists, TooManyRequests, Unavailable;
    /// An administrator revoking.
    AdminDelete: ValidationError, Unauthorized, Forbidden, NotFound, Unavailable;
    /// An administrator changing an object.
    AdminUpdate: ValidationError, Unauthorized, Forbidden, NotFound, AlreadyExists, InsufficientQuantity, InUse, Unavailable;
    /// An administrator deleting an object that something may still hold.
    AdminRemove: ValidationError, Unauthorized, Forbidden, NotFound, InUse, Unavailable;
    /// An account user reading.
    UserRead: Unauthorized, Forbidden, Unavailable;
    /// An account user reading one object.
    UserReadOne: ValidationError, Unauthorized, Forbidden, NotFound, Unavailable;
    /// An account user registering a pair.
    UserPair: ValidationError, Unauthorized, Forbidden, AlreadyExists, HostidTypeMismatch, HostidInUse, RoleConflict, Unavailable;
    /// An account user replacing a cluster's member.
    UserReplaceMember: ValidationError, Unauthorized, Forbidden, NotFound, HostidTypeMismatch, HostidInUse, RoleConflict, Unavailable;
    /// An account user removing a backup.
    UserRemoveBackup: ValidationError, Unauthorized, Forbidden, NotFound, PairHasActiveRights, Unavailable;
    /// An account user mapping rights.
    UserMap: ValidationError, Unauthorized, Forbidden, NotFound, UnknownRightsId, InsufficientQuantity, RoleConflict, Unavailable;
    /// An account user creating or removing something of its own.
    UserWrite: ValidationError, Unauthorized, Forbidden, NotFound, Unavailable;
    /// A license server's capability request.
    Capability: ValidationError, Unauthorized, ClockSkew, ReplayedRequest, MainNotRegistered, HostidTypeMismatch, HostidInUse, RoleConflict, UnknownRightsId, InsufficientQuantity, Unavailable;
}
