//! Verifying tokens: header, key, signature, claims.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use jsonwebtoken::Algorithm;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::jwks::{decode_b64url, Key, KeySet};
use super::{AuthSetupError, JwtConfig, MAX_JWKS_BYTES, MAX_TOKEN_BYTES};
use crate::access::{Authenticator, Principal, Unauthenticated};

/// The longest `sub` accepted, in characters.
const MAX_SUBJECT_CHARS: usize = 256;

/// How long one fetch of a key set may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a verifier's keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A JWKS file, read once.
    File(PathBuf),
    /// A JWKS URL (e.g. an OpenID provider's `jwks_uri`), fetched at start,
    /// again when a token names an unknown key (at most once per
    /// [`JwtConfig::refetch_interval`]) and when the set is older than
    /// [`JwtConfig::refresh_interval`].
    Url(String),
}

/// Checks bearer tokens (JWS compact serialisation) against a key set and
/// a [`JwtConfig`], and turns them into [`Principal`]s.
///
/// Cheap to clone: clones share the keys. It runs no task of its own: a
/// key set from a URL is fetched again by the call to
/// [`verify`](Self::verify) that finds it stale or meets an unknown key.
#[derive(Clone)]
pub struct JwtVerifier {
    inner: Arc<Inner>,
}

struct Inner {
    config: JwtConfig,
    keys: RwLock<Arc<KeySet>>,
    remote: Option<Remote>,
    /// Tokens accepted before, by their SHA-256: emptied whenever the key
    /// set changes.
    accepted: Option<moka::sync::Cache<[u8; 32], Accepted>>,
}

/// A token that passed every check, and the window in which it still
/// would (unix seconds, leeway included).
#[derive(Clone)]
struct Accepted {
    principal: Principal,
    not_before: f64,
    until: f64,
}

/// The longest an accepted token is remembered, whatever its `exp`.
const ACCEPTED_TTL: Duration = Duration::from_secs(300);

/// The URL a key set comes from, and when it was last fetched.
struct Remote {
    url: String,
    client: reqwest::Client,
    /// Held while fetching, so fetches never overlap.
    fetches: tokio::sync::Mutex<Fetches>,
}

struct Fetches {
    last_attempt: Instant,
    last_success: Instant,
}

impl JwtVerifier {
    /// Loads the key set from `source` once, and checks `config`.
    pub async fn new(config: JwtConfig, source: KeySource) -> Result<Self, AuthSetupError> {
        config.validate()?;
        match source {
            KeySource::File(path) => {
                let json = read_jwks_file(&path)?;
                let keys = KeySet::parse(&json)?;
                Ok(Self::with_keys(config, keys, None))
            }
            KeySource::Url(url) => {
                let client = reqwest::Client::builder()
                    .timeout(FETCH_TIMEOUT)
                    .connect_timeout(FETCH_TIMEOUT / 2)
                    .build()
                    .map_err(|e| AuthSetupError::Fetch {
                        url: url.clone(),
                        source: e.into(),
                    })?;
                let keys = KeySet::parse(&fetch_jwks(&client, &url).await?)?;
                tracing::info!(url, keys = ?keys.kids(), "fetched the token signing keys");
                let now = Instant::now();
                let remote = Remote {
                    url,
                    client,
                    fetches: tokio::sync::Mutex::new(Fetches {
                        last_attempt: now,
                        last_success: now,
                    }),
                };
                Ok(Self::with_keys(config, keys, Some(remote)))
            }
        }
    }

    /// A verifier over an in-memory JWKS (`{"keys": [...]}`), never
    /// refreshed.
    pub fn from_jwks(config: JwtConfig, jwks_json: &str) -> Result<Self, AuthSetupError> {
        config.validate()?;
        let keys = KeySet::parse(jwks_json)?;
        Ok(Self::with_keys(config, keys, None))
    }

    /// A verifier over `keys`, never refreshed (the development issuer's).
    pub(super) fn from_key_set(config: JwtConfig, keys: KeySet) -> Self {
        Self::with_keys(config, keys, None)
    }

    fn with_keys(config: JwtConfig, keys: KeySet, remote: Option<Remote>) -> Self {
        let accepted = (config.cache_capacity > 0).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(config.cache_capacity)
                .time_to_live(ACCEPTED_TTL)
                .build()
        });
        JwtVerifier {
            inner: Arc::new(Inner {
                config,
                keys: RwLock::new(Arc::new(keys)),
                remote,
                accepted,
            }),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &JwtConfig {
        &self.inner.config
    }

    /// The ids (`kid`) of the usable keys now held, in the set's order.
    pub fn key_ids(&self) -> Vec<String> {
        self.keys().kids()
    }

    /// The principal `token` stands for: `Principal::user(sub, roles)`.
    ///
    /// Every refusal is [`Unauthenticated::Invalid`], whose `detail` says
    /// why, for the log: `token too large`, `malformed: …`,
    /// `algorithm not allowed: …`, `unknown key: …`, `bad signature`,
    /// `expired …`, `not yet valid …`, `wrong issuer …`,
    /// `wrong audience …`, `missing claim: …`.
    pub async fn verify(&self, token: &str) -> Result<Principal, Unauthenticated> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(Unauthenticated::invalid(format!(
                "token too large ({} bytes, at most {MAX_TOKEN_BYTES})",
                token.len()
            )));
        }
        let mut parts = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed("not three dot-separated parts"));
        };
        self.refresh_if_stale().await;
        // A token accepted before, still within its validity window, with
        // the key set unchanged since: the same answer without the
        // signature check.
        let digest = self.inner.accepted.as_ref().map(|_| token_digest(token));
        if let (Some(cache), Some(digest)) = (&self.inner.accepted, &digest) {
            if let Some(hit) = cache.get(digest) {
                let now = unix_now();
                if hit.not_before <= now && now <= hit.until {
                    return Ok(hit.principal);
                }
                cache.invalidate(digest);
            }
        }
        let header = parse_header(header_b64)?;
        let alg = header.algorithm(&self.inner.config)?;

        let keys = match header.kid.as_deref() {
            Some(kid) => self.keys_naming(kid).await,
            None => self.keys(),
        };
        let candidates: Vec<&Key> = match header.kid.as_deref() {
            Some(kid) => {
                let named: Vec<&Key> = keys.named(kid).collect();
                if named.is_empty() {
                    return Err(Unauthenticated::invalid(format!(
                        "unknown key: kid {:?} is not in the key set",
                        clip(kid)
                    )));
                }
                named
            }
            None => match keys.only() {
                Some(key) => vec![key],
                None => {
                    return Err(Unauthenticated::invalid(format!(
                        "unknown key: the token names no kid and the key set holds {} keys",
                        keys.len()
                    )))
                }
            },
        };
        let fitting: Vec<&Key> = candidates
            .iter()
            .copied()
            .filter(|k| k.accepts(alg))
            .collect();
        if fitting.is_empty() {
            let key = candidates[0];
            return Err(Unauthenticated::invalid(format!(
                "algorithm not allowed: {alg:?} does not fit the {} key{}",
                key.key_type,
                key.alg.map(|a| format!(" for {a:?}")).unwrap_or_default()
            )));
        }
        let message_len = header_b64.len() + 1 + payload_b64.len();
        let message = &token.as_bytes()[..message_len];
        let verified = fitting.iter().any(|key| {
            jsonwebtoken::crypto::verify(signature, message, &key.decoding, alg).unwrap_or(false)
        });
        if !verified {
            return Err(Unauthenticated::invalid("bad signature"));
        }

        let payload =
            decode_b64url(payload_b64).ok_or_else(|| malformed("the payload is not base64url"))?;
        let claims: Map<String, Value> = serde_json::from_slice(&payload)
            .map_err(|_| malformed("the payload is not a JSON object"))?;
        let principal = check_claims(&self.inner.config, &claims, unix_now())?;
        if let (Some(cache), Some(digest)) = (&self.inner.accepted, digest) {
            let leeway = self.inner.config.leeway.as_secs_f64();
            let time = |name: &str| claims.get(name).and_then(Value::as_f64);
            if let Some(exp) = time("exp") {
                cache.insert(
                    digest,
                    Accepted {
                        principal: principal.clone(),
                        not_before: time("nbf").map_or(f64::MIN, |t| t - leeway),
                        until: exp + leeway,
                    },
                );
            }
        }
        Ok(principal)
    }

    fn keys(&self) -> Arc<KeySet> {
        self.inner
            .keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set_keys(&self, keys: KeySet) {
        *self
            .inner
            .keys
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(keys);
        // A key may have been withdrawn: nothing accepted before counts.
        if let Some(cache) = &self.inner.accepted {
            cache.invalidate_all();
        }
    }

    /// The key set, fetched again first if it lacks `kid`, comes from a
    /// URL and was not fetched within the refetch interval.
    async fn keys_naming(&self, kid: &str) -> Arc<KeySet> {
        let keys = self.keys();
        let Some(remote) = &self.inner.remote else {
            return keys;
        };
        if keys.has(kid) {
            return keys;
        }
        // Wait for a fetch under way: it may bring the key.
        let mut fetches = remote.fetches.lock().await;
        let keys = self.keys();
        if keys.has(kid) {
            return keys;
        }
        if fetches.last_attempt.elapsed() < self.inner.config.refetch_interval {
            tracing::debug!(
                kid = clip(kid),
                "unknown key id; the key set was fetched too recently to fetch it again"
            );
            return keys;
        }
        tracing::info!(
            kid = clip(kid),
            url = remote.url,
            "unknown key id: fetching the key set again"
        );
        self.fetch(remote, &mut fetches).await;
        self.keys()
    }

    /// Fetches the key set again if it is older than the refresh interval,
    /// no fetch is under way, and none was tried within the shorter of the
    /// two intervals.
    async fn refresh_if_stale(&self) {
        let Some(remote) = &self.inner.remote else {
            return;
        };
        let Ok(mut fetches) = remote.fetches.try_lock() else {
            return;
        };
        // After a failed attempt, wait the shorter of the two intervals
        // before the next.
        let config = &self.inner.config;
        let retry_after = config.refetch_interval.min(config.refresh_interval);
        if fetches.last_success.elapsed() < config.refresh_interval
            || fetches.last_attempt.elapsed() < retry_after
        {
            return;
        }
        tracing::debug!(url = remote.url, "refreshing the key set");
        self.fetch(remote, &mut fetches).await;
    }

    /// One fetch; on failure the keys held stay.
    async fn fetch(&self, remote: &Remote, fetches: &mut Fetches) {
        fetches.last_attempt = Instant::now();
        let result = match fetch_jwks(&remote.client, &remote.url).await {
            Ok(json) => KeySet::parse(&json),
            Err(e) => Err(e),
        };
        match result {
            Ok(keys) => {
                tracing::info!(url = remote.url, keys = ?keys.kids(), "fetched the token signing keys");
                self.set_keys(keys);
                fetches.last_success = Instant::now();
            }
            Err(error) => tracing::warn!(
                url = remote.url,
                %error,
                "could not fetch the key set again; keeping the keys held"
            ),
        }
    }
}

impl fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("config", &self.inner.config)
            .field("keys", &self.key_ids())
            .field("url", &self.inner.remote.as_ref().map(|r| &r.url))
            .finish()
    }
}

impl Authenticator for JwtVerifier {
    fn authenticate<'a>(
        &'a self,
        token: &'a str,
    ) -> BoxFuture<'a, Result<Principal, Unauthenticated>> {
        Box::pin(self.verify(token))
    }
}

/// The SHA-256 of a token, its key in the cache of accepted tokens.
fn token_digest(token: &str) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// The header fields that matter.
#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<Value>,
}

fn parse_header(b64: &str) -> Result<Header, Unauthenticated> {
    let bytes = decode_b64url(b64).ok_or_else(|| malformed("the header is not base64url"))?;
    let header: Header = serde_json::from_slice(&bytes)
        .map_err(|_| malformed("the header is not a JSON object with a string \"alg\""))?;
    if header.crit.is_some() {
        // RFC 7515 4.1.11: extensions we do not understand must be refused.
        return Err(malformed("the header has critical extensions (\"crit\")"));
    }
    Ok(header)
}

impl Header {
    /// The header's algorithm, if the configuration allows it.
    fn algorithm(&self, config: &JwtConfig) -> Result<Algorithm, Unauthenticated> {
        match Algorithm::from_str(&self.alg) {
            Ok(alg) if config.algorithms.contains(&alg) => Ok(alg),
            _ => Err(Unauthenticated::invalid(format!(
                "algorithm not allowed: {:?}",
                clip(&self.alg)
            ))),
        }
    }
}

/// Checks the claims of a token whose signature is good, at time `now`
/// (seconds since the epoch).
pub(super) fn check_claims(
    config: &JwtConfig,
    claims: &Map<String, Value>,
    now: f64,
) -> Result<Principal, Unauthenticated> {
    let leeway = config.leeway.as_secs_f64();
    let exp = numeric_date(claims, "exp")?.ok_or_else(|| missing("exp"))?;
    if now > exp + leeway {
        return Err(Unauthenticated::invalid(format!(
            "expired {:.0} s ago (leeway {:.0} s)",
            now - exp,
            leeway
        )));
    }
    if let Some(nbf) = numeric_date(claims, "nbf")? {
        if nbf > now + leeway {
            return Err(Unauthenticated::invalid(format!(
                "not yet valid: valid in {:.0} s (leeway {:.0} s)",
                nbf - now,
                leeway
            )));
        }
    }
    match claims.get("iss") {
        None => return Err(missing("iss")),
        Some(Value::String(iss)) if *iss == config.issuer => {}
        Some(other) => {
            return Err(Unauthenticated::invalid(format!(
                "wrong issuer {}",
                clip_json(other)
            )))
        }
    }
    let audience_ok = match claims.get("aud") {
        None => return Err(missing("aud")),
        Some(Value::String(aud)) => *aud == config.audience,
        Some(Value::Array(auds)) => auds.iter().any(|a| a.as_str() == Some(&config.audience)),
        Some(_) => false,
    };
    if !audience_ok {
        return Err(Unauthenticated::invalid(format!(
            "wrong audience {}",
            clip_json(&claims["aud"])
        )));
    }
    let subject = match claims.get("sub") {
        None | Some(Value::Null) => return Err(missing("sub")),
        Some(Value::String(s)) if s.is_empty() => return Err(missing("sub (empty)")),
        Some(Value::String(s)) => s,
        Some(_) => return Err(malformed("sub is not a string")),
    };
    if subject.chars().count() > MAX_SUBJECT_CHARS {
        return Err(malformed(format!(
            "sub is longer than {MAX_SUBJECT_CHARS} characters"
        )));
    }
    if subject.chars().any(char::is_control) {
        return Err(malformed("sub holds control characters"));
    }
    let roles = roles(claims, &config.roles_claim)?;
    Ok(Principal::user(subject.as_str(), roles))
}

/// A NumericDate claim (seconds since the epoch, RFC 7519 2), if present.
fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<f64>, Unauthenticated> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => value
            .as_f64()
            .filter(|v| v.is_finite())
            .map(Some)
            .ok_or_else(|| malformed(format!("{name} is not a number"))),
    }
}

/// The roles named by `path`: the claim of that name, or else the dotted
/// path into nested objects. An array of strings, or a space-separated
/// string; absent (or null) is no roles.
pub(super) fn roles(
    claims: &Map<String, Value>,
    path: &str,
) -> Result<Vec<String>, Unauthenticated> {
    let value = claims.get(path).or_else(|| {
        let mut segments = path.split('.');
        let mut value = claims.get(segments.next()?)?;
        for segment in segments {
            value = value.as_object()?.get(segment)?;
        }
        Some(value)
    });
    match value {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(s.split_whitespace().map(str::to_owned).collect()),
        Some(Value::Array(items)) => items
            .iter()
            .filter(|item| item.as_str() != Some(""))
            .map(|item| {
                item.as_str().map(str::to_owned).ok_or_else(|| {
                    malformed(format!("the roles claim {path:?} holds a non-string"))
                })
            })
            .collect(),
        Some(_) => Err(malformed(format!(
            "the roles claim {path:?} is neither a list nor a string"
        ))),
    }
}

fn malformed(why: impl fmt::Display) -> Unauthenticated {
    Unauthenticated::invalid(format!("malformed: {why}"))
}

fn missing(claim: &str) -> Unauthenticated {
    Unauthenticated::invalid(format!("missing claim: {claim}"))
}

/// At most 64 characters of something the token said, for a log line.
fn clip(s: &str) -> &str {
    match s.char_indices().nth(64) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

fn clip_json(value: &Value) -> String {
    let text = value.to_string();
    match text.char_indices().nth(100) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text,
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn read_jwks_file(path: &PathBuf) -> Result<String, AuthSetupError> {
    let read_error = |source| AuthSetupError::Read {
        path: path.clone(),
        source,
    };
    let len = std::fs::metadata(path).map_err(read_error)?.len();
    if len > MAX_JWKS_BYTES as u64 {
        return Err(AuthSetupError::MalformedJwks(format!(
            "{} is larger than {MAX_JWKS_BYTES} bytes",
            path.display()
        )));
    }
    std::fs::read_to_string(path).map_err(read_error)
}

/// GETs a JWKS, at most [`MAX_JWKS_BYTES`] of it.
async fn fetch_jwks(client: &reqwest::Client, url: &str) -> Result<String, AuthSetupError> {
    let fail = |source: crate::error::BoxError| AuthSetupError::Fetch {
        url: url.to_owned(),
        source,
    };
    let mut response = client
        .get(url)
        .header(
            reqwest::header::ACCEPT,
            "application/jwk-set+json, application/json",
        )
        .send()
        .await
        .map_err(|e| fail(e.into()))?;
    let status = response.status();
    if !status.is_success() {
        return Err(fail(format!("HTTP status {status}").into()));
    }
    let too_large = || fail(format!("the answer is larger than {MAX_JWKS_BYTES} bytes").into());
    if response
        .content_length()
        .is_some_and(|len| len > MAX_JWKS_BYTES as u64)
    {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| fail(e.into()))? {
        if body.len() + chunk.len() > MAX_JWKS_BYTES {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    String::from_utf8(body)
        .map_err(|_| AuthSetupError::MalformedJwks(format!("the answer of {url} is not UTF-8")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => unreachable!(),
        }
    }

    fn detail(result: Result<Principal, Unauthenticated>) -> String {
        match result {
            Err(Unauthenticated::Invalid { detail }) => detail,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn claims_are_checked_with_leeway() {
        let config = JwtConfig::new("iss", "aud");
        let now = 1_000_000.0;
        let base = json!({ "iss": "iss", "aud": "aud", "sub": "alice", "exp": now + 60.0 });
        assert!(check_claims(&config, &claims(base.clone()), now).is_ok());
        let with = |key: &str, value: Value| {
            let mut c = claims(base.clone());
            c.insert(key.into(), value);
            check_claims(&config, &c, now)
        };
        assert!(with("exp", json!(now - 29.0)).is_ok(), "within leeway");
        assert!(detail(with("exp", json!(now - 31.0))).starts_with("expired"));
        assert!(detail(with("exp", json!("soon"))).starts_with("malformed"));
        assert!(with("nbf", json!(now + 29.0)).is_ok(), "within leeway");
        assert!(detail(with("nbf", json!(now + 31.0))).starts_with("not yet valid"));
        assert!(with("exp", json!(now + 0.5)).is_ok(), "fractional dates");
        assert!(detail(with("iss", json!(["iss"]))).starts_with("wrong issuer"));
        assert!(with("aud", json!(["other", "aud"])).is_ok());
        assert!(detail(with("aud", json!(["other"]))).starts_with("wrong audience"));
        assert!(detail(with("aud", json!(7))).starts_with("wrong audience"));
        assert!(detail(with("sub", json!(""))).starts_with("missing claim: sub"));
        assert!(detail(with("sub", json!(12))).starts_with("malformed"));
        assert!(detail(with("sub", json!("a\nb"))).starts_with("malformed"));
        assert!(detail(with("sub", json!("x".repeat(257)))).starts_with("malformed"));
        assert!(with("sub", json!("é".repeat(256))).is_ok());
        let mut c = claims(base);
        c.remove("exp");
        assert_eq!(detail(check_claims(&config, &c, now)), "missing claim: exp");
    }

    #[test]
    fn roles_come_from_a_list_a_string_or_a_path() {
        let c = claims(json!({
            "roles": ["staff", "customer"],
            "scope": "orders:read  orders:write",
            "realm_access": { "roles": ["admin"] },
            "https://shop.example/roles": ["vip"],
            "odd": [1],
        }));
        assert_eq!(roles(&c, "roles").unwrap(), ["staff", "customer"]);
        assert_eq!(roles(&c, "scope").unwrap(), ["orders:read", "orders:write"]);
        assert_eq!(roles(&c, "realm_access.roles").unwrap(), ["admin"]);
        assert_eq!(roles(&c, "https://shop.example/roles").unwrap(), ["vip"]);
        assert!(roles(&c, "absent").unwrap().is_empty());
        assert!(roles(&c, "realm_access.absent").unwrap().is_empty());
        assert!(roles(&c, "odd").is_err());
        assert!(roles(&c, "realm_access").is_err());
    }
}
