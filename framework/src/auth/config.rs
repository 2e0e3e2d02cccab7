//! What a verifier accepts.

use std::time::Duration;

use jsonwebtoken::Algorithm;

use super::AuthSetupError;

/// What a [`JwtVerifier`](super::JwtVerifier) accepts: the issuer, the
/// audience, the algorithms, the clock leeway and where the roles are.
///
/// The fields are public to read and adjust; a verifier checks them when
/// it is built ([`JwtConfig::validate`]) and refuses a configuration that
/// allows a shared-secret algorithm (`HS*`) or none at all.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct JwtConfig {
    /// The only accepted `iss` claim, e.g. `https://id.example.com/realms/shop`.
    pub issuer: String,
    /// The accepted audience: the `aud` claim must be this string or an
    /// array that contains it.
    pub audience: String,
    /// Clock skew allowed on `exp` and `nbf`. Default 30 s.
    pub leeway: Duration,
    /// The accepted signature algorithms. Default RS256, ES256 and EdDSA.
    /// Never HS256, HS384 or HS512.
    pub algorithms: Vec<Algorithm>,
    /// The claim holding the roles. Default `roles`. A name with dots that
    /// is not itself a claim is a path into nested objects, e.g.
    /// `realm_access.roles` (Keycloak). The claim is an array of strings or
    /// a space-separated string (like `scope`).
    pub roles_claim: String,
    /// The shortest time between two fetches of a key set from a URL
    /// prompted by tokens naming an unknown key. Default 30 s.
    pub refetch_interval: Duration,
    /// How old a key set from a URL may grow before the next token that
    /// comes along fetches it again. Default 10 minutes.
    pub refresh_interval: Duration,
    /// How many accepted tokens to remember (by SHA-256), so a client that
    /// sends the same token with every request pays for one signature
    /// check, not one per request. A remembered token is still refused
    /// once it expires (its `exp` plus the leeway), and every one is
    /// forgotten when the key set changes. Default 10,000; 0 turns the
    /// cache off.
    pub cache_capacity: u64,
}

impl JwtConfig {
    /// The default algorithms: RS256, ES256 and EdDSA.
    pub const DEFAULT_ALGORITHMS: [Algorithm; 3] =
        [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];

    /// Accepts tokens from `issuer` for `audience`, with the defaults.
    pub fn new(issuer: impl Into<String>, audience: impl Into<String>) -> Self {
        JwtConfig {
            issuer: issuer.into(),
            audience: audience.into(),
            leeway: Duration::from_secs(30),
            algorithms: Self::DEFAULT_ALGORITHMS.to_vec(),
            roles_claim: "roles".to_owned(),
            refetch_interval: Duration::from_secs(30),
            refresh_interval: Duration::from_secs(600),
            cache_capacity: 10_000,
        }
    }

    /// Sets how many accepted tokens are remembered (0: none).
    pub fn with_cache_capacity(mut self, capacity: u64) -> Self {
        self.cache_capacity = capacity;
        self
    }

    /// Sets the clock leeway.
    pub fn with_leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }

    /// Sets the accepted algorithms; refuses an empty list and any
    /// shared-secret algorithm.
    pub fn with_algorithms(
        mut self,
        algorithms: impl IntoIterator<Item = Algorithm>,
    ) -> Result<Self, AuthSetupError> {
        self.algorithms = algorithms.into_iter().collect();
        check_algorithms(&self.algorithms)?;
        Ok(self)
    }

    /// Sets the claim (or dotted path) holding the roles.
    pub fn with_roles_claim(mut self, claim: impl Into<String>) -> Self {
        self.roles_claim = claim.into();
        self
    }

    /// Sets the shortest time between two refetches prompted by unknown
    /// keys.
    pub fn with_refetch_interval(mut self, interval: Duration) -> Self {
        self.refetch_interval = interval;
        self
    }

    /// Sets how old a fetched key set may grow before it is fetched again.
    pub fn with_refresh_interval(mut self, interval: Duration) -> Self {
        self.refresh_interval = interval;
        self
    }

    /// Checks the configuration: issuer, audience and roles claim not
    /// empty; at least one algorithm, none of them shared-secret.
    pub fn validate(&self) -> Result<(), AuthSetupError> {
        if self.issuer.is_empty() {
            return Err(AuthSetupError::Config("the issuer is empty".into()));
        }
        if self.audience.is_empty() {
            return Err(AuthSetupError::Config("the audience is empty".into()));
        }
        if self.roles_claim.is_empty() {
            return Err(AuthSetupError::Config("the roles claim is empty".into()));
        }
        check_algorithms(&self.algorithms)
    }
}

fn check_algorithms(algorithms: &[Algorithm]) -> Result<(), AuthSetupError> {
    if algorithms.is_empty() {
        return Err(AuthSetupError::Config("no algorithm is allowed".into()));
    }
    if let Some(alg) = algorithms.iter().find(|a| is_symmetric(**a)) {
        return Err(AuthSetupError::Config(format!(
            "{alg:?} is a shared-secret algorithm: only asymmetric signatures are accepted"
        )));
    }
    Ok(())
}

/// True for the HMAC algorithms, which a verifier never accepts.
pub(super) fn is_symmetric(alg: Algorithm) -> bool {
    matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_secret_and_empty_algorithm_lists_are_refused() {
        let config = JwtConfig::new("iss", "aud");
        assert!(config.validate().is_ok());
        assert!(config.clone().with_algorithms([]).is_err());
        let err = config
            .clone()
            .with_algorithms([Algorithm::RS256, Algorithm::HS256])
            .unwrap_err();
        assert!(err.to_string().contains("HS256"), "{err}");
        // Setting the field directly is caught when a verifier is built.
        let mut config = config;
        config.algorithms = vec![Algorithm::HS512];
        assert!(config.validate().is_err());
        assert!(JwtConfig::new("", "aud").validate().is_err());
        assert!(JwtConfig::new("iss", "").validate().is_err());
    }
}
