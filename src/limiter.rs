//! [`RateLimiter`]: request descriptors → matching rules → counter updates →
//! one store call → a [`CheckResponse`]. Shared by every API edge; knows
//! nothing of gRPC.

use std::sync::Arc;

use arc_swap::ArcSwap;
use tracing::Instrument;

use crate::algorithm::{Algorithm, Charge, Outcome};
use crate::limits::{Limit, Limits, Match, counter_key, lookup};
use crate::request::{
    CheckRequest, CheckResponse, Code, Descriptor, DescriptorStatus, InvalidRequest, ReportedLimit,
};
use crate::stats::{Answer, DecisionStats, LimitResult};
use crate::store::{CounterStore, CounterUpdate, StoreError};

pub use crate::limits::FailureMode;

/// Why a check could not be answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckError {
    #[error("invalid request: {0}")]
    Invalid(#[from] InvalidRequest),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The rate limiter: current limits plus the counter store. Cheap to clone;
/// clones share everything.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    // Swapped whole on reload, so a request sees one consistent snapshot and
    // reloads never block requests.
    limits: ArcSwap<Limits>,
    store: Arc<dyn CounterStore>,
    failure_mode: FailureMode,
    stats: DecisionStats,
}

impl RateLimiter {
    /// A limiter deciding `limits` with counters in `store`.
    pub fn new(limits: Limits, store: Arc<dyn CounterStore>, failure_mode: FailureMode) -> Self {
        Self {
            inner: Arc::new(Inner {
                limits: ArcSwap::from_pointee(limits),
                store,
                failure_mode,
                stats: DecisionStats::default(),
            }),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> Arc<Limits> {
        self.inner.limits.load_full()
    }

    /// Puts new limits in force for every request that starts from now on.
    pub fn set_limits(&self, limits: Limits) {
        self.inner.limits.store(Arc::new(limits));
    }

    /// The counter store.
    pub fn store(&self) -> &Arc<dyn CounterStore> {
        &self.inner.store
    }

    /// What has been decided so far, for metrics.
    pub fn stats(&self) -> &DecisionStats {
        &self.inner.stats
    }

    /// Decides a request.
    ///
    /// # Errors
    /// [`CheckError::Invalid`] for a malformed request (nothing is counted);
    /// [`CheckError::Store`] when the store fails and the mode is fail-closed.
    pub async fn check(&self, req: &CheckRequest) -> Result<CheckResponse, CheckError> {
        // One span per decision, at debug level: free when it is off (the
        // default `info`), and `RUST_LOG=tollgate=debug` shows every
        // request's domain and outcome.
        let span = tracing::debug_span!(
            "check",
            domain = %req.domain,
            descriptors = req.descriptors.len(),
            outcome = tracing::field::Empty,
        );
        if span.is_disabled() {
            return self.decide(req).await;
        }
        let result = self.decide(req).instrument(span.clone()).await;
        let outcome = match &result {
            Ok(r) if r.failed_open => "FAILED_OPEN",
            Ok(r) if r.overall == Code::OverLimit => "OVER_LIMIT",
            Ok(_) => "OK",
            Err(CheckError::Invalid(_)) => "INVALID",
            Err(CheckError::Store(_)) => "ERROR",
        };
        span.record("outcome", outcome);
        span.in_scope(|| tracing::debug!("decided"));
        result
    }

    async fn decide(&self, req: &CheckRequest) -> Result<CheckResponse, CheckError> {
        req.validate()?;
        let limits = self.inner.limits.load_full();
        let mut response = CheckResponse {
            overall: Code::Ok,
            statuses: vec![DescriptorStatus::default(); req.descriptors.len()],
            failed_open: false,
        };
        let stats = &self.inner.stats;
        let Some(domain) = limits.domain(&req.domain) else {
            stats.decision(None, Answer::Ok);
            return Ok(response);
        };

        // A limit sent with a descriptor replaces the rules for it. Rare:
        // nothing is allocated unless a descriptor has one.
        let any_override = req.descriptors.iter().any(|d| d.limit_override.is_some());
        let overrides: Vec<Option<Limit>> = req
            .descriptors
            .iter()
            .take(if any_override { usize::MAX } else { 0 })
            .map(|d| {
                d.limit_override.map(|o| Limit {
                    name: None,
                    unit: o.unit,
                    requests_per_unit: o.requests_per_unit,
                    algorithm: Algorithm::FixedWindow,
                    burst: o.requests_per_unit,
                })
            })
            .collect();
        let matches: Vec<Option<Match<'_>>> = req
            .descriptors
            .iter()
            .map(|d| match d.limit_override {
                Some(_) => None,
                None => lookup(domain, &d.entries),
            })
            .collect();
        let replaced = replaced_names(&matches);

        let mut updates = Vec::with_capacity(req.descriptors.len());
        let mut owners: Vec<Owner<'_>> = Vec::with_capacity(req.descriptors.len());
        for (i, (descriptor, matched)) in req.descriptors.iter().zip(&matches).enumerate() {
            if let Some(limit) = overrides.get(i).and_then(Option::as_ref) {
                updates.push(self.update(req, descriptor, None, limit));
                owners.push(Owner {
                    descriptor: i,
                    limit,
                    shadow: false,
                });
                continue;
            }
            let Some(matched) = matched else { continue };
            if matched.rule.unlimited {
                response.statuses[i].unlimited = true;
                continue;
            }
            for limit in &matched.rule.limits {
                if limit
                    .name
                    .as_ref()
                    .is_some_and(|n| replaced.contains(&n.as_ref()))
                {
                    continue;
                }
                updates.push(self.update(req, descriptor, Some(matched), limit));
                owners.push(Owner {
                    descriptor: i,
                    limit,
                    shadow: matched.rule.shadow_mode,
                });
            }
        }
        if updates.is_empty() {
            stats.decision(Some(&domain.name), Answer::Ok);
            return Ok(response);
        }

        let mut outcomes = match self.inner.store.apply(&updates).await {
            Ok(outcomes) => outcomes,
            Err(e)
                if e.is_transient()
                    && domain.failure_mode.unwrap_or(self.inner.failure_mode)
                        == FailureMode::FailOpen =>
            {
                tracing::warn!(error = %e, domain = %req.domain, "counter store failed; allowing (fail_open)");
                response.failed_open = true;
                owners
                    .iter()
                    .map(|o| Outcome {
                        allowed: true,
                        remaining: u64::from(o.limit.requests_per_unit),
                        ..Outcome::default()
                    })
                    .collect()
            }
            Err(e) => {
                stats.decision(Some(&domain.name), Answer::Error);
                return Err(e.into());
            }
        };

        let refused = owners
            .iter()
            .zip(&outcomes)
            .any(|(o, out)| !out.allowed && !o.shadow);
        if refused && req.charge == Charge::AdmittedOnly && !req.dry_run && !response.failed_open {
            self.refund_admitted(updates, &mut outcomes).await;
        }
        for (owner, outcome) in owners.into_iter().zip(outcomes) {
            fold(
                &mut response.statuses[owner.descriptor],
                owner.limit,
                &outcome,
                owner.shadow,
            );
        }
        if response.statuses.iter().any(|s| s.code == Code::OverLimit) {
            response.overall = Code::OverLimit;
        }
        self.count(req, &domain.name, &matches, &response);
        Ok(response)
    }

    /// Rule statistics (envoyproxy/ratelimit's) and the domain's answer.
    /// Dry runs and fail-open answers count as decisions but add no hits.
    fn count(
        &self,
        req: &CheckRequest,
        domain: &Arc<str>,
        matches: &[Option<Match<'_>>],
        response: &CheckResponse,
    ) {
        let stats = &self.inner.stats;
        let answer = match (response.failed_open, response.overall) {
            (true, _) => Answer::FailedOpen,
            (false, Code::Ok) => Answer::Ok,
            (false, Code::OverLimit) => Answer::OverLimit,
        };
        stats.decision(Some(domain), answer);
        if req.dry_run || response.failed_open {
            return;
        }
        for ((descriptor, matched), status) in
            req.descriptors.iter().zip(matches).zip(&response.statuses)
        {
            let (Some(m), Some(limit)) = (matched, &status.limit) else {
                continue;
            };
            let detailed = (m.rule.detailed_metric || m.rule.value_to_metric).then(|| {
                let mut key = String::from(domain.as_ref());
                for e in &descriptor.entries {
                    key.push('.');
                    key.push_str(&e.key);
                    if !e.value.is_empty() {
                        key.push('_');
                        key.push_str(&e.value);
                    }
                }
                key
            });
            stats.limit(
                &m.rule.path,
                detailed,
                LimitResult {
                    limit: u64::from(limit.requests_per_unit),
                    hits: descriptor.hits.unwrap_or(req.hits),
                    remaining: status.remaining,
                    allowed: status.code == Code::Ok && !status.shadowed,
                    shadow: m.rule.shadow_mode,
                },
            );
        }
    }

    fn update(
        &self,
        req: &CheckRequest,
        descriptor: &Descriptor,
        matched: Option<&Match<'_>>,
        limit: &Limit,
    ) -> CounterUpdate {
        CounterUpdate {
            key: counter_key(&req.domain, &descriptor.entries, matched, limit),
            algorithm: limit.algorithm,
            rate: limit.rate(),
            hits: descriptor.hits.unwrap_or(req.hits),
            charge: req.charge,
            dry_run: req.dry_run,
            refund_of: None,
        }
    }

    /// A refused request costs nothing: gives back the hits its other
    /// counters admitted. Between the take and the refund those hits are
    /// held, so a concurrent request may be refused for them; the error is
    /// always on the side of admitting less, never more.
    async fn refund_admitted(&self, updates: Vec<CounterUpdate>, outcomes: &mut [Outcome]) {
        let mut refunds = Vec::new();
        for (mut update, outcome) in updates.into_iter().zip(outcomes.iter_mut()) {
            if outcome.allowed && update.hits > 0 {
                let ceiling = match update.algorithm {
                    Algorithm::TokenBucket => update.rate.burst,
                    _ => update.rate.limit,
                };
                outcome.remaining = outcome.remaining.saturating_add(update.hits).min(ceiling);
                update.refund_of = Some(outcome.decided_at_micros);
                refunds.push(update);
            }
        }
        if refunds.is_empty() {
            return;
        }
        if let Err(e) = self.inner.store.apply(&refunds).await {
            // The request is refused either way; a lost refund only means
            // those hits stay counted until their window ends.
            tracing::warn!(error = %e, "could not refund the hits of a refused request");
        }
    }
}

/// Which descriptor and limit a counter update belongs to.
struct Owner<'a> {
    descriptor: usize,
    limit: &'a Limit,
    shadow: bool,
}

/// Names of limits that another matched limit of the same request replaces.
/// Unlimited rules' `replaces` count too, as in the reference.
fn replaced_names<'a>(matches: &[Option<Match<'a>>]) -> Vec<&'a str> {
    matches
        .iter()
        .flatten()
        .flat_map(|m| m.rule.replaces.iter().map(|r| r.as_ref()))
        .collect()
}

/// Merges one limit's outcome into its descriptor's status: over if any limit
/// is over; report the exceeded limit that frees up last, else the one with
/// the fewest hits left.
fn fold(status: &mut DescriptorStatus, limit: &Limit, outcome: &Outcome, shadow: bool) {
    let over = !outcome.allowed;
    let reported_over = status.retry_after_micros.is_some();
    let replace = match (&status.limit, over) {
        (None, _) => true,
        (Some(_), true) => !reported_over || outcome.retry_after_micros > status.retry_after_micros,
        (Some(_), false) => !reported_over && outcome.remaining < status.remaining,
    };
    if replace {
        status.limit = Some(ReportedLimit {
            requests_per_unit: limit.requests_per_unit,
            unit: limit.unit,
            name: limit.name.clone(),
        });
        status.remaining = outcome.remaining;
        status.reset_after_micros = outcome.reset_after_micros;
        status.retry_after_micros = outcome.retry_after_micros;
    }
    if over {
        if shadow {
            status.shadowed = true;
        } else {
            status.code = Code::OverLimit;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::path::Path;
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::config::parse_limits_file;
    use crate::store::MemoryStore;

    /// Collects what the fmt subscriber writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn each_decision_has_a_span_with_its_domain_and_outcome() {
        let yaml = "domain: api\ndescriptors:\n  - key: user\n    rate_limit: { unit: minute, requests_per_unit: 1 }\n";
        let domain = parse_limits_file(Path::new("api.yaml"), yaml).unwrap();
        let limiter = RateLimiter::new(
            Limits::from_domains([domain]),
            Arc::new(MemoryStore::new(100)),
            FailureMode::FailClosed,
        );
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let request = CheckRequest::new("api", vec![Descriptor::new([("user", "a")])]);
        limiter.check(&request).await.unwrap();
        limiter.check(&request).await.unwrap();
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().filter(|l| l.contains("decided")).collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(
            lines[0].contains("check{domain=api descriptors=1 outcome=\"OK\"}"),
            "{text}"
        );
        assert!(lines[1].contains("outcome=\"OVER_LIMIT\""), "{text}");
    }
}
