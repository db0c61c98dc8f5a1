//! `POST /api/v1/capability`: license servers register, poll and get signed rights.

use actix_web::{HttpRequest, HttpResponse, post, web};
use http_kit::auth::bearer;
use http_kit::extract::{parse_json, read_body};
use shared::ErrorCode;
use shared::capability::{CapabilityClaims, CapabilityRequest, CapabilityResponse, ISSUER};

use super::doc;
use crate::domain::validate;
use crate::error::{AppError, AppResult};
use crate::http::MAX_BODY;
use crate::state::{AppState, State, run_write};
use crate::store::capability::{self as registry, CapabilityAnswer};
use crate::store::tokens;

/// A license server's startup request or poll. The device token is checked before the body
/// is parsed. The answer is a JWT (EdDSA, the key at `/api/v1/signing-key`) over the
/// pair's complete rights, addressed to the hostid and bound to the request ID; it is sent
/// only once what the request changed is committed.
#[utoipa::path(
    tag = "capability",
    security(("device_token" = [])),
    request_body = CapabilityRequest,
    responses((status = 200, description = "Signed rights", body = CapabilityResponse), doc::Capability)
)]
#[post("/api/v1/capability")]
pub async fn capability(
    state: State,
    req: HttpRequest,
    body: web::Payload,
) -> AppResult<HttpResponse> {
    let result = match read_body(body, MAX_BODY).await {
        Ok(body) => handle(&state, &req, &body).await,
        Err(e) => Err(e.into()),
    };
    state.metrics.capability_outcome(match &result {
        Ok(_) => "ok",
        Err(e) => e.code().as_str(),
    });
    result
}

async fn handle(state: &AppState, req: &HttpRequest, body: &[u8]) -> AppResult<HttpResponse> {
    let token = bearer(req).map(str::to_owned).ok_or_else(|| {
        AppError::unauthorized("send the device token as `Authorization: Bearer dt_…`")
    })?;
    let request: CapabilityRequest = parse_json(body)?;
    tracing::Span::current().record("hostid", tracing::field::display(&request.hostid));

    validate::unix_seconds("sent_at", request.sent_at)?;
    let now = shared::now_unix();
    let skew = i64::try_from(state.settings.clock_skew.as_secs()).unwrap_or(i64::MAX);
    if (now - request.sent_at).abs() > skew {
        return Err(AppError::new(
            ErrorCode::ClockSkew,
            format!(
                "the server's clock is {} s off the back office's (at most {skew} s allowed); \
                 fix the server's time",
                request.sent_at - now
            ),
        ));
    }

    let req2 = request.clone();
    let (answer, committed) = run_write(state, move |c| {
        let account = tokens::authenticate_device(c, &token)?;
        tracing::Span::current().record("account", account.as_str());
        registry::capability(c, &account, &req2, now)
    })
    .await?;
    // Signed while the rest of the batch is carried out; sent once it is committed.
    let response = answer.map(|answer| sign(state, &request, now, answer));
    committed.wait().await?;
    response
}

fn sign(
    state: &AppState,
    request: &CapabilityRequest,
    now: i64,
    answer: CapabilityAnswer,
) -> HttpResponse {
    let lifetime = i64::try_from(state.settings.response_lifetime.as_secs()).unwrap_or(i64::MAX);
    let claims = CapabilityClaims {
        iss: ISSUER.to_owned(),
        sub: request.hostid.to_string(),
        request_id: request.request_id,
        iat: now,
        exp: now.saturating_add(lifetime),
        server_id: answer.server_id,
        role: answer.role,
        pair: answer.pair,
        poll_interval_secs: state.settings.poll_interval.as_secs(),
        rights: answer.rights,
        serve_until: now + 30 * 86_400,
        binding: None,
        pair_token: None,
    };
    let token = state.signer.sign(&claims);
    HttpResponse::Ok().json(CapabilityResponse { token })
}
