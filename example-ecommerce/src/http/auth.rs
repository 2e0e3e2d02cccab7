//! Who is calling: bearer tokens in, a [`Caller`] out.
//!
//! Every router of the shop runs [`identify`] first. A request without an
//! `Authorization` header is anonymous; one with `Bearer <token>` is the
//! token's user once the configured [`Authenticator`] accepts it; anything
//! else is answered `401` with a `WWW-Authenticate` challenge (RFC 6750)
//! before any handler runs. Handlers then ask the [`Caller`] for what the
//! route needs: [`Caller::user`], [`Caller::role`], or a read rule of
//! [`strata::ViewAccess`] through [`Caller::may_read`] / [`Caller::may_list`].
//!
//! Anonymous callers that are refused get `401` (sign in); signed-in
//! callers get `403`. Neither says more than that.

use std::sync::Arc;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use strata::{Authenticator, Forbidden, Principal, Unauthenticated, ViewAccess};

use super::ApiError;

/// The realm named in challenges.
pub const REALM: &str = "strata-shop";

/// Issues a token for a subject with roles (the demo's sign-in).
pub type TokenMinter = Arc<dyn Fn(&str, &[String]) -> Option<String> + Send + Sync>;

/// The demo's sign-in: a fixed list of users, each signed in with one
/// click, no password. Only the demo turns it on.
#[derive(Clone)]
pub struct DemoSignIn {
    /// The users, with their roles.
    pub users: Vec<(String, Vec<String>)>,
    /// Makes their tokens.
    pub mint: TokenMinter,
    /// How long a token lives, in seconds (said in the answer).
    pub expires_in: u64,
}

/// How the shop authenticates requests, and who reads which views.
#[derive(Clone)]
pub struct Auth {
    authenticator: Option<Arc<dyn Authenticator>>,
    access: Arc<ViewAccess>,
    sign_in: Option<DemoSignIn>,
}

impl Auth {
    /// Bearer tokens checked by `authenticator`; the shop's read rules.
    pub fn new(authenticator: Arc<dyn Authenticator>) -> Self {
        Auth {
            authenticator: Some(authenticator),
            access: Arc::new(crate::views::access()),
            sign_in: None,
        }
    }

    /// No authenticator: every request is anonymous (reads the catalog
    /// and nothing else), and a request that brings a token is refused.
    pub fn anonymous_only() -> Self {
        Auth {
            authenticator: None,
            access: Arc::new(crate::views::access()),
            sign_in: None,
        }
    }

    /// Turns on the demo's sign-in routes on the query API:
    /// `GET /auth/demo-users` and `POST /auth/demo-sign-in` with
    /// `{"user": name}`. For demos only: anyone may sign in as anyone.
    pub fn with_demo_sign_in(mut self, sign_in: DemoSignIn) -> Self {
        self.sign_in = Some(sign_in);
        self
    }

    /// The routes of the demo's sign-in, when it is on (none otherwise).
    pub fn sign_in_router(&self) -> axum::Router {
        let Some(sign_in) = self.sign_in.clone() else {
            return axum::Router::new();
        };
        axum::Router::new()
            .route("/auth/demo-users", axum::routing::get(demo_users))
            .route("/auth/demo-sign-in", axum::routing::post(demo_sign_in))
            .with_state(sign_in)
    }

    /// The read rules.
    pub fn access(&self) -> &ViewAccess {
        &self.access
    }

    /// The principal a request's headers stand for.
    pub async fn principal(
        &self,
        headers: &axum::http::HeaderMap,
    ) -> Result<Principal, Unauthenticated> {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Ok(Principal::anonymous());
        };
        let value = value
            .to_str()
            .map_err(|_| Unauthenticated::invalid("authorization header is not ASCII"))?;
        let token = match value.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
            _ => return Err(Unauthenticated::invalid("not a bearer credential")),
        };
        if token.is_empty() {
            return Err(Unauthenticated::invalid("empty bearer token"));
        }
        match &self.authenticator {
            Some(a) => a.authenticate(token).await,
            None => Err(Unauthenticated::invalid("no token issuer is configured")),
        }
    }
}

/// The 401 answer for `why`, with its challenge. The reason is logged, not
/// sent.
pub fn unauthenticated(why: &Unauthenticated) -> ApiError {
    match why {
        Unauthenticated::Invalid { detail } => {
            tracing::info!(reason = %detail, "refused a bearer token");
            ApiError::unauthorized(why.challenge(REALM), "the bearer token is not valid")
        }
        _ => ApiError::unauthorized(why.challenge(REALM), "sign in first: send a bearer token"),
    }
}

/// Middleware: resolves the caller and stores it in the request, or
/// answers 401.
pub async fn identify(State(auth): State<Auth>, mut req: Request, next: Next) -> Response {
    match auth.principal(req.headers()).await {
        Ok(p) => {
            req.extensions_mut().insert(Caller {
                principal: p,
                auth: auth.clone(),
            });
            next.run(req).await
        }
        Err(e) => unauthenticated(&e).into_response(),
    }
}

/// The caller of a request, as [`identify`] found it.
#[derive(Clone)]
pub struct Caller {
    principal: Principal,
    auth: Auth,
}

impl Caller {
    /// A caller with `principal` (for code that serves requests itself,
    /// such as live streams).
    pub fn new(principal: Principal, auth: Auth) -> Self {
        Caller { principal, auth }
    }

    /// Who it is.
    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    /// The answer to a refusal: 401 for an anonymous caller, 403 otherwise.
    pub fn deny(&self, why: Forbidden) -> ApiError {
        if self.principal.is_anonymous() {
            unauthenticated(&Unauthenticated::Missing)
        } else {
            ApiError::forbidden(why.reason)
        }
    }

    /// A signed-in user, or 401.
    pub fn user(&self) -> Result<&Principal, ApiError> {
        if self.principal.is_user() {
            Ok(&self.principal)
        } else {
            Err(unauthenticated(&Unauthenticated::Missing))
        }
    }

    /// A user holding `role`: 401 when anonymous, 403 without the role.
    pub fn role(&self, role: &str, what: &str) -> Result<&Principal, ApiError> {
        let who = self.user()?;
        if who.has_role(role) {
            Ok(who)
        } else {
            Err(ApiError::forbidden(format!("only {role} may {what}")))
        }
    }

    /// Whether the caller may read document `key` of `view` (`doc`: its
    /// content, `None` when there is none).
    pub fn may_read(&self, view: &str, key: &str, doc: Option<&Value>) -> Result<(), ApiError> {
        self.auth
            .access()
            .may_read(&self.principal, view, key, doc)
            .map_err(|f| self.deny(f))
    }

    /// Whether the caller may list or follow all of `view`.
    pub fn may_list(&self, view: &str) -> Result<(), ApiError> {
        self.auth
            .access()
            .may_list(&self.principal, view)
            .map_err(|f| self.deny(f))
    }

    /// Whether the caller reads every document of `view`.
    pub fn sees_all(&self, view: &str) -> bool {
        self.auth.access().may_list(&self.principal, view).is_ok()
    }

    /// Whether a document's new state may go to this caller (for streams
    /// that were allowed to follow a key before its owner was known).
    pub fn sees(&self, view: &str, key: &str, doc: Option<&Value>) -> bool {
        self.auth
            .access()
            .may_read(&self.principal, view, key, doc)
            .is_ok()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Caller>().cloned().ok_or_else(|| {
            // A router built without `identify`: a bug, never "anonymous".
            tracing::error!("a route needs the caller but the router does not identify callers");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error",
            )
        })
    }
}

/// What a group of routes asks of its callers, checked before the request
/// is read any further (so an anonymous caller learns nothing from the
/// body's validation).
#[derive(Clone, Copy, Debug)]
pub enum Needs {
    /// A signed-in user.
    User,
    /// A user holding the role; `what` completes "only \<role\> may …".
    Role(&'static str, &'static str),
}

async fn check_needs(
    State(needs): State<Needs>,
    caller: Caller,
    req: Request,
    next: Next,
) -> Response {
    let ok = match needs {
        Needs::User => caller.user().map(|_| ()),
        Needs::Role(role, what) => caller.role(role, what).map(|_| ()),
    };
    match ok {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// Guards every route of `router` with `needs` (as a route layer: unknown
/// routes still answer 404).
pub fn guarded<S: Clone + Send + Sync + 'static>(
    router: axum::Router<S>,
    needs: Needs,
) -> axum::Router<S> {
    router.route_layer(axum::middleware::from_fn_with_state(needs, check_needs))
}

async fn demo_users(State(sign_in): State<DemoSignIn>) -> Response {
    let users: Vec<Value> = sign_in
        .users
        .iter()
        .map(|(name, roles)| serde_json::json!({ "name": name, "roles": roles }))
        .collect();
    axum::Json(serde_json::json!({ "users": users })).into_response()
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SignInBody {
    user: String,
}

async fn demo_sign_in(
    State(sign_in): State<DemoSignIn>,
    super::ApiJson(body): super::ApiJson<SignInBody>,
) -> Result<Response, ApiError> {
    let Some((name, roles)) = sign_in.users.iter().find(|(n, _)| *n == body.user) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_user",
            "no such demo user",
        ));
    };
    let token = (sign_in.mint)(name, roles).ok_or_else(|| {
        tracing::error!(user = %name, "the demo issuer could not sign a token");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        )
    })?;
    Ok(axum::Json(serde_json::json!({
        "token": token,
        "token_type": "Bearer",
        "subject": name,
        "roles": roles,
        "expires_in": sign_in.expires_in,
    }))
    .into_response())
}
