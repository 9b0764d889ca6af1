//! Durable usage in PostgreSQL: the seed's schema (users, api_usage,
//! usage_metrics, daily_usage, billing_records, billing_details) with text
//! ids, plus `daily_metrics` for metric names beyond the seed's columns.
//!
//! Writes go through one writer task that commits *groups* of events: while
//! a transaction is in flight, new events queue up and go into the next one,
//! so throughput does not pay one commit per event. A call is answered only
//! after its events are committed. `api_usage` is keyed by `usage_id`, and
//! the insert, the metrics and the daily aggregates of an event are in the
//! same transaction: a retry after any failure counts once, and nothing is
//! ever half-written. A full queue answers [`UsageError::Busy`] at once; a
//! database that does not answer, [`UsageError::Unavailable`].

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::event::UsageEvent;
use super::store::{DayUsage, Recorded, UsageError, UsageStore};
use crate::store::{SecretUrl, StoreFuture};

/// Events waiting for a commit before new calls are refused with Busy.
pub const QUEUE_EVENTS: usize = 100_000;
/// Most events in one transaction.
const MAX_GROUP: usize = 5_000;
/// Transactions committing at once.
const WRITERS: usize = 2;
/// How long one transaction or query may take.
const TIMEOUT: Duration = Duration::from_secs(5);

const MIGRATIONS: &str = include_str!("postgres_schema.sql");

type Reply = oneshot::Sender<Result<Vec<Recorded>, UsageError>>;

struct Job {
    events: Vec<UsageEvent>,
    reply: Reply,
}

/// Usage in PostgreSQL.
pub struct PostgresUsageStore {
    target: Target,
    jobs: mpsc::Sender<Job>,
    // Events queued but not yet committed, to bound the queue by events.
    queued: Arc<std::sync::atomic::AtomicUsize>,
    reader: Mutex<Option<Client>>,
}

impl fmt::Debug for PostgresUsageStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresUsageStore")
            .field("target", &self.target)
            .finish()
    }
}

/// Where to connect, and how: TLS (rustls, the certificate always
/// verified) when the URL says `sslmode=require`, else plain TCP.
#[derive(Clone)]
pub(crate) struct Target {
    url: SecretUrl,
    tls: Option<MakeRustlsConnect>,
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Target")
            .field("url", &self.url)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Target {
    /// Trusts the Mozilla roots, plus `ca_pem` (PEM certificates) if given.
    fn new(url: SecretUrl, ca_pem: Option<&[u8]>) -> Result<Self, UsageError> {
        let config: tokio_postgres::Config = url
            .expose()
            .parse()
            .map_err(|e| UsageError::Unavailable(format!("postgres {url}: {e}")))?;
        if config.get_ssl_mode() != SslMode::Require {
            return Ok(Self { url, tls: None });
        }
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(pem) = ca_pem {
            use rustls::pki_types::CertificateDer;
            use rustls::pki_types::pem::PemObject;
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| {
                    UsageError::Unavailable(format!("postgres CA certificates: {e}"))
                })?;
                roots.add(cert).map_err(|e| {
                    UsageError::Unavailable(format!("postgres CA certificates: {e}"))
                })?;
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| UsageError::Unavailable(format!("postgres TLS: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self {
            url,
            tls: Some(MakeRustlsConnect::new(config)),
        })
    }
}

/// An error with its causes: tokio-postgres's own text ("error performing
/// TLS handshake") leaves out the one that says what to fix.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Runs a connection until the client is dropped or the server goes away;
/// its end is not an error worth more than a debug line.
fn run_connection<F>(connection: F)
where
    F: std::future::Future<Output = Result<(), tokio_postgres::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "postgres connection closed");
        }
    });
}

async fn connect(target: &Target) -> Result<Client, UsageError> {
    let url = &target.url;
    let connected = match &target.tls {
        Some(tls) => {
            let connecting = tokio_postgres::connect(url.expose(), tls.clone());
            tokio::time::timeout(TIMEOUT, connecting)
                .await
                .map(|r| r.map(|(client, conn)| (client, run_connection(conn))))
        }
        None => {
            let connecting = tokio_postgres::connect(url.expose(), NoTls);
            tokio::time::timeout(TIMEOUT, connecting)
                .await
                .map(|r| r.map(|(client, conn)| (client, run_connection(conn))))
        }
    };
    let (client, ()) = connected
        .map_err(|_| {
            UsageError::Unavailable(format!("postgres {url}: no answer within {TIMEOUT:?}"))
        })?
        .map_err(|e| UsageError::Unavailable(format!("postgres {url}: {}", with_causes(&e))))?;
    Ok(client)
}

fn unavailable(e: impl fmt::Display) -> UsageError {
    UsageError::Unavailable(format!("postgres: {e}"))
}

impl PostgresUsageStore {
    /// Connects, applies the embedded migrations, and starts the writer.
    ///
    /// # Errors
    /// [`UsageError::Unavailable`] when the database cannot be reached or
    /// migrated.
    pub async fn connect(url: SecretUrl) -> Result<Self, UsageError> {
        Self::connect_with_ca(url, None).await
    }

    /// [`PostgresUsageStore::connect`], also trusting the PEM CA
    /// certificates in `ca_pem` for `sslmode=require` (a private CA).
    ///
    /// # Errors
    /// As [`PostgresUsageStore::connect`], and CA certificates that do not parse.
    pub async fn connect_with_ca(
        url: SecretUrl,
        ca_pem: Option<&[u8]>,
    ) -> Result<Self, UsageError> {
        let target = Target::new(url, ca_pem)?;
        let url = target.url.clone();
        let client = connect(&target).await?;
        client
            .batch_execute(MIGRATIONS)
            .await
            .map_err(unavailable)?;
        tracing::info!(url = %url, "postgres usage store ready");
        let (jobs, receiver) = mpsc::channel(QUEUE_EVENTS);
        let queued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        // Writers share one queue; each has its own connection, so groups
        // commit in parallel on the database's cores. Row locks are taken in
        // key order in every transaction, so two writers never deadlock.
        let receiver = Arc::new(Mutex::new(receiver));
        let mut first = Some(client);
        for _ in 0..WRITERS {
            tokio::spawn(writer(
                target.clone(),
                first.take(),
                receiver.clone(),
                queued.clone(),
            ));
        }
        Ok(Self {
            reader: Mutex::new(connect(&target).await.ok()),
            target,
            jobs,
            queued,
        })
    }

    /// A query on the read connection, reconnecting once if it was lost.
    async fn read(&self) -> Result<tokio::sync::MutexGuard<'_, Option<Client>>, UsageError> {
        let mut guard = self.reader.lock().await;
        if guard.as_ref().is_none_or(|c| c.is_closed()) {
            *guard = Some(connect(&self.target).await?);
        }
        Ok(guard)
    }
}

impl UsageStore for PostgresUsageStore {
    fn record<'a>(
        &'a self,
        events: &'a [UsageEvent],
    ) -> StoreFuture<'a, Result<Vec<Recorded>, UsageError>> {
        Box::pin(async move {
            use std::sync::atomic::Ordering;
            let n = events.len();
            let reserved = self
                .queued
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                    (q + n <= QUEUE_EVENTS).then_some(q + n)
                })
                .is_ok();
            if !reserved {
                return Err(UsageError::Busy(format!(
                    "{QUEUE_EVENTS} events are waiting for the database; retry with the same ids"
                )));
            }
            let (reply, answer) = oneshot::channel();
            let job = Job {
                events: events.to_vec(),
                reply,
            };
            if self.jobs.try_send(job).is_err() {
                self.queued.fetch_sub(n, Ordering::AcqRel);
                return Err(UsageError::Busy(
                    "the write queue is full; retry with the same ids".into(),
                ));
            }
            answer
                .await
                .map_err(|_| UsageError::Unavailable("postgres writer stopped".into()))?
        })
    }

    fn daily<'a>(
        &'a self,
        user_id: &'a str,
        from: NaiveDate,
        to: NaiveDate,
    ) -> StoreFuture<'a, Result<Vec<DayUsage>, UsageError>> {
        Box::pin(async move {
            let guard = self.read().await?;
            let client = guard.as_ref().ok_or_else(|| unavailable("not connected"))?;
            let query = async {
                let counts = client
                    .query(
                        "SELECT date, category, request_count FROM daily_usage \
                         WHERE user_id = $1 AND date BETWEEN $2 AND $3",
                        &[&user_id, &from, &to],
                    )
                    .await?;
                let metrics = client
                    .query(
                        "SELECT date, metric_name, value FROM daily_metrics \
                         WHERE user_id = $1 AND date BETWEEN $2 AND $3",
                        &[&user_id, &from, &to],
                    )
                    .await?;
                Ok::<_, tokio_postgres::Error>((counts, metrics))
            };
            let (counts, metrics) = tokio::time::timeout(TIMEOUT, query)
                .await
                .map_err(|_| unavailable("query timed out"))?
                .map_err(unavailable)?;
            let mut days: BTreeMap<NaiveDate, DayUsage> = BTreeMap::new();
            for row in counts {
                let date: NaiveDate = row.get(0);
                let count: i64 = row.get(2);
                let day = days.entry(date).or_insert_with(|| DayUsage {
                    date,
                    ..Default::default()
                });
                day.by_category
                    .insert(row.get(1), u64::try_from(count).unwrap_or(0));
            }
            for row in metrics {
                let date: NaiveDate = row.get(0);
                let day = days.entry(date).or_insert_with(|| DayUsage {
                    date,
                    ..Default::default()
                });
                day.metrics.insert(row.get(1), row.get(2));
            }
            Ok(days.into_values().collect())
        })
    }

    fn tier<'a>(&'a self, user_id: &'a str) -> StoreFuture<'a, Result<Option<String>, UsageError>> {
        Box::pin(async move {
            let guard = self.read().await?;
            let client = guard.as_ref().ok_or_else(|| unavailable("not connected"))?;
            let row = tokio::time::timeout(
                TIMEOUT,
                client.query_opt("SELECT tier FROM users WHERE id = $1", &[&user_id]),
            )
            .await
            .map_err(|_| unavailable("query timed out"))?
            .map_err(unavailable)?;
            Ok(row.map(|r| r.get(0)))
        })
    }

    fn name(&self) -> &'static str {
        "postgres"
    }

    fn check(&self) -> StoreFuture<'_, Result<(), UsageError>> {
        Box::pin(async move {
            let guard = self.read().await?;
            let client = guard.as_ref().ok_or_else(|| unavailable("not connected"))?;
            tokio::time::timeout(Duration::from_secs(1), client.simple_query("SELECT 1"))
                .await
                .map_err(|_| unavailable("no answer within 1s"))?
                .map_err(unavailable)?;
            Ok(())
        })
    }
}

/// The group-commit loop: takes every job waiting (up to [`MAX_GROUP`]
/// events), commits them in one transaction, answers each.
async fn writer(
    target: Target,
    mut client: Option<Client>,
    jobs: Arc<Mutex<mpsc::Receiver<Job>>>,
    queued: Arc<std::sync::atomic::AtomicUsize>,
) {
    loop {
        // Take a group under the queue lock, then release it for the other
        // writer while this one commits.
        let (group, events) = {
            let mut jobs = jobs.lock().await;
            let Some(first) = jobs.recv().await else {
                return;
            };
            let mut group = vec![first];
            let mut events = group[0].events.len();
            while events < MAX_GROUP {
                match jobs.try_recv() {
                    Ok(job) => {
                        events += job.events.len();
                        group.push(job);
                    }
                    Err(_) => break,
                }
            }
            (group, events)
        };
        let result = commit_group(&target, &mut client, &group).await;
        queued.fetch_sub(events, std::sync::atomic::Ordering::AcqRel);
        match result {
            Ok(mut statuses) => {
                for job in group {
                    let rest = statuses.split_off(job.events.len());
                    let _ = job.reply.send(Ok(statuses));
                    statuses = rest;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, events, "usage commit failed; callers retry with the same ids");
                // The connection may be broken: make a fresh one next time.
                client = None;
                for job in group {
                    let _ = job.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

async fn commit_group(
    target: &Target,
    client: &mut Option<Client>,
    group: &[Job],
) -> Result<Vec<Recorded>, UsageError> {
    if client.as_ref().is_none_or(|c| c.is_closed()) {
        *client = Some(connect(target).await?);
    }
    let client = client
        .as_mut()
        .ok_or_else(|| unavailable("not connected"))?;
    let events: Vec<&UsageEvent> = group.iter().flat_map(|j| j.events.iter()).collect();
    tokio::time::timeout(TIMEOUT, transaction(client, &events))
        .await
        .map_err(|_| unavailable("commit timed out"))?
        .map_err(unavailable)
}

fn timestamp(micros: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(micros).unwrap_or_default()
}

async fn transaction(
    client: &mut Client,
    events: &[&UsageEvent],
) -> Result<Vec<Recorded>, tokio_postgres::Error> {
    let tx = client.transaction().await?;

    // Users and their latest tier.
    // Sorted, like every upsert below: locks in key order, no deadlocks.
    let mut users: BTreeMap<&str, (&UsageEvent, i64)> = BTreeMap::new();
    for e in events {
        let entry = users
            .entry(e.user_id.as_str())
            .or_insert((e, e.timestamp_micros));
        if e.timestamp_micros >= entry.1 {
            *entry = (e, e.timestamp_micros);
        }
    }
    let ids: Vec<&str> = users.keys().copied().collect();
    let tiers: Vec<&str> = users.values().map(|(e, _)| e.tier_or_default()).collect();
    let tier_at: Vec<DateTime<Utc>> = users.values().map(|(_, t)| timestamp(*t)).collect();
    tx.execute(
        "INSERT INTO users (id, tier, tier_at) SELECT * FROM UNNEST($1::text[], $2::text[], $3::timestamptz[]) \
         ON CONFLICT (id) DO UPDATE SET tier = EXCLUDED.tier, tier_at = EXCLUDED.tier_at \
         WHERE users.tier_at IS NULL OR EXCLUDED.tier_at >= users.tier_at",
        &[&ids, &tiers, &tier_at],
    )
    .await?;

    // The events: new ids only; the rest are duplicates. Inserted in id
    // order, so two writers inserting the same ids lock them in the same
    // order (no deadlock).
    let mut sorted: Vec<&UsageEvent> = events.to_vec();
    sorted.sort_by(|a, b| a.usage_id.cmp(&b.usage_id));
    let events_in_order = events;
    let events = &sorted[..];
    let col = |f: fn(&UsageEvent) -> &str| events.iter().map(|e| f(e)).collect::<Vec<&str>>();
    let usage_ids = col(|e| &e.usage_id);
    let user_ids = col(|e| &e.user_id);
    let categories = col(|e| &e.category);
    let operations = col(|e| &e.operation);
    let endpoints = col(|e| &e.endpoint);
    let ips = col(|e| &e.request_ip);
    let times: Vec<DateTime<Utc>> = events
        .iter()
        .map(|e| timestamp(e.timestamp_micros))
        .collect();
    let durations: Vec<i32> = events
        .iter()
        .map(|e| i32::try_from(e.duration_ms).unwrap_or(i32::MAX))
        .collect();
    let statuses: Vec<i32> = events
        .iter()
        .map(|e| i32::try_from(e.status_code).unwrap_or(0))
        .collect();
    let successes: Vec<bool> = events.iter().map(|e| e.success).collect();
    let inserted = tx
        .query(
            "INSERT INTO api_usage (id, user_id, timestamp, category, operation, endpoint, duration_ms, \
             request_ip, status_code, success) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::timestamptz[], $4::text[], $5::text[], $6::text[], \
             $7::int[], $8::text[], $9::int[], $10::bool[]) \
             ON CONFLICT (id) DO NOTHING RETURNING id",
            &[
                &usage_ids,
                &user_ids,
                &times,
                &categories,
                &operations,
                &endpoints,
                &durations,
                &ips,
                &statuses,
                &successes,
            ],
        )
        .await?;
    let mut new_ids: HashSet<String> = inserted.into_iter().map(|r| r.get(0)).collect();

    // Which events count: the first of each new id (a batch may repeat an id).
    let mut results = Vec::with_capacity(events.len());
    let mut counted: Vec<&UsageEvent> = Vec::new();
    for e in events_in_order {
        if new_ids.remove(&e.usage_id) {
            results.push(Recorded::Accepted);
            counted.push(e);
        } else {
            results.push(Recorded::Duplicate);
        }
    }

    // Metrics of the new events, and the daily aggregates (summed here, since
    // one upsert may not touch a row twice).
    let mut metric_ids = Vec::new();
    let mut metric_names = Vec::new();
    let mut metric_values = Vec::new();
    let mut daily: BTreeMap<(&str, NaiveDate, &str), [f64; 4]> = BTreeMap::new();
    let mut daily_metrics: BTreeMap<(&str, NaiveDate, &str), f64> = BTreeMap::new();
    for e in &counted {
        let day = e.day();
        let agg = daily
            .entry((e.user_id.as_str(), day, e.category.as_str()))
            .or_insert([0.0; 4]);
        agg[0] += 1.0;
        for (name, value) in &e.metrics {
            metric_ids.push(e.usage_id.as_str());
            metric_names.push(name.as_str());
            metric_values.push(*value);
            match name.as_str() {
                "compute_units" => agg[1] += value,
                "tokens" => agg[2] += value,
                "storage_bytes" => agg[3] += value,
                _ => {}
            }
            *daily_metrics
                .entry((e.user_id.as_str(), day, name.as_str()))
                .or_default() += value;
        }
    }
    if !metric_ids.is_empty() {
        tx.execute(
            "INSERT INTO usage_metrics (usage_id, metric_name, metric_value) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::float8[]) \
             ON CONFLICT (usage_id, metric_name) DO NOTHING",
            &[&metric_ids, &metric_names, &metric_values],
        )
        .await?;
    }
    if !daily.is_empty() {
        let users: Vec<&str> = daily.keys().map(|k| k.0).collect();
        let dates: Vec<NaiveDate> = daily.keys().map(|k| k.1).collect();
        let cats: Vec<&str> = daily.keys().map(|k| k.2).collect();
        let counts: Vec<i64> = daily.values().map(|a| a[0] as i64).collect();
        let compute: Vec<f64> = daily.values().map(|a| a[1]).collect();
        let tokens: Vec<i64> = daily.values().map(|a| a[2].round() as i64).collect();
        let storage: Vec<i64> = daily.values().map(|a| a[3].round() as i64).collect();
        tx.execute(
            "INSERT INTO daily_usage (user_id, date, category, request_count, compute_units, tokens, storage_bytes) \
             SELECT * FROM UNNEST($1::text[], $2::date[], $3::text[], $4::int8[], $5::float8[], $6::int8[], $7::int8[]) \
             ON CONFLICT (user_id, date, category) DO UPDATE SET \
             request_count = daily_usage.request_count + EXCLUDED.request_count, \
             compute_units = daily_usage.compute_units + EXCLUDED.compute_units, \
             tokens = daily_usage.tokens + EXCLUDED.tokens, \
             storage_bytes = daily_usage.storage_bytes + EXCLUDED.storage_bytes",
            &[&users, &dates, &cats, &counts, &compute, &tokens, &storage],
        )
        .await?;
    }
    if !daily_metrics.is_empty() {
        let users: Vec<&str> = daily_metrics.keys().map(|k| k.0).collect();
        let dates: Vec<NaiveDate> = daily_metrics.keys().map(|k| k.1).collect();
        let names: Vec<&str> = daily_metrics.keys().map(|k| k.2).collect();
        let values: Vec<f64> = daily_metrics.values().copied().collect();
        tx.execute(
            "INSERT INTO daily_metrics (user_id, date, metric_name, value) \
             SELECT * FROM UNNEST($1::text[], $2::date[], $3::text[], $4::float8[]) \
             ON CONFLICT (user_id, date, metric_name) DO UPDATE SET value = daily_metrics.value + EXCLUDED.value",
            &[&users, &dates, &names, &values],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(results)
}
