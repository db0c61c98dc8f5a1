//! `POST /api/v1/capability`: license servers register, poll and get signed rights.

use actix_web::{HttpRequest, HttpResponse, web};
use shared::ErrorCode;
use shared::capability::{CapabilityClaims, CapabilityRequest, CapabilityResponse, ISSUER};

use super::{State, parse_json, run_write};
use crate::error::{AppError, AppResult};
use crate::store::{auth, registry};

#[tracing::instrument(skip_all, fields(hostid, role, account))]
pub async fn capability(
    state: State,
    req: HttpRequest,
    body: web::Payload,
) -> AppResult<HttpResponse> {
    let result = match super::read_body(body).await {
        Ok(body) => handle(&state, &req, &body).await,
        Err(e) => Err(e),
    };
    state.metrics.capability_outcome(match &result {
        Ok(_) => "ok",
        Err(e) => e.code().as_str(),
    });
    if let Err(e) = &result {
        tracing::info!(code = %e.code(), message = %e.0.message, "capability request refused");
    }
    result
}

async fn handle(state: &State, req: &HttpRequest, body: &[u8]) -> AppResult<HttpResponse> {
    let token = super::auth::bearer(req).ok_or_else(|| {
        AppError::unauthorized("send the device token as `Authorization: Bearer dt_…`")
    })?;
    let request: CapabilityRequest = parse_json(body)?;
    let span = tracing::Span::current();
    span.record("hostid", tracing::field::display(&request.hostid));
    span.record("role", request.role.as_str());

    let now = shared::now_unix();
    let skew = state.settings.clock_skew.as_secs() as i64;
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
        let account = auth::authenticate_device(c, &token)?;
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
    state: &State,
    request: &CapabilityRequest,
    now: i64,
    answer: registry::CapabilityAnswer,
) -> HttpResponse {
    let claims = CapabilityClaims {
        iss: ISSUER.to_owned(),
        sub: request.hostid.to_string(),
        request_id: request.request_id,
        iat: now,
        exp: now + state.settings.response_lifetime.as_secs() as i64,
        server_id: answer.server_id,
        role: answer.role,
        pair: answer.pair,
        poll_interval_secs: state.settings.poll_interval.as_secs(),
        rights: answer.rights,
        serve_until: now + 30 * 86_400,
        binding: None,
    };
    let token = state.signer.sign(&claims);
    HttpResponse::Ok().json(CapabilityResponse { token })
}
