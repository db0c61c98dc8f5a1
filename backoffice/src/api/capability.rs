//! `POST /api/v1/capability`: license servers register, poll and get signed rights, a
//! binding of their own key, and their pair's secret; and hold their live link (a poll
//! with `link`, answered when their rights change).

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{HttpRequest, HttpResponse, post, web};
use http_kit::auth::bearer;
use http_kit::extract::{parse_json, read_body};
use shared::ErrorCode;
use shared::capability::{CapabilityClaims, CapabilityRequest, CapabilityResponse, ISSUER};
use shared::grant::BindingClaims;

use super::doc;
use crate::domain::validate::{self, ServerKey};
use crate::error::{AppError, AppResult};
use crate::http::MAX_BODY;
use crate::links::Refused;
use crate::state::{AppState, State, run, run_write};
use crate::store::capability::{self as registry, CapabilityAnswer, Polled};
use crate::store::tokens;
use crate::writer::{Committed, PollInput};

/// A license server's startup request or poll. The device token is checked before the body
/// is parsed. The answer is a JWT (EdDSA, the key at `/api/v1/signing-key`) over the
/// pair's complete rights, addressed to the hostid and bound to the request ID, which may
/// be served until `serve_until` (`RIGHTS_VALIDITY` from now). A request with `server_key`
/// gets `binding`, a token signed with the same key that binds that key to the hostid and
/// the pair until `serve_until`. Either server of a pair gets the pair's secret
/// (`pair_token`). The answer is sent only once what the request changed is committed.
///
/// A request with `link` is the server's live link: when the rights it would be answered
/// with have the revision the server holds, it is held until they change (answered then,
/// signed like any answer) or for `wait_secs` at most (a third of `SERVER_TIMEOUT` at
/// most), then answered `204` (nothing changed). `MAX_LINKS` links are held at once, and
/// `MAX_LINKS_PER_ACCOUNT` of one account; one more is `TOO_MANY_REQUESTS`.
#[utoipa::path(
    tag = "capability",
    security(("device_token" = [])),
    request_body = CapabilityRequest,
    responses(
        (status = 200, description = "Signed rights", body = CapabilityResponse),
        (status = 204, description = "A live link held until its time was up: nothing changed"),
        doc::Capability
    )
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
    let span = tracing::Span::current();
    span.record("hostid", tracing::field::display(&request.hostid));

    let key = validate::capability_request(&request)?;
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

    let input = PollInput {
        token,
        request: Arc::new(request),
        key,
        now,
    };
    let ((account, polled), committed) = state.writer.poll(input.clone()).await?;
    if let Some(a) = &account {
        span.record("account", a.as_str());
    }
    let (answer, committed, changed) = match polled? {
        Polled::Answered(answer) => (*answer, committed, false),
        Polled::Slow => {
            let (answer, committed) = slow_path(state, input.clone()).await?;
            (answer, committed, true)
        }
    };
    let hold = match (&input.request.link, &account) {
        (Some(link), Some(account)) if !changed && link.revision == answer.revision() => {
            Some((account.clone(), link.wait_secs))
        }
        _ => None,
    };
    // Signed while the rest of the batch is carried out; sent once it is committed.
    let key_change = answer.key_change.clone();
    let response = hold.is_none().then(|| sign(state, &input, answer));
    committed.wait().await?;
    if let Some(change) = key_change {
        tracing::info!(
            old_key_id = change.old.as_deref().unwrap_or("none"),
            new_key_id = %change.new,
            "the server's public key changed; answers bind the new one"
        );
    }
    if changed && let Some(account) = &account {
        // The registry changed: the pair's other server looks again.
        state.links.changed(account);
    }
    match (response, hold) {
        (Some(response), _) => Ok(response),
        (None, Some((account, wait_secs))) => hold_link(state, input, &account, wait_secs).await,
        (None, None) => Err(AppError::internal(
            "a request was neither answered nor held",
        )),
    }
}

/// Holds a live link until the rights of its server differ from those it holds (answered
/// then) or its time is up (`204`). Opened before its rights are read again, so that a
/// change committed at any moment after is seen. (A right's start and end are in the
/// signed rights: the server keeps them itself, nothing needs telling then.)
async fn hold_link(
    state: &AppState,
    input: PollInput,
    account: &str,
    wait_secs: u32,
) -> AppResult<HttpResponse> {
    let mut link = state.links.open(account).map_err(|refused| {
        let (limit, what) = match refused {
            Refused::Full(n) => (n, "MAX_LINKS"),
            Refused::AccountFull(n) => (n, "MAX_LINKS_PER_ACCOUNT"),
        };
        AppError::too_many_requests(
            format!(
                "{limit} live links are open ({what}); this server keeps its rights by \
                 polling and opens its link again later"
            ),
            state.settings.link_hold().as_secs(),
        )
    })?;
    let held = Duration::from_secs(u64::from(wait_secs)).min(state.settings.link_hold());
    let deadline = Instant::now() + held;
    let revision = input
        .request
        .link
        .as_ref()
        .map(|l| l.revision.clone())
        .unwrap_or_default();
    loop {
        let (hostid, account_id) = (input.request.hostid.clone(), account.to_owned());
        let answer = run(state, move |c| {
            registry::current_answer(c, &account_id, &hostid)
        })
        .await?;
        let Some(answer) = answer else {
            // The server left the registry: its next poll hears why.
            return Ok(HttpResponse::NoContent().finish());
        };
        if answer.revision() != revision {
            tracing::debug!("rights changed; answering the live link");
            let now = shared::now_unix();
            return Ok(sign(state, &PollInput { now, ..input }, answer));
        }
        tokio::select! {
            () = link.changed() => {}
            () = tokio::time::sleep_until(deadline.into()) => {
                return Ok(HttpResponse::NoContent().finish());
            }
        }
    }
}

/// A request that changes the registry, under the account's lock.
///
/// A refusal may keep what it wrote (a backup that came before its main is recorded as
/// waiting), so it too is answered only once its batch is committed: a customer who reads
/// the registry after the refusal finds the record.
async fn slow_path(state: &AppState, input: PollInput) -> AppResult<(CapabilityAnswer, Committed)> {
    let (answer, committed) = run_write(state, move |c| {
        let account = tokens::authenticate_device(c, &input.token)?;
        tracing::Span::current().record("account", account.as_str());
        registry::capability(c, &account, &input.request, input.key.as_ref(), input.now)
    })
    .await?;
    match answer {
        Ok(answer) => Ok((answer, committed)),
        Err(refused) => {
            committed.wait().await?;
            Err(refused)
        }
    }
}

fn sign(state: &AppState, input: &PollInput, answer: CapabilityAnswer) -> HttpResponse {
    let (request, now) = (&input.request, input.now);
    let secs = |d: std::time::Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
    let serve_until = now.saturating_add(secs(state.settings.rights_validity));
    let binding = input.key.as_ref().map(|k: &ServerKey| {
        BindingClaims {
            iss: ISSUER.to_owned(),
            sub: request.hostid.to_string(),
            key: k.key.clone(),
            pair: answer.pair.clone(),
            iat: now,
            exp: serve_until,
        }
        .sign(&state.signer)
    });
    let claims = CapabilityClaims {
        iss: ISSUER.to_owned(),
        sub: request.hostid.to_string(),
        request_id: request.request_id,
        iat: now,
        exp: now.saturating_add(secs(state.settings.response_lifetime)),
        server_id: answer.server_id,
        role: answer.role,
        pair: answer.pair,
        cluster: answer.cluster,
        poll_interval_secs: state.settings.poll_interval.as_secs(),
        rights: answer.rights,
        serve_until,
        binding,
        pair_token: answer.pair_token.map(|t| t.expose().to_owned()),
    };
    let token = state.signer.sign(&claims);
    HttpResponse::Ok().json(CapabilityResponse { token })
}
