use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::Signer;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use trellis::auth::v1::Jwk;

use crate::claims::ACCESS_TOKEN_TYP;

/// An Ed25519 signing key with its `kid`. Only Auth holds these; every other
/// service sees the public half through the JWKS.
pub struct SigningKey {
    kid: String,
    pkcs8: Vec<u8>,
    /// Parsed once: going through `jsonwebtoken::encode` re-parses the
    /// PKCS#8 document and re-derives the public key on every signature.
    key: ed25519_dalek::SigningKey,
    /// `base64url({"alg":"EdDSA","typ":"at+jwt","kid":...})`, the same for
    /// every token this key signs.
    header: String,
    public_x: String,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid Ed25519 PKCS#8 key: {0}")]
pub struct KeyError(String);

impl SigningKey {
    pub fn generate(kid: impl Into<String>) -> Self {
        let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
        let der = key
            .to_pkcs8_der()
            .expect("an Ed25519 key always encodes as PKCS#8");
        Self::from_parts(kid.into(), &key, der.as_bytes().to_vec())
    }

    pub fn from_pkcs8_der(kid: impl Into<String>, der: &[u8]) -> Result<Self, KeyError> {
        let key =
            ed25519_dalek::SigningKey::from_pkcs8_der(der).map_err(|e| KeyError(e.to_string()))?;
        Ok(Self::from_parts(kid.into(), &key, der.to_vec()))
    }

    fn from_parts(kid: String, key: &ed25519_dalek::SigningKey, pkcs8: Vec<u8>) -> Self {
        let header = serde_json::json!({"alg": "EdDSA", "typ": ACCESS_TOKEN_TYP, "kid": kid});
        SigningKey {
            header: URL_SAFE_NO_PAD.encode(header.to_string()),
            key: key.clone(),
            public_x: URL_SAFE_NO_PAD.encode(key.verifying_key().as_bytes()),
            kid,
            pkcs8,
        }
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The private key as PKCS#8 DER, for storing in the data dir or a Secret.
    pub fn pkcs8_der(&self) -> &[u8] {
        &self.pkcs8
    }

    /// The public half, as published in the JWKS.
    pub fn public_jwk(&self) -> Jwk {
        Jwk {
            kty: "OKP".into(),
            crv: "Ed25519".into(),
            alg: "EdDSA".into(),
            kid: self.kid.clone(),
            r#use: "sig".into(),
            x: self.public_x.clone(),
            y: String::new(),
        }
    }

    /// Signs an access token (`typ` at+jwt, this key's `kid`): a compact
    /// JWS, `header.claims.signature`, each part base64url without padding.
    /// Signs a user's ([`crate::AccessClaims`]) or a service account's claims.
    pub fn sign(&self, claims: &impl serde::Serialize) -> Result<String, serde_json::Error> {
        let claims = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims)?);
        let signing_input = format!("{}.{claims}", self.header);
        let signature = self.key.sign(signing_input.as_bytes());
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.to_bytes())
        ))
    }
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}
