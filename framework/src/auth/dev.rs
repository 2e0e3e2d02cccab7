//! A development issuer: signs tokens with a key of its own, so demos and
//! tests need no identity provider.

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::jwks::{encode_b64url, Key, KeySet};
use super::{AuthSetupError, JwtConfig, JwtVerifier};

/// Signs tokens (EdDSA over Ed25519) for development and tests.
///
/// The key pair is generated on the machine ([`generate`](Self::generate))
/// and may be kept in a folder ([`save`](Self::save),
/// [`load`](Self::load)) so tokens survive restarts; no key is compiled
/// in. Services that should trust it load its public key set: from the
/// saved `jwks.json` ([`KeySource::File`](super::KeySource::File)), from
/// [`jwks`](Self::jwks), or through [`verifier`](Self::verifier).
///
/// Not for production: whoever can read the folder can sign any token.
#[derive(Clone)]
pub struct DevIssuer {
    issuer: String,
    audience: String,
    kid: String,
    pkcs8: Arc<[u8]>,
    pair: Arc<Ed25519KeyPair>,
}

/// `dev-issuer.json`: who the issuer is, beside its key.
#[derive(Serialize, Deserialize)]
struct Meta {
    issuer: String,
    audience: String,
    kid: String,
}

impl DevIssuer {
    /// The private key's file in a saved folder (PKCS#8 PEM, mode 0600).
    pub const KEY_FILE: &'static str = "dev-issuer.key";
    /// The public key set's file in a saved folder.
    pub const JWKS_FILE: &'static str = "jwks.json";
    /// The issuer, audience and key id's file in a saved folder.
    pub const META_FILE: &'static str = "dev-issuer.json";

    /// A new issuer with a fresh Ed25519 key pair. Its key id is the key's
    /// JWK thumbprint (RFC 7638).
    ///
    /// # Panics
    ///
    /// If the system's random generator fails.
    pub fn generate(issuer: &str, audience: &str) -> Self {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
            .expect("the system random generator failed to make a key");
        Self::from_pkcs8(issuer, audience, None, pkcs8.as_ref())
            .expect("ring reads back the key it generated")
    }

    fn from_pkcs8(
        issuer: &str,
        audience: &str,
        kid: Option<String>,
        pkcs8: &[u8],
    ) -> Result<Self, AuthSetupError> {
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8)
            .map_err(|e| AuthSetupError::MalformedKey(format!("not an Ed25519 PKCS#8 key: {e}")))?;
        let kid = kid.unwrap_or_else(|| thumbprint(pair.public_key().as_ref()));
        Ok(DevIssuer {
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            kid,
            pkcs8: pkcs8.into(),
            pair: Arc::new(pair),
        })
    }

    /// Reads an issuer saved in `dir` by [`save`](Self::save). The key may
    /// also be PKCS#8 DER, or a PEM from `openssl genpkey -algorithm ed25519`.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self, AuthSetupError> {
        let dir = dir.as_ref();
        let meta_path = dir.join(Self::META_FILE);
        let meta = fs::read(&meta_path).map_err(|source| AuthSetupError::Read {
            path: meta_path.clone(),
            source,
        })?;
        let meta: Meta = serde_json::from_slice(&meta)
            .map_err(|e| AuthSetupError::MalformedKey(format!("{}: {e}", meta_path.display())))?;
        let key_path = dir.join(Self::KEY_FILE);
        let key = fs::read(&key_path).map_err(|source| AuthSetupError::Read {
            path: key_path.clone(),
            source,
        })?;
        warn_if_readable_by_others(&key_path);
        let der = if key.starts_with(b"-----") {
            pem_decode(&key).ok_or_else(|| {
                AuthSetupError::MalformedKey(format!("{}: not a PEM key", key_path.display()))
            })?
        } else {
            key
        };
        Self::from_pkcs8(&meta.issuer, &meta.audience, Some(meta.kid), &der)
    }

    /// Writes the issuer into `dir` (created if missing):
    /// [`KEY_FILE`](Self::KEY_FILE) (the private key, mode 0600),
    /// [`JWKS_FILE`](Self::JWKS_FILE) (the public key set) and
    /// [`META_FILE`](Self::META_FILE) (issuer, audience, key id).
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<(), AuthSetupError> {
        let dir = dir.as_ref();
        fs::create_dir_all(dir).map_err(|source| AuthSetupError::Write {
            path: dir.to_owned(),
            source,
        })?;
        write_private(
            &dir.join(Self::KEY_FILE),
            pem_encode(&self.pkcs8).as_bytes(),
        )?;
        write_file(&dir.join(Self::JWKS_FILE), self.jwks().as_bytes())?;
        let meta = Meta {
            issuer: self.issuer.clone(),
            audience: self.audience.clone(),
            kid: self.kid.clone(),
        };
        let meta = serde_json::to_string_pretty(&meta).unwrap_or_default() + "\n";
        write_file(&dir.join(Self::META_FILE), meta.as_bytes())
    }

    /// The issuer saved in `dir`, or a new one saved there. A saved issuer
    /// keeps its key but takes `issuer` and `audience` (saved again when
    /// they changed), so a demo moved to another port keeps its tokens'
    /// key.
    pub fn load_or_generate(
        dir: impl AsRef<Path>,
        issuer: &str,
        audience: &str,
    ) -> Result<Self, AuthSetupError> {
        let dir = dir.as_ref();
        if dir.join(Self::KEY_FILE).exists() {
            let mut loaded = Self::load(dir)?;
            if loaded.issuer != issuer || loaded.audience != audience {
                loaded.issuer = issuer.to_owned();
                loaded.audience = audience.to_owned();
                loaded.save(dir)?;
            }
            Ok(loaded)
        } else {
            let generated = Self::generate(issuer, audience);
            generated.save(dir)?;
            Ok(generated)
        }
    }

    /// The `iss` of its tokens.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The `aud` of its tokens.
    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// The key id (`kid`) of its tokens and key.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// A verifier configuration that accepts its tokens (the defaults, with
    /// its issuer and audience).
    pub fn config(&self) -> JwtConfig {
        JwtConfig::new(&self.issuer, &self.audience)
    }

    /// The public key set (JWKS) that verifies its tokens.
    pub fn jwks(&self) -> String {
        let key = json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "use": "sig",
            "alg": "EdDSA",
            "kid": self.kid,
            "x": encode_b64url(self.pair.public_key()),
        });
        serde_json::to_string_pretty(&json!({ "keys": [key] })).unwrap_or_default() + "\n"
    }

    /// A verifier of its tokens, in memory, with [`config`](Self::config).
    pub fn verifier(&self) -> JwtVerifier {
        let key = Key::ed25519(&self.kid, self.pair.public_key().as_ref());
        JwtVerifier::from_key_set(self.config(), KeySet::new(vec![key]))
    }

    /// A token for `subject` with `roles` (claim `roles`), valid from now
    /// for `ttl`, with `iss`, `aud`, `sub`, `iat`, `nbf` and `exp`.
    pub fn token(&self, subject: &str, roles: &[&str], ttl: Duration) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.sign(&json!({
            "iss": self.issuer,
            "aud": self.audience,
            "sub": subject,
            "roles": roles,
            "iat": now,
            "nbf": now,
            "exp": now.saturating_add(ttl.as_secs()),
        }))
    }

    /// Signs `claims` as they are (EdDSA, with its `kid`): for tests that
    /// need odd tokens (expired, another audience, no subject…).
    pub fn sign(&self, claims: &Value) -> String {
        let header = json!({ "alg": "EdDSA", "typ": "JWT", "kid": self.kid });
        let message = format!(
            "{}.{}",
            encode_b64url(header.to_string()),
            encode_b64url(claims.to_string())
        );
        let signature = self.pair.sign(message.as_bytes());
        format!("{message}.{}", encode_b64url(signature))
    }
}

impl fmt::Debug for DevIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevIssuer")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// The JWK thumbprint (RFC 7638) of an Ed25519 public key.
fn thumbprint(public: &[u8]) -> String {
    // The required members in lexicographic order, no whitespace.
    let canonical = format!(
        r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
        encode_b64url(public)
    );
    encode_b64url(ring::digest::digest(
        &ring::digest::SHA256,
        canonical.as_bytes(),
    ))
}

fn pem_encode(der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    pem
}

fn pem_decode(pem: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(pem).ok()?;
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    if lines.next()? != "-----BEGIN PRIVATE KEY-----" {
        return None;
    }
    let body: String = lines.take_while(|l| !l.starts_with("-----")).collect();
    STANDARD.decode(body).ok()
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), AuthSetupError> {
    fs::write(path, bytes).map_err(|source| AuthSetupError::Write {
        path: path.to_owned(),
        source,
    })
}

/// Writes a file only its owner may read, through a temporary file so a
/// reader never sees half a key.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), AuthSetupError> {
    let mut tmp = PathBuf::from(path);
    tmp.set_extension("key.tmp");
    let error = |source| AuthSetupError::Write {
        path: path.to_owned(),
        source,
    };
    let _ = fs::remove_file(&tmp);
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp).map_err(error)?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(error)?;
    drop(file);
    fs::rename(&tmp, path).map_err(error)
}

fn warn_if_readable_by_others(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = fs::metadata(path) {
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(
                    path = %path.display(),
                    "the development issuer's key is readable by others than its owner"
                );
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_and_the_key_round_trips_through_pem() {
        let issuer = DevIssuer::generate("http://localhost:8080", "shop");
        assert_eq!(issuer.kid().len(), 43, "a SHA-256 thumbprint");
        let token = issuer.token("alice", &["customer"], Duration::from_secs(60));
        let principal = futures::executor::block_on(issuer.verifier().verify(&token)).unwrap();
        assert_eq!(principal, crate::Principal::user("alice", ["customer"]));

        let pem = pem_encode(&issuer.pkcs8);
        assert_eq!(pem_decode(pem.as_bytes()).unwrap(), &*issuer.pkcs8);
        assert!(!format!("{issuer:?}").contains(&pem[30..60]));
    }
}
