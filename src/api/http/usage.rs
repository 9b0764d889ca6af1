//! `GET /v1/usage/summary` and `GET /v1/usage/billing`: the seed's shapes,
//! behind a bearer JWT. A user reads only their own usage; a token with the
//! `usage:admin` scope may name another with `?user_id=`.

use std::collections::BTreeMap;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use chrono::{Datelike, Utc};
use serde::{Deserialize, Serialize};

use super::HttpState;
use super::envelope::{ApiError, success};
use super::self_limit::Quota;
use crate::request::InvalidRequest;
use crate::usage::MAX_DAYS;

// Unknown parameters are refused: a typo such as `day=7` must not
// silently answer for the default 30 days.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SummaryParams {
    days: Option<String>,
    user_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BillingParams {
    start_date: Option<String>,
    end_date: Option<String>,
    user_id: Option<String>,
}

#[derive(Debug, Serialize)]
struct Requests {
    total: u64,
    by_category: BTreeMap<String, u64>,
}

#[derive(Debug, Serialize)]
struct Day {
    date: String,
    total: u64,
    by_category: BTreeMap<String, u64>,
    metrics: BTreeMap<String, f64>,
}

#[derive(Debug, Serialize)]
struct Summary {
    user_id: String,
    period: String,
    requests: Requests,
    metrics: BTreeMap<String, f64>,
    daily: Vec<Day>,
}

#[derive(Debug, Serialize)]
struct Period {
    start: String,
    end: String,
}

#[derive(Debug, Serialize)]
struct BilledUsage {
    requests: Requests,
    compute_units: f64,
    tokens: u64,
    storage_bytes: u64,
}

/// Amounts are JSON numbers with at most two decimals, as the seed has
/// them; they are computed exactly (decimal) and only then written.
#[derive(Debug, Serialize)]
struct Charges {
    base_fee: f64,
    compute_charges: f64,
    token_charges: f64,
    storage_charges: f64,
    total: f64,
    currency: String,
}

#[derive(Debug, Serialize)]
struct Billing {
    user_id: String,
    tier: String,
    period: Period,
    usage: BilledUsage,
    charges: Charges,
}

fn money(d: rust_decimal::Decimal) -> f64 {
    use rust_decimal::prelude::ToPrimitive;
    d.to_f64().unwrap_or(0.0)
}

fn date(d: chrono::NaiveDate) -> String {
    d.format("%Y-%m-%d").to_string()
}

/// What both endpoints do first: parse the query (a repeated, malformed or
/// unknown parameter is a 400), authenticate, and count the request against
/// the caller's budget.
async fn begin<P>(
    state: &HttpState,
    headers: &HeaderMap,
    params: Result<Query<P>, QueryRejection>,
    user_id: impl Fn(&P) -> Option<&str>,
) -> Result<(P, String, Option<Quota>), Response> {
    let Query(params) = params.map_err(|e| {
        ApiError::bad_request(&InvalidRequest::new("query", e.body_text())).into_response()
    })?;
    let (user, quota) = state.admit(headers, user_id(&params)).await?;
    Ok((params, user, quota))
}

/// The answer (or the error's envelope), with the caller's quota headers.
fn finish(result: Result<Response, ApiError>, quota: Option<Quota>) -> Response {
    let mut response = result.unwrap_or_else(IntoResponse::into_response);
    if let Some(quota) = quota {
        quota.write_headers(response.headers_mut());
    }
    response
}

fn parse_days(days: Option<&str>) -> Result<u32, ApiError> {
    let Some(text) = days else { return Ok(30) };
    match text.trim().parse::<u32>() {
        Ok(n) if (1..=MAX_DAYS).contains(&n) => Ok(n),
        _ => Err(ApiError::bad_request(&InvalidRequest::new(
            "days",
            format!("must be a whole number from 1 to {MAX_DAYS}, got '{text}'"),
        ))),
    }
}

/// `GET /v1/usage/summary?days=N`
pub async fn summary(
    State(state): State<HttpState>,
    headers: HeaderMap,
    params: Result<Query<SummaryParams>, QueryRejection>,
) -> Response {
    let (params, user, quota) =
        match begin(&state, &headers, params, |p| p.user_id.as_deref()).await {
            Ok(begun) => begun,
            Err(response) => return response,
        };
    let result = async {
        let days = parse_days(params.days.as_deref())?;
        let (summary, from, to) = state.usage.summary(&user, days).await?;
        let days = (to - from).num_days() + 1;
        let data = Summary {
            user_id: user.clone(),
            period: format!("Last {days} days"),
            requests: Requests {
                total: summary.total,
                by_category: summary.by_category,
            },
            metrics: summary.metrics,
            daily: summary
                .daily
                .into_iter()
                .map(|d| Day {
                    date: date(d.date),
                    total: d.total(),
                    by_category: d.by_category,
                    metrics: d.metrics,
                })
                .collect(),
        };
        Ok::<_, ApiError>(success(
            format!("Usage summary for the last {days} days"),
            data,
        ))
    }
    .await;
    finish(result, quota)
}

/// `GET /v1/usage/billing?start_date=YYYY-MM-DD&end_date=YYYY-MM-DD`;
/// the period defaults to the current month up to today (UTC).
pub async fn billing(
    State(state): State<HttpState>,
    headers: HeaderMap,
    params: Result<Query<BillingParams>, QueryRejection>,
) -> Response {
    let (params, user, quota) =
        match begin(&state, &headers, params, |p| p.user_id.as_deref()).await {
            Ok(begun) => begun,
            Err(response) => return response,
        };
    let today = Utc::now().date_naive();
    let start = params
        .start_date
        .unwrap_or_else(|| date(today.with_day(1).unwrap_or(today)));
    let end = params.end_date.unwrap_or_else(|| date(today));
    let result = async {
        let (bill, from, to) = state.usage.bill(&user, &start, &end).await?;
        let data = Billing {
            user_id: user.clone(),
            tier: bill.tier,
            period: Period {
                start: date(from),
                end: date(to),
            },
            usage: BilledUsage {
                requests: Requests {
                    total: bill.requests,
                    by_category: bill.by_category,
                },
                compute_units: bill.compute_units,
                tokens: bill.tokens,
                storage_bytes: bill.storage_bytes,
            },
            charges: Charges {
                base_fee: money(bill.base_fee),
                compute_charges: money(bill.compute_charges),
                token_charges: money(bill.token_charges),
                storage_charges: money(bill.storage_charges),
                total: money(bill.total),
                currency: bill.currency,
            },
        };
        Ok::<_, ApiError>(success(
            format!("Billing for {} to {}", date(from), date(to)),
            data,
        ))
    }
    .await;
    finish(result, quota)
}
