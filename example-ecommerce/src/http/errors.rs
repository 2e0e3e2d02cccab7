//! Errors answered as JSON `{"error": {"code", "message"}}`, and the JSON
//! body extractor whose rejections are such errors.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde_json::json;
use strata::{Position, QueryError};

use crate::app::ShopError;

use super::*;

/// An error answered as JSON.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    position: Option<Position>,
    /// A `WWW-Authenticate` challenge (401 answers).
    challenge: Option<String>,
}

impl ApiError {
    /// An error with a status, a stable code and a message for the client.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            position: None,
            challenge: None,
        }
    }

    /// 401: the request needs (valid) credentials; `challenge` goes into
    /// `WWW-Authenticate`.
    pub fn unauthorized(challenge: String, message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message);
        e.challenge = Some(challenge);
        e
    }

    /// 403: the caller is known but may not do this.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": { "code": self.code, "message": self.message } });
        if let Some(p) = self.position {
            body["position"] = json!(p.0);
        }
        let mut resp = (self.status, Json(body)).into_response();
        if let Some(p) = self.position {
            if let Ok(v) = HeaderValue::from_str(&p.0.to_string()) {
                resp.headers_mut().insert(POSITION_HEADER, v);
            }
        }
        if let Some(c) = self.challenge.and_then(|c| HeaderValue::from_str(&c).ok()) {
            resp.headers_mut()
                .insert(axum::http::header::WWW_AUTHENTICATE, c);
        }
        resp
    }
}

impl From<ShopError> for ApiError {
    fn from(e: ShopError) -> Self {
        match e {
            ShopError::BadRequest(m) => ApiError::new(StatusCode::BAD_REQUEST, "bad_request", m),
            ShopError::NotFound(m) => ApiError::new(StatusCode::NOT_FOUND, "not_found", m),
            ShopError::Rule(m) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "rule_violated", m)
            }
            ShopError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            ShopError::PaymentInProgress(m) => {
                ApiError::new(StatusCode::CONFLICT, "payment_in_progress", m)
            }
            ShopError::KeyReused(m) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                m,
            ),
            ShopError::PaymentDeclined { reason, outcome } => {
                let mut e = ApiError::new(StatusCode::PAYMENT_REQUIRED, "payment_declined", reason);
                e.position = Some(outcome.position);
                e
            }
            ShopError::Forbidden(m) => ApiError::forbidden(m),
            ShopError::Unavailable(internal) => {
                tracing::error!(error = %internal, "command failed");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the service is unavailable; retry with the same Idempotency-Key",
                )
            }
        }
    }
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> Self {
        match e {
            QueryError::NotCaughtUp {
                view,
                requested,
                current,
            } => ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "not_caught_up",
                format!("view {view} has applied position {current}, not yet {requested}; retry"),
            ),
            other => {
                tracing::error!(error = %other, "query failed");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the service is unavailable",
                )
            }
        }
    }
}

/// `Json<T>` whose rejections are our JSON errors (400, 413, 415).
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(rejection) => Err(json_rejection(&rejection)),
        }
    }
}

fn json_rejection(r: &JsonRejection) -> ApiError {
    let status = r.status();
    let code = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        _ => "malformed_json",
    };
    let status = if status == StatusCode::UNPROCESSABLE_ENTITY {
        StatusCode::BAD_REQUEST
    } else {
        status
    };
    ApiError::new(status, code, r.body_text())
}
