//! Rate limits per caller (tower_governor): a token bucket of `api.rate_limit_per_s` refilled
//! continuously with room for `api.rate_limit_burst`. The caller is its bearer token (each token
//! its own budget, so no one can spend another's by naming its subject), or without one its
//! address. Answers carry `X-RateLimit-Limit` and `X-RateLimit-Remaining`; a refusal is a 429
//! envelope with `Retry-After` (seconds) and `X-RateLimit-After`.

use std::hash::{BuildHasher, Hash, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, Response, StatusCode, header};
use axum::response::IntoResponse;
use serde_json::json;
use tower_governor::GovernorError;
use tower_governor::GovernorLayer;
use tower_governor::governor::GovernorConfigBuilder;
use tower_governor::key_extractor::KeyExtractor;

use crate::AppState;
use crate::error::ApiError;

/// The caller's key: a keyed hash (random per process) of its token, else of its address.
#[derive(Clone)]
pub struct CallerKey(Arc<std::collections::hash_map::RandomState>);

impl KeyExtractor for CallerKey {
    type Key = u64;

    fn extract<T>(&self, req: &Request<T>) -> Result<u64, GovernorError> {
        let mut h = self.0.build_hasher();
        if let Some(auth) = req.headers().get(header::AUTHORIZATION) {
            1u8.hash(&mut h);
            auth.as_bytes().hash(&mut h);
        } else if let Some(ConnectInfo(addr)) = req.extensions().get::<ConnectInfo<SocketAddr>>() {
            2u8.hash(&mut h);
            addr.ip().hash(&mut h);
        } else {
            3u8.hash(&mut h);
        }
        Ok(h.finish())
    }
}

/// `routes` limited to `rate_per_s` requests per second with bursts of `burst` per caller;
/// unchanged when rate limiting is off (`rate_per_s == 0`).
pub fn apply(routes: axum::Router<AppState>, rate_per_s: u32, burst: u32) -> axum::Router<AppState> {
    if rate_per_s == 0 {
        return routes;
    }
    let period = Duration::from_nanos((1_000_000_000 / u64::from(rate_per_s)).max(1));
    let config = GovernorConfigBuilder::default()
        .period(period)
        .burst_size(burst.max(1))
        .key_extractor(CallerKey(Arc::new(Default::default())))
        .use_headers()
        .finish()
        .expect("a rate and a burst above zero");
    let config = Arc::new(config);
    // Forget callers that have been quiet long enough to be back at a full bucket.
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        let limiter = Arc::downgrade(config.limiter());
        rt.spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(60)).await;
                let Some(l) = limiter.upgrade() else { return };
                l.retain_recent();
                l.shrink_to_fit();
            }
        });
    }
    routes.layer(GovernorLayer::new(config).error_handler(refusal))
}

fn refusal(e: GovernorError) -> Response<Body> {
    match e {
        GovernorError::TooManyRequests { wait_time, headers } => {
            // governor rounds the wait down to whole seconds; never tell a client to retry at once.
            let wait_time = wait_time.max(1);
            let mut resp = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("rate limit reached; retry in {wait_time} s"),
            )
            .with_details(json!({"retry_after_s": wait_time}))
            .into_response();
            if let Some(h) = headers {
                resp.headers_mut().extend(h);
            }
            for name in [header::RETRY_AFTER.as_str(), "x-ratelimit-after"] {
                resp.headers_mut().insert(name, wait_time.into());
            }
            resp
        }
        GovernorError::UnableToExtractKey => ApiError::internal("rate limiter: no caller key").into_response(),
        GovernorError::Other { code, msg, headers } => {
            let mut resp = ApiError::new(code, "rate_limited", msg.unwrap_or_else(|| "refused by the rate limiter".into())).into_response();
            if let Some(h) = headers {
                resp.headers_mut().extend(h);
            }
            resp
        }
    }
}
