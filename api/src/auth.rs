//! JWT bearer tokens (HS256) with scopes, and the signing key kept beside the lake.

use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;

/// What a token may do. `admin` may do everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    SignalsRead,
    AlertsRead,
    SqlQuery,
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 4] = [Scope::SignalsRead, Scope::AlertsRead, Scope::SqlQuery, Scope::Admin];

    pub fn name(self) -> &'static str {
        match self {
            Scope::SignalsRead => "signals:read",
            Scope::AlertsRead => "alerts:read",
            Scope::SqlQuery => "sql:query",
            Scope::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Scope::ALL.into_iter().find(|x| x.name() == s).ok_or_else(|| {
            format!("unknown scope {s:?}; one of {}", Scope::ALL.map(Scope::name).join(", "))
        })
    }
}

/// The claims campo signs and accepts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    /// Space-separated scopes (RFC 8693 style).
    pub scope: String,
    pub iat: u64,
    pub exp: u64,
}

/// The HS256 key and the audience tokens must carry.
#[derive(Clone)]
pub struct Keys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    audience: String,
}

pub const ISSUER: &str = "campo";

impl Keys {
    pub fn new(secret: &[u8], audience: &str) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_audience(&[audience]);
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
        validation.leeway = 5;
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            audience: audience.to_string(),
        }
    }

    /// A token for `sub` with these scopes, valid for `ttl`.
    pub fn mint(&self, sub: &str, scopes: &[Scope], ttl: Duration) -> Result<String, ApiError> {
        let now = chrono::Utc::now().timestamp().max(0) as u64;
        let claims = Claims {
            iss: ISSUER.into(),
            aud: self.audience.clone(),
            sub: sub.into(),
            scope: scopes.iter().map(|s| s.name()).collect::<Vec<_>>().join(" "),
            iat: now,
            exp: now + ttl.as_secs(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding).map_err(ApiError::internal)
    }

    /// Checks signature, algorithm (HS256 only: `none` and others are refused), issuer,
    /// audience and expiry.
    pub fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        use jsonwebtoken::errors::ErrorKind;
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation).map(|d| d.claims).map_err(|e| {
            let why = match e.kind() {
                ErrorKind::ExpiredSignature => "token expired",
                ErrorKind::InvalidAudience => "token is for another audience",
                ErrorKind::InvalidIssuer => "token is from another issuer",
                ErrorKind::InvalidSignature => "token signature does not verify",
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => "token algorithm must be HS256",
                ErrorKind::MissingRequiredClaim(_) => "token lacks a required claim (exp, aud, iss, sub)",
                _ => "token is malformed",
            };
            ApiError::unauthorized(why)
        })
    }
}

/// The verified caller of a request.
#[derive(Debug, Clone)]
pub struct Principal {
    pub claims: Claims,
}

impl Principal {
    pub fn has(&self, scope: Scope) -> bool {
        self.claims.scope.split(' ').any(|s| s == scope.name() || s == Scope::Admin.name())
    }

    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if self.has(scope) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!("this route needs the scope `{}`", scope.name()))
                .with_details(serde_json::json!({"required_scope": scope.name()})))
        }
    }
}

impl<S> FromRequestParts<S> for Principal
where
    S: Send + Sync,
    std::sync::Arc<Keys>: axum::extract::FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let keys = <std::sync::Arc<Keys> as axum::extract::FromRef<S>>::from_ref(state);
        let value = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| ApiError::unauthorized("missing `Authorization: Bearer <token>` header"))?;
        let value = value.to_str().map_err(|_| ApiError::unauthorized("Authorization header is not ASCII"))?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or_else(|| ApiError::unauthorized("Authorization must be `Bearer <token>`"))?;
        Ok(Principal { claims: keys.verify(token.trim())? })
    }
}

/// Where the signing key lives when none is configured: beside the tables of a local lake,
/// in `<lake>/_campo/api-signing.key` (no table reads it; owner-only permissions).
pub fn default_key_path(lake_root: &Path) -> PathBuf {
    lake_root.join("_campo").join("api-signing.key")
}

/// Errors of the key file.
#[derive(Debug, thiserror::Error)]
#[error("API signing key {path}: {reason}")]
pub struct KeyFileError {
    pub path: PathBuf,
    pub reason: String,
}

/// Reads the key at `path`, creating a random 256-bit one (mode 0600) on first start.
pub fn load_or_create_key(path: &Path) -> Result<Vec<u8>, KeyFileError> {
    let err = |reason: String| KeyFileError { path: path.to_path_buf(), reason };
    match std::fs::read_to_string(path) {
        Ok(text) => parse_key(path, &text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| err(format!("cannot create its folder: {e}")))?;
            }
            let key: [u8; 32] = rand::random();
            let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            match opts.open(path) {
                Ok(mut f) => {
                    std::io::Write::write_all(&mut f, format!("{hex}\n").as_bytes()).map_err(|e| err(e.to_string()))?;
                    tracing::info!(path = %path.display(), "created the API signing key");
                    Ok(key.to_vec())
                }
                // Another process created it first: use theirs.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => load_or_create_key(path),
                Err(e) => Err(err(format!("cannot create: {e}"))),
            }
        }
        Err(e) => Err(err(format!("cannot read: {e}"))),
    }
}

/// Reads the key at `path` (a configured key: never created).
pub fn load_key(path: &Path) -> Result<Vec<u8>, KeyFileError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| KeyFileError { path: path.to_path_buf(), reason: format!("cannot read: {e}") })?;
    parse_key(path, &text)
}

fn parse_key(path: &Path, text: &str) -> Result<Vec<u8>, KeyFileError> {
    let err = |reason: String| KeyFileError { path: path.to_path_buf(), reason };
    let key = decode_hex(text.trim()).ok_or_else(|| err("is not hex".into()))?;
    if key.len() < 32 {
        return Err(err(format!("holds {} bytes; at least 32 are needed", key.len())));
    }
    Ok(key)
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}
