//! `tollgate-bench`: drives a tollgate (or the `--noop` baseline) with
//! CheckRateLimit or ShouldRateLimit at a chosen concurrency over a key
//! distribution, then prints throughput and latency percentiles (HDR
//! histogram) as a table, or as one JSON line.
//!
//! It targets loopback by default and always stops by itself: after
//! `--duration` or `--requests`, whichever comes first.

#![deny(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, Uniform, Zipf};
use tollgate::api::pb::envoy::extensions::common::ratelimit::v3 as common;
use tollgate::api::pb::envoy::service::ratelimit::v3 as rls;
use tollgate::api::pb::tollgate::v1 as pb;
use tonic::transport::{Channel, Endpoint};

/// Load generator for tollgate's gRPC APIs.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// gRPC endpoint to load.
    #[arg(long, default_value = "http://127.0.0.1:8081")]
    target: String,
    /// Which API to call.
    #[arg(long, value_enum, default_value_t = Api::Check)]
    api: Api,
    /// HTTP/2 connections.
    #[arg(long, default_value_t = 2)]
    connections: usize,
    /// Requests in flight per connection.
    #[arg(long, default_value_t = 32)]
    in_flight: usize,
    /// Stop after this long (e.g. `5s`, `500ms`).
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    duration: Duration,
    /// Stop after this many requests (0: only the duration counts).
    #[arg(long, default_value_t = 0)]
    requests: u64,
    /// Not counted: run this long first so connections and caches are warm.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    warmup: Duration,
    /// Keys: `hot` (one key), `uniform:N` (N keys), `zipf:N:S` (N keys, exponent S).
    #[arg(long, default_value = "hot", value_parser = parse_keys)]
    keys: Keys,
    /// Limits domain to send.
    #[arg(long, default_value = "bench")]
    domain: String,
    /// Descriptor key; the value is drawn from `--keys`.
    #[arg(long, default_value = "user")]
    key: String,
    /// Target requests per second across all workers (0: as fast as possible).
    /// Used to measure latency at a fixed load.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// A label for the output (e.g. `memory`, `redis-3`).
    #[arg(long, default_value = "")]
    label: String,
    /// Events per TrackUsageBatch call.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Client runtime worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Api {
    /// tollgate.v1.RateLimiter/CheckRateLimit
    Check,
    /// envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit
    Envoy,
    /// tollgate.v1.RateLimiter/TrackUsage: one event per call, a fresh id each
    Track,
    /// tollgate.v1.RateLimiter/TrackUsageBatch: `--batch` events per call
    TrackBatch,
}

#[derive(Debug, Clone, Copy)]
enum Keys {
    Hot,
    Uniform(u64),
    Zipf(u64, f64),
}

fn parse_keys(s: &str) -> Result<Keys, String> {
    let parts: Vec<&str> = s.split(':').collect();
    let number = |p: &str| p.parse::<u64>().map_err(|e| format!("{p}: {e}"));
    match parts.as_slice() {
        ["hot"] => Ok(Keys::Hot),
        ["uniform", n] => Ok(Keys::Uniform(number(n)?.max(1))),
        ["zipf", n, exp] => Ok(Keys::Zipf(
            number(n)?.max(1),
            exp.parse().map_err(|e| format!("{exp}: {e}"))?,
        )),
        _ => Err("expected hot, uniform:N or zipf:N:S".into()),
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (number, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((s, "s"), |i| (&s[..i], &s[i..]));
    let n: f64 = number.parse().map_err(|e| format!("{s}: {e}"))?;
    let secs = match unit {
        "s" => n,
        "ms" => n / 1e3,
        "m" => n * 60.0,
        _ => return Err(format!("{s}: use s, ms or m")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{s}: {e}"))
}

/// Draws key values from the configured distribution.
enum KeySource {
    Hot,
    Uniform(Uniform<u64>, StdRng),
    Zipf(Zipf<f64>, StdRng),
}

impl KeySource {
    fn new(keys: Keys, seed: u64) -> Result<Self, String> {
        let rng = StdRng::seed_from_u64(seed);
        Ok(match keys {
            Keys::Hot => KeySource::Hot,
            Keys::Uniform(n) => {
                KeySource::Uniform(Uniform::new(0, n).map_err(|e| e.to_string())?, rng)
            }
            Keys::Zipf(n, s) => {
                KeySource::Zipf(Zipf::new(n as f64, s).map_err(|e| e.to_string())?, rng)
            }
        })
    }

    fn next(&mut self) -> String {
        match self {
            KeySource::Hot => "hot".to_string(),
            KeySource::Uniform(d, rng) => d.sample(rng).to_string(),
            KeySource::Zipf(d, rng) => (d.sample(rng) as u64).to_string(),
        }
    }
}

/// Fresh usage ids: `run-worker-n`.
struct IdSource {
    prefix: String,
    next: u64,
}

impl IdSource {
    fn next(&mut self) -> String {
        self.next += 1;
        format!("{}-{}", self.prefix, self.next)
    }
}

#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    over: AtomicU64,
    errors: AtomicU64,
    /// Every call, warm-up included: what a server-side counter (like
    /// Redis's commandstats) sees.
    all: AtomicU64,
}

enum Outcome {
    Ok,
    Over,
    Error,
}

/// Unique ids across workers and runs: worker, a per-run nonce, a counter.
fn usage_event(user: String, id: String) -> pb::TrackUsageRequest {
    pb::TrackUsageRequest {
        usage_id: id,
        user_id: user,
        category: "bench".into(),
        success: true,
        metrics: [("tokens".to_string(), 100.0)].into(),
        ..Default::default()
    }
}

async fn call(
    api: Api,
    channel: &Channel,
    domain: &str,
    key: &str,
    value: String,
    ids: &mut IdSource,
    batch: usize,
) -> Outcome {
    match api {
        Api::Track => {
            let mut client = pb::rate_limiter_client::RateLimiterClient::new(channel.clone());
            match client.track_usage(usage_event(value, ids.next())).await {
                Ok(_) => Outcome::Ok,
                Err(_) => Outcome::Error,
            }
        }
        Api::TrackBatch => {
            let mut client = pb::rate_limiter_client::RateLimiterClient::new(channel.clone());
            let events = (0..batch.max(1))
                .map(|_| usage_event(value.clone(), ids.next()))
                .collect();
            match client
                .track_usage_batch(pb::TrackUsageBatchRequest { events })
                .await
            {
                Ok(_) => Outcome::Ok,
                Err(_) => Outcome::Error,
            }
        }
        Api::Check => {
            let mut client = pb::rate_limiter_client::RateLimiterClient::new(channel.clone());
            let request = pb::CheckRateLimitRequest {
                domain: domain.to_string(),
                descriptors: vec![pb::Descriptor {
                    entries: vec![pb::Entry {
                        key: key.to_string(),
                        value,
                    }],
                }],
                hits: 1,
                dry_run: false,
            };
            match client.check_rate_limit(request).await {
                Ok(r) if r.get_ref().overall_code == pb::Code::OverLimit as i32 => Outcome::Over,
                Ok(_) => Outcome::Ok,
                Err(_) => Outcome::Error,
            }
        }
        Api::Envoy => {
            let mut client =
                rls::rate_limit_service_client::RateLimitServiceClient::new(channel.clone());
            let request = rls::RateLimitRequest {
                domain: domain.to_string(),
                descriptors: vec![common::RateLimitDescriptor {
                    entries: vec![common::rate_limit_descriptor::Entry {
                        key: key.to_string(),
                        value,
                    }],
                    limit: None,
                    hits_addend: None,
                }],
                hits_addend: 1,
            };
            match client.should_rate_limit(request).await {
                Ok(r)
                    if r.get_ref().overall_code
                        == rls::rate_limit_response::Code::OverLimit as i32 =>
                {
                    Outcome::Over
                }
                Ok(_) => Outcome::Ok,
                Err(_) => Outcome::Error,
            }
        }
    }
}

struct Report {
    all_requests: u64,
    requests: u64,
    ok: u64,
    over: u64,
    errors: u64,
    elapsed: Duration,
    histogram: Histogram<u64>,
}

async fn run(args: &Args) -> Result<Report, String> {
    let endpoint = Endpoint::from_shared(args.target.clone()).map_err(|e| e.to_string())?;
    let mut channels = Vec::new();
    for _ in 0..args.connections.max(1) {
        // One connection each: `connect` opens it now, not lazily.
        channels.push(
            endpoint
                .connect()
                .await
                .map_err(|e| format!("{}: {e}", args.target))?,
        );
    }
    let counting = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Counts::default());
    let sent = Arc::new(AtomicU64::new(0));
    let workers = channels.len() * args.in_flight.max(1);
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros());
    // With --rate, each worker paces itself to its share of the rate.
    let pace = (args.rate > 0).then(|| Duration::from_secs_f64(workers as f64 / args.rate as f64));

    let mut tasks = Vec::new();
    for w in 0..workers {
        let channel = channels[w % channels.len()].clone();
        let (counting, stop, counts, sent) =
            (counting.clone(), stop.clone(), counts.clone(), sent.clone());
        let (api, domain, key, limit) = (
            args.api,
            args.domain.clone(),
            args.key.clone(),
            args.requests,
        );
        let mut keys = KeySource::new(args.keys, w as u64)?;
        let mut ids = IdSource {
            prefix: format!("bench-{run}-{w}"),
            next: 0,
        };
        let batch = args.batch;
        tasks.push(tokio::spawn(async move {
            let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).ok();
            let mut next = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                if let Some(pace) = pace {
                    next += pace;
                    tokio::time::sleep_until(next.into()).await;
                }
                let measuring = counting.load(Ordering::Relaxed);
                if measuring && limit > 0 && sent.fetch_add(1, Ordering::Relaxed) >= limit {
                    break;
                }
                let start = Instant::now();
                let outcome =
                    call(api, &channel, &domain, &key, keys.next(), &mut ids, batch).await;
                counts.all.fetch_add(1, Ordering::Relaxed);
                if !measuring {
                    continue;
                }
                let micros = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
                if let Some(h) = histogram.as_mut() {
                    let _ = h.record(micros.max(1));
                }
                let counter = match outcome {
                    Outcome::Ok => &counts.ok,
                    Outcome::Over => &counts.over,
                    Outcome::Error => &counts.errors,
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
            histogram
        }));
    }

    tokio::time::sleep(args.warmup).await;
    counting.store(true, Ordering::Relaxed);
    let started = Instant::now();
    let deadline = started + args.duration;
    while Instant::now() < deadline {
        if args.requests > 0 && sent.load(Ordering::Relaxed) >= args.requests {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10).min(deadline - Instant::now())).await;
    }
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed();

    let mut histogram =
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?;
    for t in tasks {
        if let Ok(Some(h)) = t.await {
            histogram.add(h).map_err(|e| e.to_string())?;
        }
    }
    let (ok, over, errors) = (
        counts.ok.load(Ordering::Relaxed),
        counts.over.load(Ordering::Relaxed),
        counts.errors.load(Ordering::Relaxed),
    );
    Ok(Report {
        all_requests: counts.all.load(Ordering::Relaxed),
        requests: ok + over + errors,
        ok,
        over,
        errors,
        elapsed,
        histogram,
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match args.threads {
        Some(1) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n.max(1))
            .enable_all()
            .build(),
        None => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
    };
    let report = match runtime
        .map_err(|e| e.to_string())
        .and_then(|rt| rt.block_on(run(&args)))
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tollgate-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let rps = report.requests as f64 / report.elapsed.as_secs_f64().max(1e-9);
    let p = |q: f64| report.histogram.value_at_quantile(q);
    let api = match args.api {
        Api::Check => "check",
        Api::Envoy => "envoy",
        Api::Track => "track",
        Api::TrackBatch => "track-batch",
    };
    // Events per second, for the usage APIs.
    let events_per_call = if args.api == Api::TrackBatch {
        args.batch.max(1)
    } else {
        1
    };
    let eps = rps * events_per_call as f64;
    // A closed stdout (`| head`) is not an error worth a panic.
    let mut out = std::io::stdout().lock();
    if args.json {
        let json = serde_json::json!({
            "label": args.label,
            "api": api,
            "keys": format!("{:?}", args.keys),
            "connections": args.connections,
            "in_flight": args.in_flight,
            "rate": args.rate,
            "seconds": report.elapsed.as_secs_f64(),
            "requests": report.requests,
            "all_requests": report.all_requests,
            "ok": report.ok,
            "over_limit": report.over,
            "errors": report.errors,
            "rps": rps,
            "events_per_second": eps,
            "p50_us": p(0.5),
            "p90_us": p(0.9),
            "p99_us": p(0.99),
            "p999_us": p(0.999),
        });
        let _ = writeln!(out, "{json}");
    } else {
        let _ = writeln!(
            out,
            "{} {api} {:?}: {} requests in {:.2}s = {rps:.0} req/s (ok {}, over_limit {}, errors {})",
            args.label,
            args.keys,
            report.requests,
            report.elapsed.as_secs_f64(),
            report.ok,
            report.over,
            report.errors
        );
        if matches!(args.api, Api::Track | Api::TrackBatch) {
            let _ = writeln!(out, "{eps:.0} usage events/s");
        }
        let _ = writeln!(
            out,
            "latency µs: p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
            p(0.5),
            p(0.9),
            p(0.99),
            p(0.999),
            report.histogram.max()
        );
    }
    if report.errors > 0 && report.ok + report.over == 0 {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
