//! A minimal tollgate client: `cargo run --example check -- [--addr URL] DOMAIN KEY=VALUE...`
//! sends one CheckRateLimit with one descriptor and prints the answer.

use tollgate::api::pb::tollgate::v1::{
    CheckRateLimitRequest, Code, Descriptor, Entry, rate_limit::Unit,
    rate_limiter_client::RateLimiterClient,
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut addr = "http://127.0.0.1:8081".to_string();
    if args.first().is_some_and(|a| a == "--addr") && args.len() > 1 {
        addr = args.remove(1);
        args.remove(0);
    }
    let Some((domain, pairs)) = args.split_first() else {
        return Err("usage: check [--addr URL] DOMAIN KEY=VALUE...".into());
    };
    let entries = pairs
        .iter()
        .map(|p| {
            let (key, value) = p.split_once('=').unwrap_or((p.as_str(), ""));
            Entry {
                key: key.into(),
                value: value.into(),
            }
        })
        .collect();
    let mut client = RateLimiterClient::connect(addr).await?;
    let answer = client
        .check_rate_limit(CheckRateLimitRequest {
            domain: domain.clone(),
            descriptors: vec![Descriptor { entries }],
            hits: 1,
            dry_run: false,
        })
        .await?
        .into_inner();
    let over = answer.overall_code == Code::OverLimit as i32;
    println!("{}", if over { "OVER_LIMIT" } else { "OK" });
    for s in &answer.statuses {
        match &s.limit {
            Some(l) => println!(
                "  limit {} per {} ({}): remaining {}, reset in {}s{}",
                l.requests_per_unit,
                Unit::try_from(l.unit)
                    .map(|u| u.as_str_name().trim_start_matches("UNIT_").to_lowercase())
                    .unwrap_or_default(),
                if l.name.is_empty() {
                    "unnamed"
                } else {
                    &l.name
                },
                s.remaining,
                s.reset_after.as_ref().map_or(0, |d| d.seconds),
                s.retry_after.as_ref().map_or(String::new(), |d| format!(
                    ", retry in {}.{:03}s",
                    d.seconds,
                    d.nanos / 1_000_000
                )),
            ),
            None => println!("  no limit applies"),
        }
    }
    Ok(())
}
