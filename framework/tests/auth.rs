//! Bearer-token verification (feature `auth`): a table of refused tokens,
//! RSA, EC and Ed25519 keys, the development issuer's files, and key
//! rotation against a JWKS served over HTTP.
#![cfg(feature = "auth")]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
use serde_json::{json, Value};
use strata::auth::{AuthSetupError, DevIssuer, JwtConfig, JwtVerifier, KeySource};
use strata::{Authenticator, Principal, Unauthenticated};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ISS: &str = "https://id.example.test/realms/shop";
const AUD: &str = "shop-api";
const HOUR: Duration = Duration::from_secs(3600);

/// A 2048-bit RSA key made with `openssl genrsa -traditional 2048` for
/// these tests only: a test fixture, trusted by nothing.
const RSA_TEST_KEY: &str = "
-----BEGIN RSA PRIVATE KEY-----
MIIEpAIBAAKCAQEAuoKkkn4peiZG84gdo6zOKg/OTX36+cyhCH39mS9nZ6Vbt30w
8hDsbj9LZYu0dkncN6vn8u0Mu2C5Er8G07yXc7IDy2oFzkLzgNBF8Tn0iycCcLAb
VsBIMdAmqMXkGpTI2VMJ6GYCMDs/oiEQJRagOH8W2KsEmcPpwmD86heYcGTmT1+I
sJLgX5x9eqNrd7JyMpp/mJ5JDXF3S+4GTZm1+IsHQee7rMRPXf4FEEgO9g0Qxwzp
UUHrzakOmBdpahkrzq6nYSSzRgux0HklQ2VG8cZBJyvDJYSLEoXjq7YjR6Y/piQN
cikkLcB40SqyaHJHTTn71FppMWdbE/d7kqYBSQIDAQABAoIBAAbzBb2dSi5EiHVl
zbBMqMEXw5infnJZ6FVbK38TaIPQs0fhhtidg1m1BkP2dINTVW3jmYKGZcEWCBfs
6VuOPU7c/vVuD4h4uSZX+dUFyV3vVpW+1v3vYLTzXSzGwyMR8vloxIyfoe9RlnId
2VYJDQ2d2C1FOk+xx9o6Sl09Kl4VWFPUiLufVFxxYt2ZYtvFIqrhSoVJhmsIZJ/O
KU6hd7vNSAFv2Wca6xg5UM0FBJZPcVGg0Lk9FIa5+iv0bGtBTKM103TvRWQreMgU
dG+/vmj8xLshta6XRyRnxWXe0Xy+fIVTeBObNE0TPys2jWsAe6DtThXB8090JkMT
B3STrGsCgYEA7WTglmd0TozlYgAQ75VLftA0lX4ErFmCRZo5vhOZ7FXUkHc8yH8q
TvwCHMcuVbK6+S9HOMIe7iqgL29vVcf2UnA2Y7hwOVqSu9lH/7oXIA3EixpsuXUb
lAp5ewiGwfTWH6vS1tzzjRG3LgJwLX3R1MB0JfDEkb+eXLFPMGkF56sCgYEAySDS
9WoRZ/8vQjKNDIbqlIeG4D/DlwYEco4u0ypfsxVf7NLJptdkT+H5q8JpdAMMY+QD
2GpumVHrK01FX62NdaCtnvX8gF2MsP9fahICkWB4SYSCNikxz/bmjAFPY/tzP2+9
Zi3VsbmW224w16GcLP/81FBctdmnlqp9F/VwdtsCgYAF90YJoZnzq2jMWLIUQ009
Z6AarasSZcF3XFPdKgLxRIruAoEdjMyUZZLsBDlu3+oA/yYsD/zVAW87IfLLVhYj
pjxHr0fquRL8843yqEuSe6YX1NcspfvGcajx5Zn1X+DNtPS8f5sDTZGr71XAXuwa
C6gfl/horUcejzotPkZutwKBgQCGfVNzVXTENMg2HLVijgjoPuO6qgiwwQ5SR68Z
9vi9OGrHYoAC936VSAb6imqXb75mQT8tBKZmEXgOoYHlI5k28bWHWPd6IpQEew8j
T122NmrYximH6+3qITAyqGGc+rQq1B4y6C0/xVkR69HvLprPIHHAyufjleJRhjlV
vwJwBwKBgQCSCD2dboBxHzdextRUADL0n/MxjD145zrmEGwnH3vwwY6sPlkEu31C
1hKXMynBJpY63nY9Luc3eLzlwuLw6sbgsYb1SngNO4Jbd5Fvxjb0EoVrYVdbb7Ky
fGL0WcJouMHYXxfgko/NAAeSFDht/sgDxuqDJgx+ibc+3YPjRDPZ/Q==
-----END RSA PRIVATE KEY-----
";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Good claims for `sub`.
fn claims(sub: &str) -> Value {
    let now = now();
    json!({ "iss": ISS, "aud": AUD, "sub": sub, "iat": now, "exp": now + 300 })
}

/// `claims` with `key` set to `value` (`Value::Null` removes it).
fn with(mut claims: Value, key: &str, value: Value) -> Value {
    let map = claims.as_object_mut().unwrap();
    if value.is_null() {
        map.remove(key);
    } else {
        map.insert(key.to_owned(), value);
    }
    claims
}

/// A token from any header and claims, signed by `sign`.
fn craft(header: &Value, claims: &Value, sign: impl FnOnce(&[u8]) -> Vec<u8>) -> String {
    let message = format!("{}.{}", b64(header.to_string()), b64(claims.to_string()));
    let signature = sign(message.as_bytes());
    format!("{message}.{}", b64(signature))
}

fn hmac(secret: &[u8]) -> impl FnOnce(&[u8]) -> Vec<u8> + '_ {
    move |message| {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
        ring::hmac::sign(&key, message).as_ref().to_vec()
    }
}

fn detail(result: Result<Principal, Unauthenticated>) -> String {
    match result {
        Err(Unauthenticated::Invalid { detail }) => detail,
        other => panic!("expected an invalid token, got {other:?}"),
    }
}

/// A JWKS holding the keys of all these sets.
fn merged(sets: &[String]) -> String {
    let keys: Vec<Value> = sets
        .iter()
        .flat_map(|s| {
            serde_json::from_str::<Value>(s).unwrap()["keys"]
                .as_array()
                .unwrap()
                .clone()
        })
        .collect();
    json!({ "keys": keys }).to_string()
}

fn config() -> JwtConfig {
    JwtConfig::new(ISS, AUD)
}

#[tokio::test]
async fn a_valid_token_gives_the_user_and_roles() {
    let issuer = DevIssuer::generate(ISS, AUD);
    let verifier = issuer.verifier();
    let token = issuer.token("alice", &["customer", "staff"], HOUR);
    let principal = verifier.verify(&token).await.unwrap();
    assert_eq!(principal, Principal::user("alice", ["customer", "staff"]));
    assert!(principal.has_role("staff"));
    // Through the framework's trait, as an HTTP layer would call it.
    let authenticator: Arc<dyn Authenticator> = Arc::new(verifier);
    assert_eq!(
        authenticator.authenticate(&token).await.unwrap().actor(),
        "user:alice"
    );
    // Without a roles claim: no roles.
    let bare = issuer.sign(&claims("bob"));
    let bob = issuer.verifier().verify(&bare).await.unwrap();
    assert_eq!(bob, Principal::user("bob", Vec::<String>::new()));
}

#[tokio::test]
async fn roles_come_from_a_dotted_path_or_a_space_separated_claim() {
    let issuer = DevIssuer::generate(ISS, AUD);
    let jwks = issuer.jwks();
    let token = issuer.sign(&with(
        with(
            claims("kc-user"),
            "realm_access",
            json!({ "roles": ["staff", "offline_access"] }),
        ),
        "scope",
        json!("orders:read orders:write"),
    ));
    let keycloak =
        JwtVerifier::from_jwks(config().with_roles_claim("realm_access.roles"), &jwks).unwrap();
    assert_eq!(
        keycloak.verify(&token).await.unwrap(),
        Principal::user("kc-user", ["offline_access", "staff"])
    );
    let scopes = JwtVerifier::from_jwks(config().with_roles_claim("scope"), &jwks).unwrap();
    assert_eq!(
        scopes.verify(&token).await.unwrap(),
        Principal::user("kc-user", ["orders:read", "orders:write"])
    );
    let malformed = issuer.sign(&with(claims("x"), "roles", json!({ "admin": true })));
    assert!(detail(issuer.verifier().verify(&malformed).await).starts_with("malformed"));
}

#[tokio::test]
async fn bad_tokens_are_refused_with_the_reason() {
    let issuer = DevIssuer::generate(ISS, AUD);
    let verifier = issuer.verifier();
    let kid = issuer.kid().to_owned();
    let now = now();
    let good = claims("alice");

    // Another Ed25519 key that claims the issuer's kid.
    let rng = ring::rand::SystemRandom::new();
    let impostor =
        Ed25519KeyPair::from_pkcs8(Ed25519KeyPair::generate_pkcs8(&rng).unwrap().as_ref()).unwrap();
    let same_kid = craft(&json!({ "alg": "EdDSA", "kid": kid }), &good, |m| {
        impostor.sign(m).as_ref().to_vec()
    });
    // The HS256 / public key confusion: an HMAC "signed" with the public
    // key, in every form an attacker might pick it up.
    let jwks: Value = serde_json::from_str(&issuer.jwks()).unwrap();
    let x = jwks["keys"][0]["x"].as_str().unwrap().to_owned();
    let public_raw = URL_SAFE_NO_PAD.decode(&x).unwrap();
    let hs256 = |secret: &[u8]| craft(&json!({ "alg": "HS256", "kid": kid }), &good, hmac(secret));
    // alg none, crafted by hand: no signature at all.
    let none = format!(
        "{}.{}.",
        b64(json!({ "alg": "none", "kid": kid }).to_string()),
        b64(good.to_string())
    );
    let none_lower = format!(
        "{}.{}.",
        b64(json!({ "alg": "None" }).to_string()),
        b64(good.to_string())
    );
    // A genuine token whose payload was changed after signing.
    let genuine = issuer.sign(&good);
    let parts: Vec<&str> = genuine.split('.').collect();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64(with(good.clone(), "sub", json!("mallory")).to_string()),
        parts[2]
    );
    let oversize = issuer.sign(&with(good.clone(), "pad", json!("x".repeat(9000))));
    let unknown = DevIssuer::generate(ISS, AUD).token("alice", &[], HOUR);

    let table: Vec<(&str, String, &str)> = vec![
        (
            "missing sub",
            issuer.sign(&with(good.clone(), "sub", Value::Null)),
            "missing claim: sub",
        ),
        (
            "empty sub",
            issuer.sign(&with(good.clone(), "sub", json!(""))),
            "missing claim: sub",
        ),
        (
            "sub too long",
            issuer.sign(&with(good.clone(), "sub", json!("a".repeat(300)))),
            "malformed",
        ),
        (
            "missing exp",
            issuer.sign(&with(good.clone(), "exp", Value::Null)),
            "missing claim: exp",
        ),
        (
            "expired beyond the leeway",
            issuer.sign(&with(good.clone(), "exp", json!(now - 120))),
            "expired",
        ),
        (
            "not yet valid",
            issuer.sign(&with(good.clone(), "nbf", json!(now + 120))),
            "not yet valid",
        ),
        (
            "wrong issuer",
            issuer.sign(&with(good.clone(), "iss", json!("https://evil.test"))),
            "wrong issuer",
        ),
        (
            "missing issuer",
            issuer.sign(&with(good.clone(), "iss", Value::Null)),
            "missing claim: iss",
        ),
        (
            "wrong audience",
            issuer.sign(&with(good.clone(), "aud", json!("other-api"))),
            "wrong audience",
        ),
        (
            "audience array without ours",
            issuer.sign(&with(good.clone(), "aud", json!(["a", "b"]))),
            "wrong audience",
        ),
        (
            "missing audience",
            issuer.sign(&with(good.clone(), "aud", Value::Null)),
            "missing claim: aud",
        ),
        ("another key with the same kid", same_kid, "bad signature"),
        ("payload changed after signing", tampered, "bad signature"),
        ("unknown kid", unknown, "unknown key"),
        ("alg none", none, "algorithm not allowed"),
        ("alg None", none_lower, "algorithm not allowed"),
        (
            "HS256 keyed with the raw public key",
            hs256(&public_raw),
            "algorithm not allowed",
        ),
        (
            "HS256 keyed with the JWK's x",
            hs256(x.as_bytes()),
            "algorithm not allowed",
        ),
        (
            "HS256 keyed with the JWKS",
            hs256(issuer.jwks().as_bytes()),
            "algorithm not allowed",
        ),
        (
            "ES256 on an Ed25519 key",
            craft(&json!({ "alg": "ES256", "kid": kid }), &good, |_| {
                vec![0; 64]
            }),
            "algorithm not allowed",
        ),
        (
            "critical header extension",
            craft(
                &json!({ "alg": "EdDSA", "kid": kid, "crit": ["exp"] }),
                &good,
                |_| vec![0; 64],
            ),
            "malformed",
        ),
        ("garbage", "garbage".to_owned(), "malformed"),
        ("empty", String::new(), "malformed"),
        ("three garbage parts", "a.b.c".to_owned(), "malformed"),
        ("five parts (JWE)", "a.b.c.d.e".to_owned(), "malformed"),
        (
            "header not JSON",
            format!("{}.{}.{}", b64("nope"), parts[1], parts[2]),
            "malformed",
        ),
        ("oversize", oversize, "token too large"),
    ];
    for (case, token, expected) in table {
        let detail = detail(verifier.verify(&token).await);
        assert!(
            detail.starts_with(expected),
            "{case}: expected {expected:?}, got {detail:?}"
        );
    }

    // The same claims pass where they should.
    let accepted = [
        (
            "expired within the leeway",
            with(good.clone(), "exp", json!(now - 10)),
        ),
        (
            "nbf within the leeway",
            with(good.clone(), "nbf", json!(now + 10)),
        ),
        (
            "audience array with ours",
            with(good.clone(), "aud", json!(["other", AUD])),
        ),
    ];
    for (case, claims) in accepted {
        let result = verifier.verify(&issuer.sign(&claims)).await;
        assert!(result.is_ok(), "{case}: {result:?}");
    }
}

#[test]
fn a_verifier_never_accepts_shared_secret_algorithms() {
    let issuer = DevIssuer::generate(ISS, AUD);
    for algs in [
        vec![Algorithm::HS256],
        vec![Algorithm::EdDSA, Algorithm::HS512],
        vec![],
    ] {
        assert!(config().with_algorithms(algs.clone()).is_err(), "{algs:?}");
        let mut config = config();
        config.algorithms = algs;
        assert!(matches!(
            JwtVerifier::from_jwks(config, &issuer.jwks()),
            Err(AuthSetupError::Config(_))
        ));
    }
    // A set of symmetric keys only is no key set at all.
    let oct = json!({ "keys": [{ "kty": "oct", "kid": "h", "k": b64("secret") }] });
    assert!(matches!(
        JwtVerifier::from_jwks(config(), &oct.to_string()),
        Err(AuthSetupError::NoUsableKey)
    ));
}

#[tokio::test]
async fn a_token_without_kid_needs_a_set_of_one_key() {
    let a = DevIssuer::generate(ISS, AUD);
    let b = DevIssuer::generate(ISS, AUD);
    let pair = Ed25519KeyPair::from_pkcs8(
        Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
            .unwrap()
            .as_ref(),
    )
    .unwrap();
    let jwk = json!({ "kty": "OKP", "crv": "Ed25519", "x": b64(pair.public_key()) });
    let token = craft(&json!({ "alg": "EdDSA" }), &claims("alice"), |m| {
        pair.sign(m).as_ref().to_vec()
    });
    let alone = json!({ "keys": [jwk] }).to_string();
    let verifier = JwtVerifier::from_jwks(config(), &alone).unwrap();
    assert_eq!(verifier.verify(&token).await.unwrap().subject(), "alice");
    let crowded = merged(&[alone, a.jwks(), b.jwks()]);
    let verifier = JwtVerifier::from_jwks(config(), &crowded).unwrap();
    assert!(detail(verifier.verify(&token).await).starts_with("unknown key"));
    // Tokens that name their key still pass.
    assert!(verifier.verify(&a.token("x", &[], HOUR)).await.is_ok());
    assert!(verifier.verify(&b.token("y", &[], HOUR)).await.is_ok());
}

/// The RSA fixture: its PKCS#1 DER and its JWK.
fn rsa_fixture(kid: &str, alg: Option<&str>) -> (Vec<u8>, Value) {
    let body: String = RSA_TEST_KEY
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let der = STANDARD.decode(body.trim()).unwrap();
    let pair = RsaKeyPair::from_der(&der).unwrap();
    let public: ring::rsa::PublicKeyComponents<Vec<u8>> = pair.public().into();
    let mut jwk =
        json!({ "kty": "RSA", "kid": kid, "use": "sig", "n": b64(&public.n), "e": b64(&public.e) });
    if let Some(alg) = alg {
        jwk["alg"] = json!(alg);
    }
    (der, jwk)
}

#[tokio::test]
async fn rsa_and_ec_keys_verify_their_algorithms_only() {
    // RS256 with a fixed RSA key.
    let (rsa_der, rsa_jwk) = rsa_fixture("rsa-1", Some("RS256"));
    let rsa_key = EncodingKey::from_rsa_der(&rsa_der);
    let rsa_header = |alg| Header {
        kid: Some("rsa-1".into()),
        ..Header::new(alg)
    };
    // ES256 with a fresh P-256 key.
    let rng = ring::rand::SystemRandom::new();
    let signing = &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING;
    let ec_pkcs8 = EcdsaKeyPair::generate_pkcs8(signing, &rng).unwrap();
    let ec_pair = EcdsaKeyPair::from_pkcs8(signing, ec_pkcs8.as_ref(), &rng).unwrap();
    let point = ec_pair.public_key().as_ref();
    let ec_jwk = json!({ "kty": "EC", "crv": "P-256", "kid": "ec-1", "x": b64(&point[1..33]), "y": b64(&point[33..]) });
    let ec_key = EncodingKey::from_ec_der(ec_pkcs8.as_ref());
    // And an HMAC key in the same set, which is ignored.
    let jwks = json!({ "keys": [
        rsa_jwk,
        ec_jwk,
        { "kty": "oct", "kid": "hmac", "k": b64("shared secret") },
    ]})
    .to_string();
    let config = config()
        .with_algorithms([Algorithm::RS256, Algorithm::PS256, Algorithm::ES256])
        .unwrap();
    let verifier = JwtVerifier::from_jwks(config, &jwks).unwrap();
    assert_eq!(verifier.key_ids(), ["rsa-1", "ec-1"]);

    let claims = with(claims("carol"), "roles", json!(["staff"]));
    let rs256 = jsonwebtoken::encode(&rsa_header(Algorithm::RS256), &claims, &rsa_key).unwrap();
    assert_eq!(
        verifier.verify(&rs256).await.unwrap(),
        Principal::user("carol", ["staff"])
    );
    let ec_header = Header {
        kid: Some("ec-1".into()),
        ..Header::new(Algorithm::ES256)
    };
    let es256 = jsonwebtoken::encode(&ec_header, &claims, &ec_key).unwrap();
    assert_eq!(verifier.verify(&es256).await.unwrap().subject(), "carol");

    // The RSA JWK says RS256: a PS256 signature by the same key is refused.
    let ps256 = jsonwebtoken::encode(&rsa_header(Algorithm::PS256), &claims, &rsa_key).unwrap();
    assert!(detail(verifier.verify(&ps256).await).starts_with("algorithm not allowed"));
    // RS512 is not in the configuration at all.
    let rs512 = jsonwebtoken::encode(&rsa_header(Algorithm::RS512), &claims, &rsa_key).unwrap();
    assert!(detail(verifier.verify(&rs512).await).starts_with("algorithm not allowed"));
    // An ES256 signature under the RSA key's kid does not fit its type.
    let crossed = jsonwebtoken::encode(&rsa_header(Algorithm::ES256), &claims, &ec_key).unwrap();
    assert!(detail(verifier.verify(&crossed).await).starts_with("algorithm not allowed"));
    // The ignored HMAC key cannot be used, nor the RSA modulus as a secret.
    let (_, jwk) = rsa_fixture("rsa-1", None);
    let n = URL_SAFE_NO_PAD.decode(jwk["n"].as_str().unwrap()).unwrap();
    for (kid, secret) in [("hmac", b"shared secret".to_vec()), ("rsa-1", n)] {
        let token = craft(
            &json!({ "alg": "HS256", "kid": kid }),
            &claims,
            hmac(&secret),
        );
        assert!(detail(verifier.verify(&token).await).starts_with("algorithm not allowed"));
    }
    // Without the key's own alg, the RSA key takes any RSA algorithm the
    // configuration allows.
    let (_, loose) = rsa_fixture("rsa-1", None);
    let loose = JwtVerifier::from_jwks(
        JwtConfig::new(ISS, AUD)
            .with_algorithms([Algorithm::RS256, Algorithm::PS256])
            .unwrap(),
        &json!({ "keys": [loose] }).to_string(),
    )
    .unwrap();
    assert!(loose.verify(&ps256).await.is_ok());
    assert!(loose.verify(&rs256).await.is_ok());
}

#[tokio::test]
async fn the_dev_issuer_saves_loads_and_serves_a_key_file() {
    let dir = std::env::temp_dir().join(format!("strata-auth-{}", uuid::Uuid::new_v4()));
    let issuer = DevIssuer::load_or_generate(&dir, ISS, AUD).unwrap();
    for file in [
        DevIssuer::KEY_FILE,
        DevIssuer::JWKS_FILE,
        DevIssuer::META_FILE,
    ] {
        assert!(dir.join(file).exists(), "{file}");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join(DevIssuer::KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let jwks = std::fs::read_to_string(dir.join(DevIssuer::JWKS_FILE)).unwrap();
    assert!(
        !jwks.contains("\"d\""),
        "the public set holds no private part"
    );

    // Loaded again, it is the same key: tokens of one verify with the other.
    let again = DevIssuer::load_or_generate(&dir, ISS, AUD).unwrap();
    assert_eq!(again.kid(), issuer.kid());
    let token = issuer.token("dana", &["staff"], HOUR);
    assert!(again.verifier().verify(&token).await.is_ok());
    // A service trusts it through the saved key set.
    let from_file = JwtVerifier::new(
        issuer.config(),
        KeySource::File(dir.join(DevIssuer::JWKS_FILE)),
    )
    .await
    .unwrap();
    assert_eq!(
        from_file.verify(&token).await.unwrap(),
        Principal::user("dana", ["staff"])
    );
    // A new issuer name keeps the key.
    let moved = DevIssuer::load_or_generate(&dir, "http://localhost:9999", AUD).unwrap();
    assert_eq!(moved.kid(), issuer.kid());
    assert_eq!(
        DevIssuer::load(&dir).unwrap().issuer(),
        "http://localhost:9999"
    );

    let missing = JwtVerifier::new(config(), KeySource::File(dir.join("absent.json"))).await;
    assert!(matches!(missing, Err(AuthSetupError::Read { .. })));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A JWKS served over HTTP/1.1 on 127.0.0.1, with a count of requests.
struct JwksServer {
    url: String,
    body: Arc<Mutex<String>>,
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    async fn start(body: String) -> JwksServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        let body = Arc::new(Mutex::new(body));
        let hits = Arc::new(AtomicUsize::new(0));
        let (served, counted) = (body.clone(), hits.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let (served, counted) = (served.clone(), counted.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    counted.fetch_add(1, Ordering::SeqCst);
                    let body = served.lock().unwrap().clone();
                    let response = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(response.as_bytes()).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        JwksServer {
            url,
            body,
            hits,
            task,
        }
    }

    fn serve(&self, body: String) {
        *self.body.lock().unwrap() = body;
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn an_unknown_kid_refetches_the_key_set_at_most_once_per_interval() {
    let (a, b, c) = (
        DevIssuer::generate(ISS, AUD),
        DevIssuer::generate(ISS, AUD),
        DevIssuer::generate(ISS, AUD),
    );
    let stranger = DevIssuer::generate(ISS, AUD);
    let interval = Duration::from_secs(1);
    let server = JwksServer::start(a.jwks()).await;
    let verifier = JwtVerifier::new(
        config().with_refetch_interval(interval),
        KeySource::Url(server.url.clone()),
    )
    .await
    .unwrap();
    assert_eq!(server.hits(), 1);
    assert!(verifier.verify(&a.token("alice", &[], HOUR)).await.is_ok());

    // The provider adds key b. Right after the first fetch, a token signed
    // by b is refused and the set is not fetched again.
    server.serve(merged(&[a.jwks(), b.jwks()]));
    let by_b = b.token("bob", &["staff"], HOUR);
    assert!(detail(verifier.verify(&by_b).await).starts_with("unknown key"));
    assert_eq!(server.hits(), 1, "rate-limited");

    // Once the interval has passed, the unknown kid fetches the set once,
    // however many requests bring it at the same time.
    tokio::time::sleep(interval + Duration::from_millis(100)).await;
    let results = futures::future::join_all((0..5).map(|_| verifier.verify(&by_b))).await;
    for result in results {
        assert_eq!(result.unwrap(), Principal::user("bob", ["staff"]));
    }
    assert_eq!(server.hits(), 2);
    assert_eq!(verifier.key_ids(), [a.kid(), b.kid()]);

    // Tokens naming keys nobody has do not make it fetch again and again.
    for _ in 0..5 {
        let token = stranger.token("mallory", &[], HOUR);
        assert!(detail(verifier.verify(&token).await).starts_with("unknown key"));
    }
    assert_eq!(server.hits(), 2);

    // The provider rotates again: c replaces a.
    server.serve(merged(&[b.jwks(), c.jwks()]));
    let by_c = c.token("carol", &[], HOUR);
    assert!(detail(verifier.verify(&by_c).await).starts_with("unknown key"));
    tokio::time::sleep(interval + Duration::from_millis(100)).await;
    assert!(verifier.verify(&by_c).await.is_ok());
    assert_eq!(server.hits(), 3);
    // a's key is gone with the new set.
    let by_a = a.token("alice", &[], HOUR);
    assert!(detail(verifier.verify(&by_a).await).starts_with("unknown key"));
    assert_eq!(server.hits(), 3);
}

#[tokio::test]
async fn a_stale_key_set_is_fetched_again_on_use_and_kept_if_the_fetch_fails() {
    let (a, b) = (DevIssuer::generate(ISS, AUD), DevIssuer::generate(ISS, AUD));
    let refresh = Duration::from_secs(1);
    let server = JwksServer::start(a.jwks()).await;
    let verifier = JwtVerifier::new(
        config()
            .with_refresh_interval(refresh)
            .with_refetch_interval(HOUR),
        KeySource::Url(server.url.clone()),
    )
    .await
    .unwrap();
    // The provider revokes a and publishes b; until the set is stale the
    // verifier goes on with what it holds.
    server.serve(b.jwks());
    assert!(verifier.verify(&a.token("alice", &[], HOUR)).await.is_ok());
    assert_eq!(server.hits(), 1);
    tokio::time::sleep(refresh + Duration::from_millis(100)).await;
    let revoked = detail(verifier.verify(&a.token("alice", &[], HOUR)).await);
    assert!(revoked.starts_with("unknown key"), "{revoked}");
    assert_eq!(server.hits(), 2);
    assert!(verifier.verify(&b.token("bob", &[], HOUR)).await.is_ok());

    // The provider goes away: the keys held stay in use.
    drop(server);
    tokio::time::sleep(refresh + Duration::from_millis(100)).await;
    assert!(verifier.verify(&b.token("bob", &[], HOUR)).await.is_ok());
}

#[tokio::test]
async fn a_key_set_url_that_does_not_answer_fails_the_setup() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    drop(listener);
    let result = JwtVerifier::new(config(), KeySource::Url(url)).await;
    assert!(
        matches!(result, Err(AuthSetupError::Fetch { .. })),
        "{result:?}"
    );

    let server = JwksServer::start("<html>not a key set</html>".into()).await;
    let result = JwtVerifier::new(config(), KeySource::Url(server.url.clone())).await;
    assert!(
        matches!(result, Err(AuthSetupError::MalformedJwks(_))),
        "{result:?}"
    );
}

/// A token accepted once is remembered (no second signature check), but
/// never beyond its own expiry: the cache answers only inside the window
/// the full check would accept.
#[tokio::test]
async fn a_remembered_token_still_expires() {
    let issuer = DevIssuer::generate(ISS, AUD);
    let verifier = JwtVerifier::from_jwks(
        JwtConfig::new(ISS, AUD).with_leeway(Duration::ZERO),
        &issuer.jwks(),
    )
    .unwrap();
    let t = now();
    let short = issuer.sign(&json!({
        "iss": ISS, "aud": AUD, "sub": "alice", "roles": ["customer"],
        "iat": t, "exp": t + 1,
    }));
    let alice = Principal::user("alice", ["customer"]);
    for _ in 0..3 {
        assert_eq!(verifier.verify(&short).await.unwrap(), alice);
    }
    // Wait (bounded) for the token's second to pass: time is what is tested.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while now() <= t + 1 {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let refused = verifier.verify(&short).await.unwrap_err();
    assert!(
        matches!(&refused, Unauthenticated::Invalid { detail } if detail.starts_with("expired")),
        "{refused:?}"
    );
    // A token that differs in one byte of its signature is not the same
    // token: it is checked, and refused.
    let long = issuer.token("alice", &["customer"], HOUR);
    assert!(verifier.verify(&long).await.is_ok());
    let mut forged = long.clone().into_bytes();
    let last = forged.len() - 2;
    forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    assert!(verifier.verify(&forged).await.is_err());
}
