//! Bearer-token authentication: JSON Web Tokens (RFC 7519) signed by an
//! identity provider, checked against the provider's public keys (a JSON
//! Web Key Set, RFC 7517). Feature `auth`.
//!
//! - [`JwtVerifier`] turns a token into a [`Principal`](crate::Principal)
//!   (it implements [`Authenticator`](crate::Authenticator)). It loads the
//!   key set once from a file or a URL ([`KeySource`]); with a URL it
//!   fetches the set again when a token names a key it does not know (key
//!   rotation, at most once per [`JwtConfig::refetch_interval`]) and, lazily
//!   on use, every [`JwtConfig::refresh_interval`]. It starts no task.
//! - [`JwtConfig`] says which issuer, audience and algorithms to accept and
//!   where the roles are.
//! - [`DevIssuer`] signs tokens with an Ed25519 key it generates, so demos
//!   and tests need no identity provider.
//!
//! Only asymmetric signatures are accepted (RSA, ECDSA P-256/P-384,
//! Ed25519): never `none`, never a shared-secret HMAC. The token's `alg`
//! must be allowed by the configuration, fit the key's type and equal the
//! key's own `alg` when the key states one. `docs/auth.md` has the whole
//! set of rules.

mod config;
mod dev;
mod jwks;
mod verifier;

use std::path::PathBuf;

pub use config::JwtConfig;
pub use dev::DevIssuer;
/// The signature algorithms of JSON Web Signatures (RFC 7518).
pub use jsonwebtoken::Algorithm;
pub use verifier::{JwtVerifier, KeySource};

use crate::error::BoxError;

/// Tokens longer than this (in bytes) are refused before any parsing.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Key sets larger than this (in bytes) are refused, from a file or a URL.
pub const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// Why a verifier or a development issuer could not be set up. These are
/// configuration or deployment problems: a service should refuse to start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthSetupError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file or folder could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file or folder.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The key set could not be fetched (network error, HTTP status other
    /// than success, oversize answer).
    #[error("cannot fetch the key set from {url}: {source}")]
    Fetch {
        /// Where from.
        url: String,
        /// Why.
        #[source]
        source: BoxError,
    },
    /// The key set is not a JWKS (`{"keys": [...]}`).
    #[error("malformed key set: {0}")]
    MalformedJwks(String),
    /// The key set holds no key that can verify a signature (only
    /// symmetric, encryption, unsupported or malformed keys).
    #[error("the key set has no usable signature key")]
    NoUsableKey,
    /// A development issuer's private key or metadata is unreadable.
    #[error("malformed development issuer key: {0}")]
    MalformedKey(String),
    /// The configuration is refused (empty issuer or audience, no
    /// algorithm, a shared-secret algorithm, an empty roles claim).
    #[error("bad authentication configuration: {0}")]
    Config(String),
}
