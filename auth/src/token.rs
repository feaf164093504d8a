//! JWTs for clients: EdDSA (Ed25519) tokens signed by a key the operator holds, verified by
//! the replicas with one or more public keys (several, so a signing key can be rotated).
//! The claims tie a token to one cluster: issuer `dllm`, audience the cluster's trust domain.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::identity::{Identity, Role, Via};

/// The issuer every dllm token carries.
pub const ISSUER: &str = "dllm";

/// Longest token accepted, in bytes; anything longer is refused before it is parsed.
pub const MAX_TOKEN_BYTES: usize = 4096;

/// A token's claims.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    /// Who: a worker's node id, a person's or tool's name.
    pub sub: String,
    /// What it may do.
    pub role: Role,
    /// Issued at (Unix seconds).
    pub iat: u64,
    /// Not valid before (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Expires at (Unix seconds).
    pub exp: u64,
    /// The token's id, for revocation.
    pub jti: String,
    /// Always [`ISSUER`].
    pub iss: String,
    /// The cluster's trust domain.
    pub aud: String,
}

/// Why a token was refused. The token itself is never part of the reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Longer than [`MAX_TOKEN_BYTES`].
    #[error("token longer than {MAX_TOKEN_BYTES} bytes")]
    TooLong,
    /// Past its `exp`.
    #[error("token expired")]
    Expired,
    /// Before its `nbf`.
    #[error("token not yet valid")]
    NotYetValid,
    /// For another cluster (audience) or issuer.
    #[error("token is for another cluster or issuer")]
    WrongAudience,
    /// Not signed by any trusted key, or altered since.
    #[error("token signature does not verify with any trusted key")]
    BadSignature,
    /// Not a well-formed EdDSA token with dllm's claims (including `alg: none`, an unknown
    /// role, missing claims, garbage).
    #[error("malformed token: {0}")]
    Malformed(String),
    /// Revoked by an admin.
    #[error("token revoked")]
    Revoked,
}

impl TokenError {
    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            TokenError::TooLong => "token_too_long",
            TokenError::Expired => "token_expired",
            TokenError::NotYetValid => "token_not_yet_valid",
            TokenError::WrongAudience => "token_wrong_audience",
            TokenError::BadSignature => "token_bad_signature",
            TokenError::Malformed(_) => "token_malformed",
            TokenError::Revoked => "token_revoked",
        }
    }
}

/// Signs tokens; holds the operator's private key.
pub struct Signer {
    key: EncodingKey,
}

impl Signer {
    /// A signer from a PKCS#8 PEM Ed25519 private key.
    ///
    /// # Errors
    /// When the PEM is not an Ed25519 private key.
    pub fn from_pem(pem: &[u8]) -> Result<Self, String> {
        EncodingKey::from_ed_pem(pem)
            .map(|key| Self { key })
            .map_err(|e| format!("not an Ed25519 private key (PKCS#8 PEM): {e}"))
    }

    /// A signed token for `role`/`subject` in `trust_domain`, valid from `now` for `ttl`
    /// seconds, with a fresh id.
    ///
    /// # Errors
    /// When signing fails.
    pub fn sign(
        &self,
        trust_domain: &str,
        role: Role,
        subject: &str,
        now: u64,
        ttl: u64,
    ) -> Result<(String, Claims), String> {
        let claims = Claims {
            sub: subject.to_string(),
            role,
            iat: now,
            nbf: Some(now),
            exp: now + ttl,
            jti: uuid::Uuid::new_v4().to_string(),
            iss: ISSUER.to_string(),
            aud: trust_domain.to_string(),
        };
        let token = self.sign_claims(&claims)?;
        Ok((token, claims))
    }

    /// Signs exactly these claims (tests use it to make bad tokens).
    ///
    /// # Errors
    /// When signing fails.
    pub fn sign_claims(&self, claims: &Claims) -> Result<String, String> {
        jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), claims, &self.key)
            .map_err(|e| format!("cannot sign the token: {e}"))
    }
}

/// Verifies tokens against the trusted public keys.
pub struct Verifier {
    keys: Vec<DecodingKey>,
    validation: Validation,
}

impl Verifier {
    /// A verifier for `trust_domain` from PEM (SPKI) Ed25519 public keys.
    ///
    /// # Errors
    /// Which key is not an Ed25519 public key.
    pub fn new(trust_domain: &str, public_keys_pem: &[Vec<u8>]) -> Result<Self, String> {
        let keys = public_keys_pem
            .iter()
            .enumerate()
            .map(|(i, pem)| {
                DecodingKey::from_ed_pem(pem)
                    .map_err(|e| format!("public key {}: not an Ed25519 public key: {e}", i + 1))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_audience(&[trust_domain]);
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "sub", "aud", "iss"]);
        validation.validate_nbf = true;
        validation.leeway = 5;
        Ok(Self { keys, validation })
    }

    /// The identity a token proves, if a trusted key signed it and its claims hold now.
    ///
    /// # Errors
    /// [`TokenError`] naming why it was refused.
    pub fn verify(&self, token: &str) -> Result<Identity, TokenError> {
        self.verify_until(token).map(|(id, _)| id)
    }

    /// As [`Verifier::verify`], with the token's expiry (Unix seconds).
    ///
    /// # Errors
    /// [`TokenError`] naming why it was refused.
    pub fn verify_until(&self, token: &str) -> Result<(Identity, u64), TokenError> {
        use jsonwebtoken::errors::ErrorKind;
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::TooLong);
        }
        let mut last = TokenError::BadSignature;
        for key in &self.keys {
            match jsonwebtoken::decode::<Claims>(token, key, &self.validation) {
                Ok(data) if data.claims.role == Role::Replica => {
                    // Replicas prove themselves with certificates only: a token, however
                    // signed, never opens RaftService.
                    return Err(TokenError::Malformed(
                        "role replica is for certificates, not tokens".into(),
                    ));
                }
                Ok(data) => {
                    let c = data.claims;
                    return Ok((
                        Identity {
                            role: c.role,
                            name: c.sub,
                            via: Via::Token { jti: c.jti },
                        },
                        c.exp,
                    ));
                }
                Err(e) => {
                    last = match e.kind() {
                        ErrorKind::InvalidSignature => TokenError::BadSignature,
                        ErrorKind::ExpiredSignature => return Err(TokenError::Expired),
                        ErrorKind::ImmatureSignature => return Err(TokenError::NotYetValid),
                        ErrorKind::InvalidAudience | ErrorKind::InvalidIssuer => {
                            return Err(TokenError::WrongAudience)
                        }
                        _ => return Err(TokenError::Malformed(e.to_string())),
                    };
                }
            }
        }
        Err(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unix_now as now;

    fn keypair() -> (Vec<u8>, Vec<u8>) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("key");
        (
            key.serialize_pem().into_bytes(),
            key.public_key_pem().into_bytes(),
        )
    }

    /// A good token verifies; every forgery on the issue's list is refused, each for its
    /// own reason, without a panic.
    #[test]
    fn good_tokens_verify_and_forged_ones_are_refused() {
        let (private, public) = keypair();
        let (other_private, other_public) = keypair();
        let signer = Signer::from_pem(&private).expect("signer");
        let verifier = Verifier::new("dllm.test", std::slice::from_ref(&public)).expect("verifier");
        let (token, claims) = signer
            .sign("dllm.test", Role::Operator, "alice", now(), 3600)
            .expect("sign");
        let id = verifier.verify(&token).expect("a good token verifies");
        assert_eq!((id.role, id.name.as_str()), (Role::Operator, "alice"));
        assert_eq!(
            id.via,
            Via::Token {
                jti: claims.jti.clone()
            }
        );

        let with = |f: &dyn Fn(&mut Claims)| {
            let mut c = claims.clone();
            f(&mut c);
            signer.sign_claims(&c).expect("sign")
        };
        assert_eq!(
            verifier.verify(&with(&|c| {
                c.exp = now() - 3600;
                c.iat = now() - 7200;
                c.nbf = None;
            })),
            Err(TokenError::Expired)
        );
        assert_eq!(
            verifier.verify(&with(&|c| c.nbf = Some(now() + 3600))),
            Err(TokenError::NotYetValid)
        );
        assert_eq!(
            verifier.verify(&with(&|c| c.aud = "other.test".into())),
            Err(TokenError::WrongAudience)
        );
        assert_eq!(
            verifier.verify(&with(&|c| c.iss = "someone".into())),
            Err(TokenError::WrongAudience)
        );
        let other = Signer::from_pem(&other_private).expect("signer");
        let (foreign, _) = other
            .sign("dllm.test", Role::Admin, "mallory", now(), 60)
            .expect("sign");
        assert_eq!(verifier.verify(&foreign), Err(TokenError::BadSignature));
        // A verifier that trusts both keys (rotation) takes either.
        let both = Verifier::new("dllm.test", &[public, other_public]).expect("verifier");
        assert!(both.verify(&foreign).is_ok() && both.verify(&token).is_ok());

        // A tampered payload: the role raised to admin, signature kept.
        let parts: Vec<&str> = token.split('.').collect();
        let payload = String::from_utf8(base64_url_decode(parts[1]).expect("payload"))
            .expect("utf-8")
            .replace("\"operator\"", "\"admin\"");
        let tampered = format!(
            "{}.{}.{}",
            parts[0],
            base64_url_encode(payload.as_bytes()),
            parts[2]
        );
        assert_eq!(verifier.verify(&tampered), Err(TokenError::BadSignature));

        // alg: none, no signature.
        let none = format!(
            "{}.{}.",
            base64_url_encode(br#"{"alg":"none","typ":"JWT"}"#),
            parts[1]
        );
        assert!(matches!(
            verifier.verify(&none),
            Err(TokenError::Malformed(_))
        ));
        // An unknown role, properly signed.
        let unknown_role = format!(
            "{}.{}",
            parts[0],
            base64_url_encode(payload.replace("\"admin\"", "\"root\"").as_bytes())
        );
        let signed_unknown = {
            use jsonwebtoken::crypto::sign;
            let key = EncodingKey::from_ed_pem(&private).expect("key");
            let sig = sign(unknown_role.as_bytes(), &key, Algorithm::EdDSA).expect("sign");
            format!("{unknown_role}.{sig}")
        };
        assert!(matches!(
            verifier.verify(&signed_unknown),
            Err(TokenError::Malformed(_))
        ));
        let (replica_token, _) = signer
            .sign("dllm.test", Role::Replica, "1", now(), 60)
            .expect("sign");
        assert!(
            matches!(
                verifier.verify(&replica_token),
                Err(TokenError::Malformed(_))
            ),
            "a token never carries the replica role"
        );
        for garbage in ["", "garbage", "a.b.c", "...."] {
            assert!(verifier.verify(garbage).is_err(), "{garbage:?}");
        }
        let huge = format!("{}.{}.{}", "e".repeat(MAX_TOKEN_BYTES), parts[1], parts[2]);
        assert_eq!(verifier.verify(&huge), Err(TokenError::TooLong));
    }

    fn base64_url_encode(bytes: &[u8]) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    fn base64_url_decode(s: &str) -> Option<Vec<u8>> {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(s)
            .ok()
    }
}
