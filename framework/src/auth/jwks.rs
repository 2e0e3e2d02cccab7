//! JSON Web Key Sets (RFC 7517): the public keys a verifier trusts.

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;

use super::config::is_symmetric;
use super::AuthSetupError;

/// The type of a usable key, which decides the algorithms it verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyType {
    /// `kty: RSA`, 2048 to 8192 bits: RS* and PS*.
    Rsa,
    /// `kty: EC, crv: P-256`: ES256.
    P256,
    /// `kty: EC, crv: P-384`: ES384.
    P384,
    /// `kty: OKP, crv: Ed25519`: EdDSA.
    Ed25519,
}

impl KeyType {
    /// Whether a signature made with `alg` can come from a key of this type.
    pub(crate) fn fits(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        match self {
            KeyType::Rsa => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            KeyType::P256 => alg == ES256,
            KeyType::P384 => alg == ES384,
            KeyType::Ed25519 => alg == EdDSA,
        }
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyType::Rsa => "RSA",
            KeyType::P256 => "EC P-256",
            KeyType::P384 => "EC P-384",
            KeyType::Ed25519 => "Ed25519",
        })
    }
}

/// A usable public key of a set.
#[derive(Clone)]
pub(crate) struct Key {
    /// `kid`, if the key has one.
    pub(crate) kid: Option<String>,
    /// What kind of key.
    pub(crate) key_type: KeyType,
    /// The key's own `alg`, if it states one: then only that algorithm.
    pub(crate) alg: Option<Algorithm>,
    /// The key, ready for `jsonwebtoken::crypto::verify`.
    pub(crate) decoding: DecodingKey,
}

impl Key {
    /// Whether this key may verify a signature made with `alg`.
    pub(crate) fn accepts(&self, alg: Algorithm) -> bool {
        self.key_type.fits(alg) && self.alg.is_none_or(|a| a == alg)
    }

    /// An Ed25519 key from its 32 public bytes.
    pub(crate) fn ed25519(kid: &str, public: &[u8]) -> Key {
        Key {
            kid: Some(kid.to_owned()),
            key_type: KeyType::Ed25519,
            alg: Some(Algorithm::EdDSA),
            decoding: DecodingKey::from_ed_der(public),
        }
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("key_type", &self.key_type)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

/// The usable keys of a JWKS, in the order of the set.
#[derive(Debug, Clone)]
pub(crate) struct KeySet {
    keys: Vec<Key>,
}

impl KeySet {
    /// A set of these keys (not empty).
    pub(crate) fn new(keys: Vec<Key>) -> KeySet {
        KeySet { keys }
    }

    /// Parses a JWKS. Keys that cannot verify signatures (symmetric `oct`
    /// keys, encryption keys, unsupported curves or algorithms, malformed
    /// keys) are skipped with a warning; a set left with none is refused.
    pub(crate) fn parse(json: &str) -> Result<KeySet, AuthSetupError> {
        if json.len() > super::MAX_JWKS_BYTES {
            return Err(AuthSetupError::MalformedJwks(format!(
                "larger than {} bytes",
                super::MAX_JWKS_BYTES
            )));
        }
        let value: Value = serde_json::from_str(json)
            .map_err(|e| AuthSetupError::MalformedJwks(format!("not JSON: {e}")))?;
        let entries = value
            .get("keys")
            .and_then(Value::as_array)
            .ok_or_else(|| AuthSetupError::MalformedJwks("no \"keys\" array".into()))?;
        let mut keys = Vec::new();
        for (i, entry) in entries.iter().enumerate() {
            let kid = entry.get("kid").and_then(Value::as_str).unwrap_or("");
            match parse_key(entry) {
                Ok(key) => keys.push(key),
                Err(Skip::Symmetric) => tracing::warn!(
                    kid,
                    index = i,
                    "a symmetric (oct) key in the key set is ignored: only asymmetric keys verify tokens"
                ),
                Err(Skip::NotForSignatures(why)) => {
                    tracing::debug!(kid, index = i, why, "a key in the key set is not for signatures");
                }
                Err(Skip::Unusable(why)) => {
                    tracing::warn!(kid, index = i, why, "a key in the key set is ignored");
                }
            }
        }
        if keys.is_empty() {
            return Err(AuthSetupError::NoUsableKey);
        }
        Ok(KeySet { keys })
    }

    /// How many usable keys.
    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    /// The keys named `kid`.
    pub(crate) fn named<'a>(&'a self, kid: &'a str) -> impl Iterator<Item = &'a Key> + 'a {
        self.keys
            .iter()
            .filter(move |k| k.kid.as_deref() == Some(kid))
    }

    /// Whether a key is named `kid`.
    pub(crate) fn has(&self, kid: &str) -> bool {
        self.named(kid).next().is_some()
    }

    /// The only key, when there is exactly one.
    pub(crate) fn only(&self) -> Option<&Key> {
        match self.keys.as_slice() {
            [key] => Some(key),
            _ => None,
        }
    }

    /// The key ids, in the order of the set (keys without one are left out).
    pub(crate) fn kids(&self) -> Vec<String> {
        self.keys.iter().filter_map(|k| k.kid.clone()).collect()
    }
}

/// Why a key of a set is not used.
#[derive(Debug)]
enum Skip {
    Symmetric,
    NotForSignatures(String),
    Unusable(String),
}

fn parse_key(entry: &Value) -> Result<Key, Skip> {
    let obj = entry
        .as_object()
        .ok_or_else(|| Skip::Unusable("not a JSON object".into()))?;
    let text = |name: &str| -> Result<Option<&str>, Skip> {
        match obj.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(Skip::Unusable(format!("\"{name}\" is not a string"))),
        }
    };
    let kty = text("kty")?.ok_or_else(|| Skip::Unusable("no \"kty\"".into()))?;
    if kty == "oct" {
        return Err(Skip::Symmetric);
    }
    if let Some(usage) = text("use")? {
        if usage != "sig" {
            return Err(Skip::NotForSignatures(format!("\"use\" is {usage:?}")));
        }
    }
    if let Some(ops) = obj.get("key_ops") {
        let verifies = ops
            .as_array()
            .is_some_and(|ops| ops.iter().any(|op| op.as_str() == Some("verify")));
        if !verifies {
            return Err(Skip::NotForSignatures(
                "\"key_ops\" lacks \"verify\"".into(),
            ));
        }
    }
    let alg = match text("alg")? {
        None => None,
        Some(name) => match Algorithm::from_str(name) {
            Ok(alg) if !is_symmetric(alg) => Some(alg),
            _ => {
                return Err(Skip::NotForSignatures(format!(
                    "\"alg\" {name:?} is not a supported signature algorithm"
                )))
            }
        },
    };
    let kid = text("kid")?.map(str::to_owned);
    let bytes = |name: &str| -> Result<Vec<u8>, Skip> {
        let s = text(name)?.ok_or_else(|| Skip::Unusable(format!("no \"{name}\"")))?;
        decode_b64url(s).ok_or_else(|| Skip::Unusable(format!("\"{name}\" is not base64url")))
    };
    let (key_type, decoding) = match kty {
        "RSA" => {
            let n = bytes("n")?;
            let e = bytes("e")?;
            let n_len = n.iter().skip_while(|b| **b == 0).count();
            if !(256..=1024).contains(&n_len) {
                return Err(Skip::Unusable(format!(
                    "an RSA modulus of {} bits (2048 to 8192 accepted)",
                    n_len * 8
                )));
            }
            if e.iter().all(|b| *b == 0) {
                return Err(Skip::Unusable("an RSA exponent of zero".into()));
            }
            (KeyType::Rsa, DecodingKey::from_rsa_raw_components(&n, &e))
        }
        "EC" => {
            let (key_type, len) = match text("crv")? {
                Some("P-256") => (KeyType::P256, 32),
                Some("P-384") => (KeyType::P384, 48),
                other => {
                    return Err(Skip::Unusable(format!("unsupported EC curve {other:?}")));
                }
            };
            let x = bytes("x")?;
            let y = bytes("y")?;
            if x.len() != len || y.len() != len {
                return Err(Skip::Unusable(format!(
                    "EC coordinates must be {len} bytes each"
                )));
            }
            // The uncompressed point, as ring expects it.
            let mut point = Vec::with_capacity(1 + 2 * len);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            (key_type, DecodingKey::from_ec_der(&point))
        }
        "OKP" => {
            match text("crv")? {
                Some("Ed25519") => {}
                other => {
                    return Err(Skip::Unusable(format!("unsupported OKP curve {other:?}")));
                }
            }
            let x = bytes("x")?;
            if x.len() != 32 {
                return Err(Skip::Unusable("an Ed25519 key must be 32 bytes".into()));
            }
            (KeyType::Ed25519, DecodingKey::from_ed_der(&x))
        }
        other => return Err(Skip::Unusable(format!("unsupported \"kty\" {other:?}"))),
    };
    if let Some(alg) = alg {
        if !key_type.fits(alg) {
            return Err(Skip::Unusable(format!(
                "\"alg\" {alg:?} does not fit a {key_type} key"
            )));
        }
    }
    Ok(Key {
        kid,
        key_type,
        alg,
        decoding,
    })
}

/// Decodes base64url, with or without padding.
pub(crate) fn decode_b64url(s: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).ok()
}

/// Encodes base64url without padding.
pub(crate) fn encode_b64url(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ed_key(kid: &str) -> Value {
        json!({ "kty": "OKP", "crv": "Ed25519", "kid": kid, "x": encode_b64url([7u8; 32]) })
    }

    #[test]
    fn symmetric_encryption_and_odd_keys_are_skipped() {
        let set = json!({ "keys": [
            { "kty": "oct", "kid": "hmac", "k": encode_b64url(b"secret") },
            { "kty": "RSA", "kid": "enc", "use": "enc", "alg": "RSA-OAEP", "n": "AQAB", "e": "AQAB" },
            { "kty": "RSA", "kid": "small", "n": encode_b64url([1u8; 128]), "e": "AQAB" },
            { "kty": "EC", "kid": "p521", "crv": "P-521", "x": "AA", "y": "AA" },
            { "kty": "OKP", "kid": "x25519", "crv": "X25519", "x": encode_b64url([7u8; 32]) },
            { "kty": "OKP", "kid": "mismatch", "crv": "Ed25519", "alg": "RS256", "x": encode_b64url([7u8; 32]) },
            { "kty": "OKP", "kid": "ops", "crv": "Ed25519", "key_ops": ["sign"], "x": encode_b64url([7u8; 32]) },
            "not an object",
            ed_key("good"),
            { "kty": "RSA", "kid": "rsa", "alg": "PS256", "n": encode_b64url([0xc5u8; 256]), "e": "AQAB" },
        ]});
        let keys = KeySet::parse(&set.to_string()).unwrap();
        assert_eq!(keys.kids(), ["good", "rsa"]);
        let rsa = keys.named("rsa").next().unwrap();
        assert!(rsa.accepts(Algorithm::PS256));
        assert!(!rsa.accepts(Algorithm::RS256), "the key's own alg binds");
        let ed = keys.named("good").next().unwrap();
        assert!(ed.accepts(Algorithm::EdDSA));
        assert!(!ed.accepts(Algorithm::ES256));
    }

    #[test]
    fn a_set_without_usable_keys_is_refused() {
        let only_oct = json!({ "keys": [{ "kty": "oct", "k": "c2VjcmV0" }] });
        assert!(matches!(
            KeySet::parse(&only_oct.to_string()),
            Err(AuthSetupError::NoUsableKey)
        ));
        for bad in ["", "[]", "{}", "{\"keys\": 1}"] {
            assert!(
                matches!(KeySet::parse(bad), Err(AuthSetupError::MalformedJwks(_))),
                "{bad}"
            );
        }
    }
}
