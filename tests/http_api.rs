//! The HTTP API over real HTTP: bearer JWTs (HS256, RS256, ES256, JWKS)
//! signed here with real keys, the seed's envelope, the API's own rate limit
//! (429 and its headers, on a controlled clock), `POST /v1/check`, and
//! `/metrics` counting what the test did.

mod common;

use std::sync::Arc;

use common::http_client::{HttpClient, HttpResponse};
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use tollgate::api::pb::tollgate::v1 as pb;
use tollgate::auth::{ApiKey, ApiKeys, JwtSettings, JwtVerifier};
use tollgate::store::MemoryStore;

const SECRET: &str = "a-test-only-hs256-secret-32-bytes-long!";
const AUDIENCE: &str = "tollgate-usage";
const ISSUER: &str = "https://auth.test";
const LIMITS: &str = "domain: api\ndescriptors:\n  - key: user\n    rate_limit: { unit: minute, requests_per_unit: 2 }\n";

fn fixture(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn claims(sub: &str) -> Value {
    json!({"sub": sub, "aud": AUDIENCE, "iss": ISSUER, "iat": now(), "exp": now() + 600})
}

fn hs256(claims: &Value, secret: &str) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign")
}

fn signed(alg: Algorithm, kid: Option<&str>, key_file: &str, claims: &Value) -> String {
    let pem = fixture(key_file);
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(pem.as_bytes()),
        Algorithm::ES256 => EncodingKey::from_ec_pem(pem.as_bytes()),
        other => panic!("no test key for {other:?}"),
    }
    .expect("private key");
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    encode(&header, claims, &key).expect("sign")
}

fn verifier() -> Arc<JwtVerifier> {
    Arc::new(
        JwtVerifier::new(JwtSettings {
            hs256_secret: Some(SECRET.into()),
            public_keys: vec![
                (Algorithm::RS256, fixture("jwt/rs256.pub")),
                (Algorithm::ES256, fixture("jwt/es256.pub")),
            ],
            jwks: Some(fixture("jwt/jwks.json")),
            issuer: Some(ISSUER.into()),
            audience: Some(AUDIENCE.into()),
            leeway_seconds: 0,
        })
        .expect("verifier"),
    )
}

async fn start(builder: ServerBuilder) -> (TestServer, LimitsDir, HttpClient) {
    let dir = LimitsDir::with_file("api.yaml", LIMITS);
    let server = builder.with_http().start(&dir).await;
    let http = HttpClient::new(server.http_addr.expect("HTTP address"));
    (server, dir, http)
}

async fn track(server: &TestServer, user: &str, n: usize) {
    let mut client = server.client().await;
    for i in 0..n {
        client
            .track_usage(pb::TrackUsageRequest {
                usage_id: format!("{user}-{i}"),
                user_id: user.into(),
                category: "ai".into(),
                metrics: [("tokens".to_string(), 100.0)].into(),
                success: true,
                ..Default::default()
            })
            .await
            .expect("track");
    }
}

fn assert_error(r: &HttpResponse, status: u16, detail: &str) {
    assert_eq!(r.status, status, "{}", r.body);
    let body = r.json();
    assert_eq!(body["status"], "error", "{body}");
    let got = body["error"]["detail"].as_str().unwrap_or_default();
    assert!(
        got.contains(detail),
        "detail {got:?} should contain {detail:?}"
    );
}

#[tokio::test]
async fn tokens_are_checked_and_users_see_only_their_own_usage() {
    let (server, _dir, http) =
        start(ServerBuilder::new().configure(|o| o.jwt = Some(verifier()))).await;
    track(&server, "u1", 3).await;
    track(&server, "u2", 5).await;
    let summary = "/v1/usage/summary?days=7";

    let valid = hs256(&claims("u1"), SECRET);
    let r = http.get(summary, Some(&valid)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let body = r.json();
    assert_eq!(body["status"], "success");
    assert_eq!(body["data"]["user_id"], "u1");
    assert_eq!(body["data"]["period"], "Last 7 days");
    assert_eq!(body["data"]["requests"]["total"], 3);
    assert_eq!(body["data"]["requests"]["by_category"]["ai"], 3);
    assert_eq!(body["data"]["metrics"]["tokens"], 300.0);
    assert_eq!(body["data"]["daily"].as_array().map(Vec::len), Some(7));

    let mut expired = claims("u1");
    expired["exp"] = json!(now() - 120);
    let mut early = claims("u1");
    early["nbf"] = json!(now() + 120);
    let mut other_audience = claims("u1");
    other_audience["aud"] = json!("someone-else");
    let cases = [
        (hs256(&expired, SECRET), "expired"),
        (hs256(&early, SECRET), "not valid yet"),
        (hs256(&other_audience, SECRET), "another audience"),
        (
            hs256(&claims("u1"), "not-the-secret-but-32-bytes-long!!"),
            "signature is invalid",
        ),
    ];
    for (token, why) in cases {
        let r = http.get(summary, Some(&token)).await;
        assert_error(&r, 401, why);
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        assert_eq!(r.json()["message"], "Unauthorized");
    }
    assert_error(
        &http.get(summary, None).await,
        401,
        "bearer token is required",
    );

    let r = http
        .get("/v1/usage/summary?days=7&user_id=u2", Some(&valid))
        .await;
    assert_error(&r, 403, "only the usage of 'u1'");

    let mut admin = claims("ops-admin");
    admin["scope"] = json!("usage:read usage:admin");
    let r = http
        .get(
            "/v1/usage/summary?days=7&user_id=u2",
            Some(&hs256(&admin, SECRET)),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["data"]["user_id"], "u2");
    assert_eq!(r.json()["data"]["requests"]["total"], 5);
}

#[tokio::test]
async fn rs256_es256_and_jwks_keys_verify_and_algorithms_cannot_be_swapped() {
    let (server, _dir, http) =
        start(ServerBuilder::new().configure(|o| o.jwt = Some(verifier()))).await;
    track(&server, "u1", 2).await;
    let c = claims("u1");
    for (token, what) in [
        (
            signed(Algorithm::RS256, None, "jwt/rs256.key", &c),
            "RS256 PEM",
        ),
        (
            signed(Algorithm::ES256, None, "jwt/es256.key", &c),
            "ES256 PEM",
        ),
        (
            signed(Algorithm::RS256, Some("key-2026"), "jwt/jwks-rs256.key", &c),
            "RS256 from the JWKS",
        ),
    ] {
        let r = http.get("/v1/usage/summary", Some(&token)).await;
        assert_eq!(r.status, 200, "{what}: {}", r.body);
        assert_eq!(r.json()["data"]["requests"]["total"], 2, "{what}");
    }
    // The JWKS key is tried only under its own kid (the PEM key, which has
    // no kid, is tried and fails).
    let wrong_kid = signed(Algorithm::RS256, Some("unknown"), "jwt/jwks-rs256.key", &c);
    assert_error(
        &http.get("/v1/usage/summary", Some(&wrong_kid)).await,
        401,
        "signature is invalid",
    );
    // The classic confusion: HS256 "signed" with the RSA public key's PEM.
    let confused = hs256(&c, &fixture("jwt/rs256.pub"));
    assert_error(
        &http.get("/v1/usage/summary", Some(&confused)).await,
        401,
        "signature is invalid",
    );
    // alg "none" is refused.
    let unsigned = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(c.to_string().as_bytes())
    );
    assert_eq!(
        http.get("/v1/usage/summary", Some(&unsigned)).await.status,
        401
    );
}

fn b64(bytes: &[u8]) -> String {
    // URL-safe base64 without padding, by hand for this one test value.
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n =
            chunk.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(ABC[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

#[tokio::test]
async fn billing_is_served_in_the_seed_shape() {
    let (server, _dir, http) =
        start(ServerBuilder::new().configure(|o| o.jwt = Some(verifier()))).await;
    track(&server, "u1", 4).await;
    let today = chrono::Utc::now()
        .date_naive()
        .format("%Y-%m-%d")
        .to_string();
    let token = hs256(&claims("u1"), SECRET);
    let r = http
        .get(
            &format!("/v1/usage/billing?start_date={today}&end_date={today}"),
            Some(&token),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let data = &r.json()["data"];
    assert_eq!(data["user_id"], "u1");
    assert_eq!(data["period"]["start"], today.as_str());
    assert_eq!(data["period"]["end"], today.as_str());
    assert_eq!(data["usage"]["requests"]["total"], 4);
    assert_eq!(data["usage"]["tokens"], 400);
    let charges = &data["charges"];
    let total = charges["total"].as_f64().unwrap_or(-1.0);
    let lines: f64 = [
        "base_fee",
        "compute_charges",
        "token_charges",
        "storage_charges",
    ]
    .iter()
    .map(|k| charges[*k].as_f64().unwrap_or(-1.0))
    .sum();
    assert!((total - lines).abs() < 1e-9, "{charges}");

    let r = http
        .get("/v1/usage/billing?start_date=2026-13-01", Some(&token))
        .await;
    assert_error(&r, 400, "start_date");
    assert_eq!(r.json()["error"]["field"], "start_date");
    let r = http.get("/v1/usage/summary?days=0", Some(&token)).await;
    assert_error(&r, 400, "days");
    let r = http.get("/v1/usage/summary?days=abc", Some(&token)).await;
    assert_eq!(r.json()["error"]["field"], "days");
    // A typo is refused, not answered with the default 30 days; so is a
    // repeated parameter.
    for query in ["day=7", "days=7&days=8", "days=7&=x"] {
        let r = http
            .get(&format!("/v1/usage/summary?{query}"), Some(&token))
            .await;
        assert_error(&r, 400, "");
        assert_eq!(r.json()["error"]["field"], "query", "{query}");
    }
}

#[tokio::test]
async fn the_api_limits_itself_per_user_with_429_and_rate_limit_headers() {
    let clock = minute_aligned_clock();
    let store = Arc::new(MemoryStore::with_clock(1000, Arc::new(clock.clone())));
    let (_server, _dir, http) = start(ServerBuilder::with_store(store).configure(|o| {
        o.jwt = Some(verifier());
        o.http_requests_per_minute = 3;
    }))
    .await;
    let u1 = hs256(&claims("u1"), SECRET);
    for remaining in ["2", "1", "0"] {
        let r = http.get("/v1/usage/summary", Some(&u1)).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.header("x-ratelimit-limit"), Some("3"));
        assert_eq!(r.header("x-ratelimit-remaining"), Some(remaining));
        assert_eq!(r.header("x-ratelimit-reset"), Some("60"));
        assert_eq!(r.header("retry-after"), None);
    }
    clock.advance(15_000_000);
    let r = http.get("/v1/usage/billing", Some(&u1)).await;
    assert_eq!(r.status, 429, "{}", r.body);
    let body = r.json();
    assert_eq!(body["status"], "error");
    assert_eq!(body["message"], "Rate limit exceeded");
    assert_eq!(
        body["error"]["detail"],
        "Minute limit of 3 requests exceeded"
    );
    assert_eq!(body["error"]["limit"], 3);
    assert_eq!(body["error"]["current"], 4);
    assert_eq!(body["error"]["retry_after"], 45);
    assert_eq!(r.header("retry-after"), Some("45"));
    assert_eq!(r.header("x-ratelimit-limit"), Some("3"));
    assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
    assert_eq!(r.header("x-ratelimit-reset"), Some("45"));

    // Per user: another caller has its own budget.
    let u2 = hs256(&claims("u2"), SECRET);
    assert_eq!(http.get("/v1/usage/summary", Some(&u2)).await.status, 200);
    // The window ends; u1 may call again.
    clock.advance(45_000_000);
    let r = http.get("/v1/usage/summary", Some(&u1)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-ratelimit-remaining"), Some("2"));
}

#[tokio::test]
async fn post_check_is_the_json_twin_of_check_rate_limit() {
    let (_server, _dir, http) = start(ServerBuilder::new()).await;
    let body =
        json!({"domain": "api", "descriptors": [{"entries": [{"key": "user", "value": "a"}]}]});
    let r = http.post("/v1/check", None, body.clone()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let data = &r.json()["data"];
    assert_eq!(data["overall_code"], "OK");
    assert_eq!(data["statuses"][0]["remaining"], 1);
    assert_eq!(data["statuses"][0]["limit"]["requests_per_unit"], 2);
    assert_eq!(data["statuses"][0]["limit"]["unit"], "minute");
    http.post("/v1/check", None, body.clone()).await;
    let r = http.post("/v1/check", None, body).await;
    let data = &r.json()["data"];
    assert_eq!(data["overall_code"], "OVER_LIMIT");
    let retry = data["statuses"][0]["retry_after_ms"].as_u64().unwrap_or(0);
    assert!(retry > 0 && retry <= 60_000, "{data}");

    let r = http
        .post(
            "/v1/check",
            None,
            json!({"domain": "api", "descriptors": []}),
        )
        .await;
    assert_error(&r, 400, "descriptors");
    assert_eq!(r.json()["error"]["field"], "descriptors");
    let r = http
        .post("/v1/check", None, json!({"descriptors": []}))
        .await;
    assert_error(&r, 400, "domain");
    let r = http
        .send("POST", "/v1/check", None, Some("{not json".into()))
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(http.get("/v1/check", None).await.status, 405);
    assert_error(
        &http.get("/v1/nothing", None).await,
        404,
        "no such endpoint",
    );
}

#[tokio::test]
async fn post_check_needs_an_api_key_allowed_to_check_when_keys_are_configured() {
    let keys = ApiKeys::new(vec![
        ApiKey {
            name: "edge".into(),
            key: "edge-key-0123456789".into(),
            allow: vec!["CheckRateLimit".into()],
        },
        ApiKey {
            name: "billing".into(),
            key: "billing-key-0123456789".into(),
            allow: vec!["TrackUsage".into()],
        },
    ])
    .expect("keys");
    let (_server, _dir, http) =
        start(ServerBuilder::new().configure(|o| o.api_keys = Some(Arc::new(keys)))).await;
    let body =
        json!({"domain": "api", "descriptors": [{"entries": [{"key": "user", "value": "a"}]}]});
    assert_error(
        &http.post("/v1/check", None, body.clone()).await,
        401,
        "API key is required",
    );
    assert_error(
        &http
            .post("/v1/check", Some("billing-key-0123456789"), body.clone())
            .await,
        403,
        "may not call CheckRateLimit",
    );
    let r = http
        .post("/v1/check", Some("edge-key-0123456789"), body)
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
}

#[tokio::test]
async fn without_jwt_config_the_usage_endpoints_need_user_id() {
    let (server, _dir, http) = start(ServerBuilder::new()).await;
    track(&server, "local", 2).await;
    assert_error(&http.get("/v1/usage/summary", None).await, 400, "user_id");
    let r = http.get("/v1/usage/summary?user_id=local", None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["data"]["requests"]["total"], 2);
}

fn sample(metrics: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (metric, rest) = series.split_once('{').unwrap_or((series, "}"));
        if metric != name {
            return None;
        }
        let all = labels
            .iter()
            .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
        all.then(|| value.parse().ok()).flatten()
    })
}

#[tokio::test]
async fn metrics_count_decisions_usage_and_requests() {
    let (server, _dir, http) = start(ServerBuilder::new()).await;
    let mut client = server.client().await;
    for _ in 0..3 {
        client
            .check_rate_limit(check("api", vec![descriptor(&[("user", "m")])]))
            .await
            .expect("check");
    }
    track(&server, "m", 2).await;
    let mut dup = server.client().await;
    dup.track_usage(pb::TrackUsageRequest {
        usage_id: "m-0".into(),
        user_id: "m".into(),
        category: "ai".into(),
        ..Default::default()
    })
    .await
    .expect("duplicate");

    let r = http.get("/metrics", None).await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .unwrap_or_default()
            .starts_with("application/openmetrics-text"),
        "{:?}",
        r.header("content-type")
    );
    let m = &r.body;
    assert!(m.ends_with("# EOF\n"));
    let rule = [("domain", "api"), ("rule", "api.user")];
    assert_eq!(
        sample(m, "tollgate_rate_limit_total_hits_total", &rule),
        Some(3.0)
    );
    assert_eq!(
        sample(m, "tollgate_rate_limit_within_limit_total", &rule),
        Some(2.0)
    );
    assert_eq!(
        sample(m, "tollgate_rate_limit_over_limit_total", &rule),
        Some(1.0)
    );
    // Limit 2: near threshold 1, so the second hit is near the limit.
    assert_eq!(
        sample(m, "tollgate_rate_limit_near_limit_total", &rule),
        Some(1.0)
    );
    let d = |code| [("domain", "api"), ("code", code)];
    assert_eq!(sample(m, "tollgate_decisions_total", &d("OK")), Some(2.0));
    assert_eq!(
        sample(m, "tollgate_decisions_total", &d("OVER_LIMIT")),
        Some(1.0)
    );
    let u = |result| [("result", result)];
    assert_eq!(
        sample(m, "tollgate_usage_events_total", &u("accepted")),
        Some(2.0)
    );
    assert_eq!(
        sample(m, "tollgate_usage_events_total", &u("duplicate")),
        Some(1.0)
    );
    assert_eq!(
        sample(
            m,
            "tollgate_grpc_request_duration_seconds_count",
            &[("method", "/tollgate.v1.RateLimiter/CheckRateLimit")]
        ),
        Some(3.0)
    );
    assert!(m.contains("tollgate_build_info{version=\""), "{m}");
}
