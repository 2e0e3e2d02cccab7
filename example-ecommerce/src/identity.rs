//! The shop's identities: how its services learn to check tokens, the
//! demo's users, and the development issuer that signs their tokens.
//!
//! In production the tokens come from an OpenID Connect provider: give
//! the services its key set (`--jwks-url` or `--jwks-file`), its issuer and
//! the audience the shop's tokens carry. For development and the demo,
//! `ecommerce auth init` creates a key pair and a JWKS file, and
//! `ecommerce auth token` prints a token; the in-memory demo makes a fresh
//! key pair in memory each time it starts. No key is compiled in.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use strata::auth::{DevIssuer, JwtConfig, JwtVerifier, KeySource};

use crate::domain::roles;
use crate::http::auth::{DemoSignIn, TokenMinter};
use crate::http::Auth;

/// The issuer the development issuer signs as.
pub const DEV_ISSUER: &str = "https://dev-issuer.strata.invalid";
/// The audience of the shop's tokens, unless configured otherwise.
pub const DEFAULT_AUDIENCE: &str = "strata-shop";
/// How long a development token lives.
pub const DEV_TOKEN_TTL: Duration = Duration::from_secs(8 * 3600);

/// The demo's users: two customers, a member of staff and an operator.
pub const DEMO_USERS: [(&str, &str); 4] = [
    ("ada", roles::CUSTOMER),
    ("bob", roles::CUSTOMER),
    ("sam", roles::STAFF),
    ("olga", roles::OPERATOR),
];

/// How a service checks bearer tokens (flags and environment).
#[derive(Args, Clone, Debug, Default)]
pub struct AuthArgs {
    /// The token issuer's key set (JWKS) as a URL, e.g. an OpenID Connect
    /// provider's `jwks_uri`. Refetched when an unknown key id appears.
    #[arg(long, env = "STRATA_JWKS_URL", conflicts_with = "jwks_file")]
    pub jwks_url: Option<String>,
    /// The token issuer's key set (JWKS) as a file.
    #[arg(long, env = "STRATA_JWKS_FILE")]
    pub jwks_file: Option<PathBuf>,
    /// The tokens' required issuer (`iss`); defaults to the development
    /// issuer's when --dev-issuer is used.
    #[arg(long, env = "STRATA_TOKEN_ISSUER")]
    pub issuer: Option<String>,
    /// The audience (`aud`) the tokens must carry.
    #[arg(long, env = "STRATA_TOKEN_AUDIENCE", default_value = DEFAULT_AUDIENCE)]
    pub audience: String,
    /// Where the roles are in a token: a claim name or a dotted path
    /// (`realm_access.roles` for Keycloak).
    #[arg(long, env = "STRATA_ROLES_CLAIM", default_value = "roles")]
    pub roles_claim: String,
    /// Use the development issuer's keys in this folder (made by
    /// `ecommerce auth init`) instead of --jwks-url / --jwks-file.
    #[arg(long, env = "STRATA_DEV_ISSUER", conflicts_with_all = ["jwks_url", "jwks_file"])]
    pub dev_issuer: Option<PathBuf>,
}

impl AuthArgs {
    /// The shop's [`Auth`] from these flags. Fails, saying how to fix it,
    /// when no key set is configured: a service that serves users must
    /// know how to check their tokens.
    pub async fn auth(&self) -> anyhow::Result<Auth> {
        let (source, issuer) = match (&self.dev_issuer, &self.jwks_url, &self.jwks_file) {
            (Some(dir), _, _) => (
                KeySource::File(dir.join("jwks.json")),
                self.issuer.clone().unwrap_or_else(|| DEV_ISSUER.to_owned()),
            ),
            (None, Some(url), _) => (KeySource::Url(url.clone()), self.required_issuer()?),
            (None, None, Some(file)) => (KeySource::File(file.clone()), self.required_issuer()?),
            (None, None, None) => anyhow::bail!(
                "no token issuer configured: pass --jwks-url or --jwks-file with --issuer \
                 (your OpenID Connect provider), or, for development, run \
                 `ecommerce auth init --dir .strata-dev` and pass --dev-issuer .strata-dev"
            ),
        };
        let config = JwtConfig::new(issuer, self.audience.clone())
            .with_roles_claim(self.roles_claim.clone());
        let verifier = JwtVerifier::new(config, source)
            .await
            .context("loading the token issuer's key set")?;
        Ok(Auth::new(Arc::new(verifier)))
    }

    fn required_issuer(&self) -> anyhow::Result<String> {
        self.issuer
            .clone()
            .context("--issuer (STRATA_TOKEN_ISSUER) is required with --jwks-url / --jwks-file")
    }
}

/// The demo's identities: a development issuer in memory, its users, and
/// the [`Auth`] that checks its tokens and signs the demo users in.
#[derive(Clone)]
pub struct DemoIdentity {
    issuer: Arc<DevIssuer>,
}

impl DemoIdentity {
    /// A fresh key pair, in memory only.
    pub fn generate() -> Self {
        DemoIdentity {
            issuer: Arc::new(DevIssuer::generate(DEV_ISSUER, DEFAULT_AUDIENCE)),
        }
    }

    /// The keys kept in `dir` (made there if missing).
    pub fn load_or_generate(dir: &std::path::Path) -> anyhow::Result<Self> {
        let issuer = DevIssuer::load_or_generate(dir, DEV_ISSUER, DEFAULT_AUDIENCE)
            .with_context(|| format!("the development issuer in {}", dir.display()))?;
        Ok(DemoIdentity {
            issuer: Arc::new(issuer),
        })
    }

    /// The issuer.
    pub fn issuer(&self) -> &DevIssuer {
        &self.issuer
    }

    /// A token for `subject` with `roles`.
    pub fn token(&self, subject: &str, roles: &[&str]) -> String {
        self.issuer.token(subject, roles, DEV_TOKEN_TTL)
    }

    /// A token for a demo user, with the user's role.
    pub fn demo_token(&self, user: &str) -> String {
        let role = DEMO_USERS
            .iter()
            .find(|(u, _)| *u == user)
            .map(|(_, r)| *r)
            .unwrap_or(roles::CUSTOMER);
        self.token(user, &[role])
    }

    /// `Bearer <token>` for a demo user.
    pub fn bearer(&self, user: &str) -> String {
        format!("Bearer {}", self.demo_token(user))
    }

    /// Checks this issuer's tokens; no sign-in routes.
    pub fn auth(&self) -> Auth {
        Auth::new(Arc::new(self.issuer.verifier()))
    }

    /// Checks this issuer's tokens and lets the demo users sign in with a
    /// click (`/auth/demo-users`, `/auth/demo-sign-in`).
    pub fn auth_with_sign_in(&self) -> Auth {
        let issuer = Arc::clone(&self.issuer);
        let mint: TokenMinter = Arc::new(move |subject: &str, roles: &[String]| {
            let roles: Vec<&str> = roles.iter().map(String::as_str).collect();
            Some(issuer.token(subject, &roles, DEV_TOKEN_TTL))
        });
        self.auth().with_demo_sign_in(DemoSignIn {
            users: DEMO_USERS
                .iter()
                .map(|(u, r)| ((*u).to_owned(), vec![(*r).to_owned()]))
                .collect(),
            mint,
            expires_in: DEV_TOKEN_TTL.as_secs(),
        })
    }
}
