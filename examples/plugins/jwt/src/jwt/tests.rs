//! Tokens are made here (HS256 with `hmac`, RS256 with `rsa` and the throwaway keys in
//! `testdata/`), plus fixed tokens signed by `openssl` and RFC 7515's example.

use super::*;
use alloc::string::String;
use alloc::vec;
use rsa::PrivateKey;
use rsa::pkcs8::DecodePrivateKey;

const RSA1_PRIVATE: &str = include_str!("../../testdata/rsa1-private.pem");
const RSA1_PUBLIC: &str = include_str!("../../testdata/rsa1-public.pem");
const RSA1_PUBLIC_PKCS1: &str = include_str!("../../testdata/rsa1-public-pkcs1.pem");
const RSA2_PRIVATE: &str = include_str!("../../testdata/rsa2-private.pem");
const RSA1024_PUBLIC: &str = include_str!("../../testdata/rsa1024-public.pem");
const EC_PUBLIC: &str = include_str!("../../testdata/ec-public.pem");
const OPENSSL_HS256: &str = include_str!("../../testdata/openssl-hs256.jwt");
const OPENSSL_RS256: &str = include_str!("../../testdata/openssl-rs256.jwt");

const SECRET: &[u8] = b"an-hs256-test-secret-of-at-least-32-bytes";
const NOW: u64 = 1_700_000_000;
const HS: &str = r#"{"alg":"HS256","typ":"JWT"}"#;
const RS: &str = r#"{"alg":"RS256","typ":"JWT"}"#;

fn b64(bytes: &[u8]) -> String {
    Base64UrlUnpadded::encode_string(bytes)
}

fn signing_input(header: &str, payload: &str) -> String {
    format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()))
}

fn hmac_sig(secret: &[u8], input: &str) -> Vec<u8> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret).unwrap();
    mac.update(input.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

fn hs256_with(secret: &[u8], header: &str, payload: &str) -> String {
    let input = signing_input(header, payload);
    let sig = hmac_sig(secret, &input);
    format!("{input}.{}", b64(&sig))
}

fn hs256(payload: &str) -> String {
    hs256_with(SECRET, HS, payload)
}

fn rs256_with(private_pem: &str, header: &str, payload: &str) -> String {
    let key = PrivateKey::from_pkcs8_pem(private_pem).unwrap();
    let input = signing_input(header, payload);
    let hashed = Sha256::digest(input.as_bytes());
    let sig = key.sign(Pkcs1v15Sign::new::<Sha256>(), &hashed).unwrap();
    format!("{input}.{}", b64(&sig))
}

fn rs256(payload: &str) -> String {
    rs256_with(RSA1_PRIVATE, RS, payload)
}

/// A payload expiring an hour after `NOW`, with `extra` members appended.
fn claims(extra: &str) -> String {
    let exp = NOW + 3600;
    if extra.is_empty() {
        format!(r#"{{"sub":"alice","exp":{exp}}}"#)
    } else {
        format!(r#"{{"sub":"alice","exp":{exp},{extra}}}"#)
    }
}

fn hs_keys() -> Keys {
    let mut keys = Keys::new();
    keys.add_hs256_secret(SECRET).unwrap();
    keys
}

fn rs_keys() -> Keys {
    let mut keys = Keys::new();
    keys.add_rs256_pem(RSA1_PUBLIC).unwrap();
    keys
}

fn both_keys() -> Keys {
    let mut keys = hs_keys();
    keys.add_rs256_pem(RSA1_PUBLIC).unwrap();
    keys
}

fn check(token: &str, keys: &Keys) -> Result<Claims, Reject> {
    verify(token, keys, NOW, &Expect::default())
}

fn expect(issuer: Option<&str>, audience: Option<&str>) -> Expect {
    Expect {
        issuer: issuer.map(ToString::to_string),
        audience: audience.map(ToString::to_string),
        ..Expect::default()
    }
}

/// Replace the payload segment of `token`, keeping its header and signature.
fn with_payload(token: &str, payload: &str) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    format!("{}.{}.{}", parts[0], b64(payload.as_bytes()), parts[2])
}

// --- valid tokens ---

#[test]
fn hs256_token_verifies_and_exposes_claims() {
    let token = hs256(&claims(
        r#""iss":"me","email":"a@example.com","admin":true,"level":3,"groups":["x"],"n":null"#,
    ));
    let c = check(&token, &hs_keys()).unwrap();
    assert_eq!(c.alg(), Alg::Hs256);
    assert_eq!(c.sub(), Some("alice"));
    assert_eq!(c.iss(), Some("me"));
    assert_eq!(c.exp(), NOW + 3600);
    assert_eq!(c.get_str("email"), Some("a@example.com"));
    assert_eq!(c.get_str("admin"), None);
    assert_eq!(c.get_scalar("admin").as_deref(), Some("true"));
    assert_eq!(c.get_scalar("level").as_deref(), Some("3"));
    assert_eq!(c.get_scalar("email").as_deref(), Some("a@example.com"));
    assert_eq!(c.get_scalar("groups"), None);
    assert_eq!(c.get_scalar("n"), None);
    assert!(c.contains("n"));
    assert_eq!(c.get_str("missing"), None);
    assert!(!c.contains("missing"));
}

#[test]
fn rs256_token_verifies_with_spki_and_pkcs1_keys() {
    let token = rs256(&claims(""));
    for pem in [RSA1_PUBLIC, RSA1_PUBLIC_PKCS1] {
        let mut keys = Keys::new();
        assert_eq!(keys.add_rs256_pem(pem), Ok(1));
        let c = check(&token, &keys).unwrap();
        assert_eq!(c.alg(), Alg::Rs256);
        assert_eq!(c.sub(), Some("alice"));
    }
    // And with both kinds configured.
    assert!(check(&token, &both_keys()).is_ok());
    assert!(check(&hs256(&claims("")), &both_keys()).is_ok());
}

#[test]
fn tokens_signed_by_openssl_verify() {
    let want = expect(Some("https://issuer.example"), Some("web"));
    for (token, keys) in [(OPENSSL_HS256, hs_keys()), (OPENSSL_RS256, rs_keys())] {
        let c = verify(token.trim(), &keys, NOW, &want).unwrap();
        assert_eq!(c.sub(), Some("openssl"));
        assert_eq!(c.exp(), 4_102_444_800);
    }
    // Each is bound to its key kind.
    assert_eq!(
        check(OPENSSL_HS256.trim(), &rs_keys()).unwrap_err(),
        Reject::UnsupportedAlg
    );
    assert_eq!(
        check(OPENSSL_RS256.trim(), &hs_keys()).unwrap_err(),
        Reject::UnsupportedAlg
    );
}

#[test]
fn rfc7515_appendix_a1_example_verifies() {
    // RFC 7515 A.1: a header with CRLF whitespace, a 64-byte key, `exp` 1300819380.
    let token = "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9\
                 .eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ\
                 .dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    let key = Base64UrlUnpadded::decode_vec(
        "AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow",
    )
    .unwrap();
    let mut keys = Keys::new();
    keys.add_hs256_secret(&key).unwrap();
    let c = verify(token, &keys, 1_300_819_000, &expect(Some("joe"), None)).unwrap();
    assert_eq!(c.iss(), Some("joe"));
    assert_eq!(
        c.get_scalar("http://example.com/is_root").as_deref(),
        Some("true")
    );
    assert_eq!(
        verify(token, &keys, 1_300_819_380 + 60, &Expect::default()).unwrap_err(),
        Reject::Expired
    );
}

#[test]
fn escaped_strings_are_decoded() {
    let token = hs256(&claims(r#""name":"a\"b\\c\u00e9\ud83d\ude00""#));
    let c = check(&token, &hs_keys()).unwrap();
    assert_eq!(c.get_str("name"), Some("a\"b\\cé😀"));
}

#[test]
fn a_rotated_secret_or_key_still_verifies() {
    let old = b"the-previous-hs256-secret-32-bytes-long";
    let mut keys = Keys::new();
    keys.add_hs256_secret(SECRET).unwrap();
    keys.add_hs256_secret(old).unwrap();
    assert!(check(&hs256_with(old, HS, &claims("")), &keys).is_ok());
    assert!(check(&hs256(&claims("")), &keys).is_ok());

    let rsa2_public = rsa2_public_pem();
    let mut keys = Keys::new();
    let both = format!("{RSA1_PUBLIC}\n# the next key\n{rsa2_public}");
    assert_eq!(keys.add_rs256_pem(&both), Ok(2));
    assert_eq!(keys.counts(), (0, 2));
    assert!(check(&rs256(&claims("")), &keys).is_ok());
    assert!(check(&rs256_with(RSA2_PRIVATE, RS, &claims("")), &keys).is_ok());
}

fn rsa2_public_pem() -> String {
    use rsa::pkcs8::{EncodePublicKey, LineEnding};
    let key = PrivateKey::from_pkcs8_pem(RSA2_PRIVATE).unwrap();
    PublicKey::from(&key)
        .to_public_key_pem(LineEnding::LF)
        .unwrap()
}

// --- algorithm ---

#[test]
fn alg_none_is_rejected() {
    let input = signing_input(r#"{"alg":"none","typ":"JWT"}"#, &claims(""));
    // The unsecured form has an empty signature.
    assert_eq!(
        check(&format!("{input}."), &both_keys()).unwrap_err(),
        Reject::Malformed
    );
    // Even with a signature, `none` is no algorithm we accept.
    assert_eq!(
        check(&format!("{input}.c2ln"), &both_keys()).unwrap_err(),
        Reject::UnsupportedAlg
    );
}

#[test]
fn other_algs_and_spellings_are_rejected() {
    for alg in [
        "None", "NONE", "hs256", "Hs256", "rs256", "HS512", "RS512", "ES256", "PS256", "",
    ] {
        let header = format!(r#"{{"alg":"{alg}"}}"#);
        let token = hs256_with(SECRET, &header, &claims(""));
        assert_eq!(
            check(&token, &both_keys()).unwrap_err(),
            Reject::UnsupportedAlg,
            "{alg}"
        );
    }
    for header in [
        r#"{"typ":"JWT"}"#,
        r#"{"alg":256}"#,
        r#"{"alg":null}"#,
        r#"{"alg":["HS256"]}"#,
    ] {
        let token = hs256_with(SECRET, header, &claims(""));
        assert_eq!(
            check(&token, &both_keys()).unwrap_err(),
            Reject::Malformed,
            "{header}"
        );
    }
}

#[test]
fn alg_confusion_hs256_signed_with_the_rsa_public_key_is_rejected() {
    // The attacker knows the public key and uses its bytes (PEM text, or DER) as HMAC secret.
    let der = Base64::decode_vec(
        &RSA1_PUBLIC
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect::<String>(),
    )
    .unwrap();
    let forged = [
        hs256_with(RSA1_PUBLIC.as_bytes(), HS, &claims("")),
        hs256_with(RSA1_PUBLIC.trim().as_bytes(), HS, &claims("")),
        hs256_with(RSA1_PUBLIC_PKCS1.as_bytes(), HS, &claims("")),
        hs256_with(&der, HS, &claims("")),
    ];
    for token in &forged {
        // An RS256-only key set has no HS256 key at all.
        assert_eq!(
            check(token, &rs_keys()).unwrap_err(),
            Reject::UnsupportedAlg
        );
        // With an HS256 secret configured too, the RSA key is still never an HMAC key.
        assert_eq!(
            check(token, &both_keys()).unwrap_err(),
            Reject::BadSignature
        );
    }
    // And the public key cannot be configured as an HMAC secret by mistake.
    assert!(
        Keys::new()
            .add_hs256_secret(RSA1_PUBLIC.as_bytes())
            .is_err()
    );
    assert!(Keys::from_secret([("hs256-secret", RSA1_PUBLIC.as_bytes())]).is_err());
}

#[test]
fn rs256_token_needs_an_rsa_key() {
    assert_eq!(
        check(&rs256(&claims("")), &hs_keys()).unwrap_err(),
        Reject::UnsupportedAlg
    );
    assert_eq!(
        check(&hs256(&claims("")), &Keys::new()).unwrap_err(),
        Reject::UnsupportedAlg
    );
}

#[test]
fn crit_header_is_rejected() {
    let token = hs256_with(
        SECRET,
        r#"{"alg":"HS256","crit":["b64"],"b64":false}"#,
        &claims(""),
    );
    assert_eq!(check(&token, &hs_keys()).unwrap_err(), Reject::Malformed);
}

#[test]
fn key_selection_headers_are_ignored() {
    let header =
        r#"{"alg":"RS256","kid":"other","jku":"https://evil.example/jwks","jwk":{"kty":"RSA"}}"#;
    assert!(check(&rs256_with(RSA1_PRIVATE, header, &claims("")), &rs_keys()).is_ok());
    let forged = rs256_with(RSA2_PRIVATE, header, &claims(""));
    assert_eq!(
        check(&forged, &rs_keys()).unwrap_err(),
        Reject::BadSignature
    );
}

// --- signature ---

#[test]
fn tampered_payload_is_rejected() {
    let admin = claims(r#""admin":true"#);
    for (token, keys) in [
        (hs256(&claims("")), hs_keys()),
        (rs256(&claims("")), rs_keys()),
    ] {
        let tampered = with_payload(&token, &admin);
        assert_eq!(check(&tampered, &keys).unwrap_err(), Reject::BadSignature);
    }
}

#[test]
fn tampered_or_foreign_signatures_are_rejected() {
    let wrong_secret = hs256_with(b"another-secret-that-is-32-bytes-long!", HS, &claims(""));
    assert_eq!(
        check(&wrong_secret, &hs_keys()).unwrap_err(),
        Reject::BadSignature
    );
    let other_key = rs256_with(RSA2_PRIVATE, RS, &claims(""));
    assert_eq!(
        check(&other_key, &rs_keys()).unwrap_err(),
        Reject::BadSignature
    );

    for (token, keys) in [
        (hs256(&claims("")), hs_keys()),
        (rs256(&claims("")), rs_keys()),
    ] {
        let (input, sig) = token.rsplit_once('.').unwrap();
        let mut bytes = Base64UrlUnpadded::decode_vec(sig).unwrap();
        // A flipped bit, a truncated and an extended signature, another token's signature.
        bytes[0] ^= 1;
        let flipped = format!("{input}.{}", b64(&bytes));
        bytes[0] ^= 1;
        let truncated = format!("{input}.{}", b64(&bytes[1..]));
        bytes.push(0);
        let extended = format!("{input}.{}", b64(&bytes));
        let swapped = format!("{input}.{}", b64(&hmac_sig(SECRET, "x.y")));
        for bad in [flipped, truncated, extended, swapped] {
            assert_eq!(check(&bad, &keys).unwrap_err(), Reject::BadSignature);
        }
    }
}

#[test]
fn signature_is_checked_before_the_payload_is_parsed() {
    // An unsigned payload that is not even JSON is a bad signature, not a parse error.
    let token = hs256(&claims(""));
    let garbage = with_payload(&token, "not json");
    assert_eq!(
        check(&garbage, &hs_keys()).unwrap_err(),
        Reject::BadSignature
    );
    // Correctly signed, it is malformed.
    for payload in ["not json", "[1,2]", "\"s\"", "{\"exp\":1", ""] {
        let token = hs256(payload);
        assert_eq!(
            check(&token, &hs_keys()).unwrap_err(),
            Reject::Malformed,
            "{payload}"
        );
    }
}

// --- shape ---

#[test]
fn wrong_segment_counts_and_empty_segments_are_malformed() {
    let token = hs256(&claims(""));
    let (input, sig) = token.rsplit_once('.').unwrap();
    let (header, payload) = input.split_once('.').unwrap();
    for bad in [
        String::new(),
        String::from("."),
        String::from(".."),
        header.to_string(),
        input.to_string(),
        format!("{token}."),
        format!("{token}.{sig}"),
        format!(".{payload}.{sig}"),
        format!("{header}..{sig}"),
        format!("{input}."),
    ] {
        assert_eq!(
            check(&bad, &hs_keys()).unwrap_err(),
            Reject::Malformed,
            "{bad}"
        );
    }
}

#[test]
fn non_base64url_segments_are_malformed() {
    let token = hs256(&claims(""));
    let (input, sig) = token.rsplit_once('.').unwrap();
    let (header, payload) = input.split_once('.').unwrap();
    let std_b64 = Base64::encode_string(&Base64UrlUnpadded::decode_vec(sig).unwrap());
    for bad in [
        format!("{header}=.{payload}.{sig}"),
        format!("{input}.{sig}="),
        format!("{input}.{std_b64}"),
        format!("{header} .{payload}.{sig}"),
        format!("{input}.{sig}é"),
        format!("{input}.A"),
    ] {
        if bad == token {
            continue;
        }
        assert_eq!(
            check(&bad, &hs_keys()).unwrap_err(),
            Reject::Malformed,
            "{bad}"
        );
    }
    // A bad payload segment is first a bad signature; correctly signed, it is malformed.
    let bad_payload = format!("{header}.{payload}!");
    let unsigned = format!("{bad_payload}.{sig}");
    assert_eq!(
        check(&unsigned, &hs_keys()).unwrap_err(),
        Reject::BadSignature
    );
    let signed = format!("{bad_payload}.{}", b64(&hmac_sig(SECRET, &bad_payload)));
    assert_eq!(check(&signed, &hs_keys()).unwrap_err(), Reject::Malformed);
}

#[test]
fn non_canonical_base64url_is_malformed() {
    // 32 bytes take 43 characters, the last of which has 2 unused bits: setting them gives
    // another spelling of the same signature, which must not be accepted.
    let token = hs256(&claims(""));
    let (input, sig) = token.rsplit_once('.').unwrap();
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let last = sig.as_bytes()[sig.len() - 1];
    let value = ALPHABET.iter().position(|&c| c == last).unwrap();
    assert_eq!(
        value & 3,
        0,
        "canonical encodings leave the unused bits clear"
    );
    let other = ALPHABET[value | 1] as char;
    let respelled = format!("{input}.{}{other}", &sig[..sig.len() - 1]);
    assert_eq!(
        check(&respelled, &hs_keys()).unwrap_err(),
        Reject::Malformed
    );
}

#[test]
fn header_must_be_a_json_object() {
    for header in [
        "",
        "null",
        "[]",
        r#""HS256""#,
        "{",
        r#"{"alg":"HS256""#,
        "\u{fffd}",
    ] {
        let input = format!("{}.{}", b64(header.as_bytes()), b64(claims("").as_bytes()));
        let token = format!("{input}.{}", b64(&hmac_sig(SECRET, &input)));
        assert_eq!(
            check(&token, &hs_keys()).unwrap_err(),
            Reject::Malformed,
            "{header}"
        );
    }
    // Invalid UTF-8.
    let input = format!(
        "{}.{}",
        b64(b"{\"alg\":\"HS256\xff\"}"),
        b64(claims("").as_bytes())
    );
    let token = format!("{input}.{}", b64(&hmac_sig(SECRET, &input)));
    assert_eq!(check(&token, &hs_keys()).unwrap_err(), Reject::Malformed);
}

#[test]
fn token_length_is_bounded_before_decoding() {
    let long = hs256(&claims(&format!(
        r#""pad":"{}""#,
        "x".repeat(MAX_TOKEN_LEN)
    )));
    assert!(long.len() > MAX_TOKEN_LEN);
    assert_eq!(check(&long, &hs_keys()).unwrap_err(), Reject::TooLarge);
    // Not even looked at: garbage over the limit is TooLarge too.
    let garbage = "!".repeat(MAX_TOKEN_LEN + 1);
    assert_eq!(check(&garbage, &hs_keys()).unwrap_err(), Reject::TooLarge);
    // Just under the limit is fine.
    let base = hs256(&claims(r#""pad":"""#)).len();
    let fits = hs256(&claims(&format!(
        r#""pad":"{}""#,
        "x".repeat((MAX_TOKEN_LEN - base) * 3 / 4)
    )));
    assert!(fits.len() <= MAX_TOKEN_LEN, "{}", fits.len());
    assert!(check(&fits, &hs_keys()).is_ok());
}

// --- time ---

#[test]
fn exp_is_required() {
    let token = hs256(r#"{"sub":"alice"}"#);
    assert_eq!(
        check(&token, &hs_keys()).unwrap_err(),
        Reject::MissingExpiry
    );
    let token = hs256(r#"{"sub":"alice","nbf":1}"#);
    assert_eq!(
        check(&token, &hs_keys()).unwrap_err(),
        Reject::MissingExpiry
    );
}

#[test]
fn exp_is_enforced_with_leeway() {
    let exp = NOW;
    let token = hs256(&format!(r#"{{"exp":{exp}}}"#));
    let at = |now: u64, leeway_secs: u64| {
        let e = Expect {
            leeway_secs,
            ..Expect::default()
        };
        verify(&token, &hs_keys(), now, &e).map(|c| c.exp())
    };
    assert_eq!(at(exp - 1, 0), Ok(exp));
    assert_eq!(at(exp, 0), Err(Reject::Expired));
    // Default leeway is 60 s.
    assert_eq!(at(exp + 59, DEFAULT_LEEWAY_SECS), Ok(exp));
    assert_eq!(at(exp + 60, DEFAULT_LEEWAY_SECS), Err(Reject::Expired));
    assert_eq!(at(exp + 3600, DEFAULT_LEEWAY_SECS), Err(Reject::Expired));
    assert_eq!(at(exp + 3599, 3600), Ok(exp));
    // No overflow at the extremes.
    assert_eq!(at(u64::MAX, u64::MAX), Err(Reject::Expired));
    assert_eq!(at(0, u64::MAX), Ok(exp));
}

#[test]
fn numeric_dates_accept_fractions_and_refuse_other_types() {
    let ok = hs256(&format!(r#"{{"exp":{}.75}}"#, NOW + 10));
    assert_eq!(check(&ok, &hs_keys()).unwrap().exp(), NOW + 10);
    let ok = hs256(&format!(r#"{{"exp":{}e0}}"#, NOW + 10));
    assert_eq!(check(&ok, &hs_keys()).unwrap().exp(), NOW + 10);
    let huge = hs256(r#"{"exp":1e300}"#);
    assert_eq!(check(&huge, &hs_keys()).unwrap().exp(), u64::MAX);
    for exp in ["-1", "-1.5", "0"] {
        let token = hs256(&format!(r#"{{"exp":{exp}}}"#));
        assert_eq!(
            check(&token, &hs_keys()).unwrap_err(),
            Reject::Expired,
            "{exp}"
        );
    }
    for exp in [r#""1700003600""#, "null", "true", "[1]", "{}"] {
        let token = hs256(&format!(r#"{{"exp":{exp}}}"#));
        assert_eq!(
            check(&token, &hs_keys()).unwrap_err(),
            Reject::Malformed,
            "{exp}"
        );
    }
    let token = hs256(&claims(r#""nbf":"soon""#));
    assert_eq!(check(&token, &hs_keys()).unwrap_err(), Reject::Malformed);
    let token = hs256(&claims(r#""iat":null"#));
    assert_eq!(check(&token, &hs_keys()).unwrap_err(), Reject::Malformed);
}

#[test]
fn nbf_is_enforced_with_leeway() {
    for (nbf, want) in [
        (NOW - 1000, Ok(())),
        (NOW, Ok(())),
        (NOW + 60, Ok(())),
        (NOW + 61, Err(Reject::NotYetValid)),
        (NOW + 3000, Err(Reject::NotYetValid)),
    ] {
        let token = hs256(&claims(&format!(r#""nbf":{nbf}"#)));
        assert_eq!(check(&token, &hs_keys()).map(|_| ()), want, "nbf {nbf}");
    }
}

#[test]
fn iat_in_the_future_is_rejected() {
    for (iat, want) in [
        (NOW - 1000, Ok(())),
        (NOW + 60, Ok(())),
        (NOW + 61, Err(Reject::NotYetValid)),
    ] {
        let token = hs256(&claims(&format!(r#""iat":{iat}"#)));
        assert_eq!(check(&token, &hs_keys()).map(|_| ()), want, "iat {iat}");
    }
}

// --- issuer and audience ---

#[test]
fn issuer_is_checked_when_expected() {
    let token = hs256(&claims(r#""iss":"https://issuer.example""#));
    let keys = hs_keys();
    assert!(
        verify(
            &token,
            &keys,
            NOW,
            &expect(Some("https://issuer.example"), None)
        )
        .is_ok()
    );
    assert!(verify(&token, &keys, NOW, &expect(None, None)).is_ok());
    for other in [
        "https://issuer.example/",
        "https://ISSUER.example",
        "",
        "evil",
    ] {
        assert_eq!(
            verify(&token, &keys, NOW, &expect(Some(other), None)).unwrap_err(),
            Reject::WrongIssuer
        );
    }
    let no_iss = hs256(&claims(""));
    assert_eq!(
        verify(&no_iss, &keys, NOW, &expect(Some("x"), None)).unwrap_err(),
        Reject::WrongIssuer
    );
}

#[test]
fn registered_string_claims_must_be_strings() {
    for extra in [
        r#""iss":1"#,
        r#""iss":["a"]"#,
        r#""sub":null"#,
        r#""jti":{}"#,
    ] {
        let token = hs256(&format!(r#"{{"exp":{},{extra}}}"#, NOW + 10));
        assert_eq!(
            check(&token, &hs_keys()).unwrap_err(),
            Reject::Malformed,
            "{extra}"
        );
    }
}

#[test]
fn audience_string_or_array() {
    let keys = hs_keys();
    let want = expect(None, Some("api"));
    for aud in [r#""api""#, r#"["api"]"#, r#"["web","api"]"#] {
        let token = hs256(&claims(&format!(r#""aud":{aud}"#)));
        assert!(verify(&token, &keys, NOW, &want).is_ok(), "{aud}");
    }
    for aud in [
        r#""web""#,
        r#"["web"]"#,
        "[]",
        r#""API""#,
        r#""ap""#,
        r#"["apis"]"#,
    ] {
        let token = hs256(&claims(&format!(r#""aud":{aud}"#)));
        assert_eq!(
            verify(&token, &keys, NOW, &want).unwrap_err(),
            Reject::WrongAudience,
            "{aud}"
        );
    }
    let no_aud = hs256(&claims(""));
    assert_eq!(
        verify(&no_aud, &keys, NOW, &want).unwrap_err(),
        Reject::WrongAudience
    );
    // Not expected: not checked, except its type.
    let token = hs256(&claims(r#""aud":["web","other"]"#));
    assert!(check(&token, &keys).is_ok());
    for aud in [
        "1",
        "null",
        r#"["api",1]"#,
        r#"{"api":true}"#,
        r#"[["api"]]"#,
    ] {
        let token = hs256(&claims(&format!(r#""aud":{aud}"#)));
        assert_eq!(
            verify(&token, &keys, NOW, &want).unwrap_err(),
            Reject::Malformed,
            "{aud}"
        );
        assert_eq!(
            check(&token, &keys).unwrap_err(),
            Reject::Malformed,
            "{aud}"
        );
    }
}

#[test]
fn both_issuer_and_audience() {
    let token = rs256(&claims(r#""iss":"i","aud":["a","b"]"#));
    let keys = rs_keys();
    assert!(verify(&token, &keys, NOW, &expect(Some("i"), Some("b"))).is_ok());
    assert_eq!(
        verify(&token, &keys, NOW, &expect(Some("j"), Some("b"))).unwrap_err(),
        Reject::WrongIssuer
    );
    assert_eq!(
        verify(&token, &keys, NOW, &expect(Some("i"), Some("c"))).unwrap_err(),
        Reject::WrongAudience
    );
}

// --- keys ---

#[test]
fn keys_from_secret_data() {
    let keys = Keys::from_secret([
        (SECRET_HS256_ENTRY, SECRET),
        (SECRET_RS256_ENTRY, RSA1_PUBLIC.as_bytes()),
        ("old.pem", RSA1_PUBLIC_PKCS1.as_bytes()),
        ("RS256-next", rsa2_public_pem().as_bytes()),
    ])
    .unwrap();
    assert_eq!(keys.counts(), (1, 3));
    assert!(keys.supports(Alg::Hs256) && keys.supports(Alg::Rs256));
    assert!(check(&hs256(&claims("")), &keys).is_ok());
    assert!(check(&rs256_with(RSA2_PRIVATE, RS, &claims("")), &keys).is_ok());

    let only_rsa = Keys::from_secret([("rs256.pem", RSA1_PUBLIC.as_bytes())]).unwrap();
    assert!(!only_rsa.supports(Alg::Hs256));
    assert!(only_rsa.supports(Alg::Rs256));
}

#[test]
fn keys_from_secret_errors_name_the_entry() {
    let err = |entries: &[(&str, &[u8])]| Keys::from_secret(entries.iter().copied()).unwrap_err();
    assert!(err(&[]).contains("no key"), "{}", err(&[]));
    let e = err(&[("tls.crt", b"x")]);
    assert!(e.contains("`tls.crt`") && e.contains("hs256"), "{e}");
    let e = err(&[("hs256-secret", b"short")]);
    assert!(
        e.contains("`hs256-secret`") && e.contains("at least 32"),
        "{e}"
    );
    let e = err(&[("rs256.pem", &[0xff, 0xfe])]);
    assert!(e.contains("`rs256.pem`") && e.contains("UTF-8"), "{e}");
    let e = err(&[
        ("hs256-secret", SECRET),
        ("key.pem", RSA1_PRIVATE.as_bytes()),
    ]);
    assert!(e.contains("`key.pem`") && e.contains("private key"), "{e}");
}

#[test]
fn pem_errors_are_clear() {
    let add = |pem: &str| Keys::new().add_rs256_pem(pem).unwrap_err();
    assert!(add("").contains("no PEM block"));
    assert!(add("just some text").contains("no PEM block"));
    assert!(add(RSA1_PRIVATE).contains("`PRIVATE KEY` is a private key"));
    let pkcs1_private = RSA1_PRIVATE.replace("PRIVATE KEY", "RSA PRIVATE KEY");
    assert!(add(&pkcs1_private).contains("private key"));
    let cert = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    assert!(add(cert).contains("certificates are not supported"));
    let other = "-----BEGIN X509 CRL-----\nMIIB\n-----END X509 CRL-----\n";
    assert!(add(other).contains("unsupported PEM block `X509 CRL`"));
    let e = add(EC_PUBLIC);
    assert!(e.contains("not a usable RSA public key"), "{e}");
    let e = add(RSA1024_PUBLIC);
    assert!(e.contains("1024 bits") && e.contains("2048"), "{e}");
    let unterminated = RSA1_PUBLIC.replace("-----END PUBLIC KEY-----", "");
    assert!(add(&unterminated).contains("has no `-----END PUBLIC KEY-----` line"));
    let mismatched = RSA1_PUBLIC.replace("END PUBLIC KEY", "END RSA PUBLIC KEY");
    assert!(add(&mismatched).contains("has no"));
    let bad_b64 = RSA1_PUBLIC.replacen("MII", "M*I", 1);
    assert!(add(&bad_b64).contains("invalid base64"));
    let truncated: String = {
        let mut lines: Vec<&str> = RSA1_PUBLIC.lines().collect();
        lines.remove(3);
        lines.join("\n")
    };
    assert!(
        add(&truncated).contains("RSA public key"),
        "{}",
        add(&truncated)
    );
    let with_headers = RSA1_PUBLIC.replace(
        "-----BEGIN PUBLIC KEY-----\n",
        "-----BEGIN PUBLIC KEY-----\nProc-Type: 4,ENCRYPTED\n\n",
    );
    assert!(add(&with_headers).contains("headers"));
    // SPKI body under the PKCS#1 label, and the reverse.
    let swapped = RSA1_PUBLIC.replace("PUBLIC KEY", "RSA PUBLIC KEY");
    assert!(add(&swapped).contains("RSA PUBLIC KEY is not a usable"));
    let swapped = RSA1_PUBLIC_PKCS1.replace("RSA PUBLIC KEY", "PUBLIC KEY");
    assert!(add(&swapped).contains("PUBLIC KEY is not a usable"));
    // A valid key followed by a bad block fails whole.
    let mut keys = Keys::new();
    assert!(
        keys.add_rs256_pem(&format!("{RSA1_PUBLIC}{RSA1_PRIVATE}"))
            .is_err()
    );
    assert!(keys.is_empty());
}

#[test]
fn pem_is_lax_about_layout() {
    // CRLF, indentation, one long line, surrounding text.
    let crlf = RSA1_PUBLIC.replace('\n', "\r\n");
    let indented: String = RSA1_PUBLIC.lines().map(|l| format!("   {l}\n")).collect();
    let body: String = RSA1_PUBLIC
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let one_line = format!("-----BEGIN PUBLIC KEY-----{body}-----END PUBLIC KEY-----");
    let commented = format!("issuer: example\n{RSA1_PUBLIC}trailing words\n");
    for pem in [crlf, indented, one_line, commented] {
        let mut keys = Keys::new();
        assert_eq!(keys.add_rs256_pem(&pem), Ok(1), "{pem}");
        assert!(check(&rs256(&claims("")), &keys).is_ok());
    }
}

#[test]
fn key_counts_are_bounded() {
    let mut keys = Keys::new();
    for _ in 0..MAX_KEYS_PER_KIND {
        keys.add_hs256_secret(SECRET).unwrap();
    }
    assert!(
        keys.add_hs256_secret(SECRET)
            .unwrap_err()
            .contains("more than 16")
    );
    let many = RSA1_PUBLIC.repeat(MAX_KEYS_PER_KIND + 1);
    assert!(
        Keys::new()
            .add_rs256_pem(&many)
            .unwrap_err()
            .contains("more than 16")
    );
    let mut keys = Keys::new();
    keys.add_rs256_pem(&RSA1_PUBLIC.repeat(MAX_KEYS_PER_KIND))
        .unwrap();
    assert!(
        keys.add_rs256_pem(RSA1_PUBLIC)
            .unwrap_err()
            .contains("more than 16")
    );
}

#[test]
fn hs256_secret_rules() {
    let mut keys = Keys::new();
    assert!(
        keys.add_hs256_secret(&[7; 31])
            .unwrap_err()
            .contains("31 bytes")
    );
    assert!(keys.add_hs256_secret(&[7; 32]).is_ok());
    assert!(
        keys.add_hs256_secret(b"  -----BEGIN PUBLIC KEY----- and more bytes")
            .is_err()
    );
}

#[test]
fn debug_output_hides_secrets() {
    let shown = format!("{:?}", both_keys());
    assert_eq!(shown, "Keys { hs256_secrets: 1, rs256_keys: 1 }");
}

// --- bearer extraction and reasons ---

#[test]
fn bearer_token_extraction() {
    for (value, want) in [
        ("Bearer abc.def.ghi", Some("abc.def.ghi")),
        ("bearer abc", Some("abc")),
        ("BEARER abc", Some("abc")),
        ("BeArEr abc", Some("abc")),
        ("Bearer  abc", Some("abc")),
        ("  Bearer abc  ", Some("abc")),
        ("Bearer abc\t", Some("abc")),
        ("Bearer", None),
        ("Bearer ", None),
        ("Bearer    ", None),
        ("Bearerabc", None),
        ("Bearer\tabc", None),
        ("Bearer a b", None),
        ("Bearer a,Basic b", None),
        ("Basic YWxhZGRpbjpvcGVuc2VzYW1l", None),
        ("Token abc", None),
        ("", None),
        ("Beare", None),
        ("Bearé abc", None),
        ("abc.def.ghi", None),
    ] {
        assert_eq!(bearer_token(value), want, "{value:?}");
    }
}

#[test]
fn reject_reasons_are_short_and_displayed() {
    let all = [
        Reject::MissingToken,
        Reject::TooLarge,
        Reject::Malformed,
        Reject::UnsupportedAlg,
        Reject::BadSignature,
        Reject::MissingExpiry,
        Reject::Expired,
        Reject::NotYetValid,
        Reject::WrongIssuer,
        Reject::WrongAudience,
    ];
    let mut seen = vec![];
    for r in all {
        let s = format!("{r}");
        assert_eq!(s, r.as_str());
        assert!(!s.is_empty() && s.len() < 32 && s.is_ascii(), "{s}");
        assert!(!seen.contains(&s), "{s}");
        seen.push(s);
    }
    assert_eq!(Reject::Expired.to_string(), "token expired");
    assert_eq!(Alg::Rs256.to_string(), "RS256");
}
