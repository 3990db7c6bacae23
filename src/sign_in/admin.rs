//! The session admin API: how a login service opens sessions after it has
//! authenticated a user, and how operators list and end them.
//!
//! - `POST /admin/sessions` `{"user_uuid","client_id","user_attributes"}` → 201
//! - `GET /admin/sessions?user_uuid=…` → 200 `{"sessions":[…]}`
//! - `DELETE /admin/sessions/{handle}` → 204, or 404 when there is none
//!
//! Every call needs `Authorization: Bearer <admin.token>`, compared in
//! constant time; without a configured token the API is off (404).

use crate::http::body::RequestBody;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use subtle::ConstantTimeEq;

use super::{cookies::iso_millis, read_small_body, SignIn};
use crate::http::body::{empty, json, json_error, Body};
use crate::session::service::CreateError;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRequest {
    user_uuid: String,
    client_id: String,
    #[serde(default)]
    user_attributes: Option<serde_json::Value>,
}

pub(super) async fn handle(sign_in: &SignIn, req: Request<RequestBody>) -> Response<Body> {
    let Some(expected) = &sign_in.admin_token else {
        return json_error(StatusCode::NOT_FOUND, "Admin API is disabled");
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .unwrap_or_default();
    if !bool::from(given.ct_eq(expected.expose().as_bytes())) {
        let mut res = json_error(StatusCode::UNAUTHORIZED, "Admin token is not valid");
        res.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return res;
    }
    let path = req.uri().path().trim_end_matches('/');
    match (req.method().clone(), path) {
        (Method::POST, "/admin/sessions") => create(sign_in, req).await,
        (Method::GET, "/admin/sessions") => list(sign_in, &req).await,
        (Method::DELETE, p) if p.starts_with("/admin/sessions/") => {
            let handle = &p["/admin/sessions/".len()..];
            match sign_in.sessions.revoke_handle(handle).await {
                Ok(true) => {
                    let mut r = Response::new(empty());
                    *r.status_mut() = StatusCode::NO_CONTENT;
                    r
                }
                Ok(false) => json_error(StatusCode::NOT_FOUND, "No such session"),
                Err(_) => json_error(StatusCode::SERVICE_UNAVAILABLE, "Session store unavailable"),
            }
        }
        (_, "/admin/sessions") => json_error(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed"),
        _ => json_error(StatusCode::NOT_FOUND, "Not found"),
    }
}

async fn create(sign_in: &SignIn, req: Request<RequestBody>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let body = match read_small_body(&parts.headers, body).await {
        Ok(b) => b,
        Err(res) => return res,
    };
    let input: CreateRequest = match serde_json::from_slice(&body) {
        Ok(i) => i,
        Err(e) => {
            return json_error(
                StatusCode::UNPROCESSABLE_ENTITY,
                &format!("Invalid session request: {e}"),
            )
        }
    };
    if input.user_uuid.is_empty() {
        return json_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "user_uuid must not be empty",
        );
    }
    let attrs = input
        .user_attributes
        .unwrap_or_else(|| serde_json::json!({}));
    if !attrs.is_object() {
        return json_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "user_attributes must be an object",
        );
    }
    match sign_in
        .sessions
        .create(&input.user_uuid, &input.client_id, attrs)
        .await
    {
        Ok(b) => {
            let set_cookie: Vec<String> = sign_in
                .set_cookies(&b)
                .iter()
                .filter_map(|v| v.to_str().ok().map(str::to_owned))
                .collect();
            let mut out = serde_json::json!({
                "session_handle": b.session.handle,
                "access_token": b.access_token,
                "refresh_token": b.refresh_token,
                "access_token_expiration": iso_millis(b.access_exp_ms),
                "refresh_token_expiration": iso_millis(b.session.refresh_exp_ms),
                "set_cookie": set_cookie,
            });
            if b.client.anti_csrf {
                out["anti_csrf_token"] = b.anti_csrf_token.clone().into();
            }
            json(StatusCode::CREATED, &out)
        }
        Err(CreateError::UnknownClient) => {
            json_error(StatusCode::UNPROCESSABLE_ENTITY, "Unknown client_id")
        }
        Err(CreateError::Store(_)) => {
            json_error(StatusCode::SERVICE_UNAVAILABLE, "Session store unavailable")
        }
        // Only adoption meets a session gone under it.
        Err(CreateError::Internal | CreateError::Gone) => {
            json_error(StatusCode::INTERNAL_SERVER_ERROR, "Internal error")
        }
    }
}

async fn list(sign_in: &SignIn, req: &Request<RequestBody>) -> Response<Body> {
    let user = req.uri().query().and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "user_uuid")
            .map(|(_, v)| v.into_owned())
    });
    let Some(user) = user.filter(|u| !u.is_empty()) else {
        return json_error(StatusCode::BAD_REQUEST, "user_uuid is required");
    };
    match sign_in.sessions.list_user(&user).await {
        Ok(records) => {
            let sessions: Vec<_> = records
                .iter()
                .map(|r| {
                    serde_json::json!({
                        "session_handle": r.handle,
                        "user_uuid": r.user_uuid,
                        "client_id": r.client_id,
                        "created_at": iso_millis(r.created_at_ms),
                        "refresh_token_expiration": iso_millis(r.refresh_exp_ms),
                    })
                })
                .collect();
            json(StatusCode::OK, &serde_json::json!({ "sessions": sessions }))
        }
        Err(_) => json_error(StatusCode::SERVICE_UNAVAILABLE, "Session store unavailable"),
    }
}
