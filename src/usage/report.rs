//! Summaries and bills from daily aggregates.
//!
//! Money is [`Decimal`], never a float. A charge is `quantity × unit price`,
//! each charge is rounded to cents half-to-even ("banker's rounding", which
//! does not drift upwards over many bills), and the total is the sum of the
//! rounded charges, so the lines of a bill always add up to its total.

use std::collections::BTreeMap;

use chrono::NaiveDate;
use rust_decimal::{Decimal, RoundingStrategy};

use super::store::DayUsage;

/// Requests and metrics of one user over a run of days.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct UsageSummary {
    pub total: u64,
    pub by_category: BTreeMap<String, u64>,
    pub metrics: BTreeMap<String, f64>,
    /// Every day from the first to the last, oldest first, zeros included.
    pub daily: Vec<DayUsage>,
}

impl UsageSummary {
    /// Sums `days` (any order, gaps allowed) over `from..=to`, filling every
    /// missing day with zeros.
    pub fn new(days: Vec<DayUsage>, from: NaiveDate, to: NaiveDate) -> Self {
        let mut by_date: BTreeMap<NaiveDate, DayUsage> =
            days.into_iter().map(|d| (d.date, d)).collect();
        let mut summary = UsageSummary::default();
        for date in from.iter_days().take_while(|d| *d <= to) {
            let day = by_date.remove(&date).unwrap_or(DayUsage {
                date,
                ..Default::default()
            });
            for (category, n) in &day.by_category {
                *summary.by_category.entry(category.clone()).or_default() += n;
                summary.total += n;
            }
            for (name, v) in &day.metrics {
                *summary.metrics.entry(name.clone()).or_default() += v;
            }
            summary.daily.push(day);
        }
        summary
    }

    /// The sum of one metric (0 when absent).
    pub fn metric(&self, name: &str) -> f64 {
        self.metrics.get(name).copied().unwrap_or(0.0)
    }
}

/// Unit prices of one tier.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TierPrices {
    /// A flat fee per bill.
    pub base_fee: Decimal,
    pub per_compute_unit: Decimal,
    pub per_1k_tokens: Decimal,
    /// Per 10^9 bytes of `storage_bytes`.
    pub per_gb_storage: Decimal,
}

/// The pricing table: prices by tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pricing {
    pub currency: String,
    pub tiers: BTreeMap<String, TierPrices>,
}

impl Default for Pricing {
    fn default() -> Self {
        let price = |s: &str| s.parse::<Decimal>().unwrap_or_default();
        Self {
            currency: "USD".into(),
            tiers: BTreeMap::from([
                (
                    "basic".to_string(),
                    TierPrices {
                        base_fee: Decimal::ZERO,
                        per_compute_unit: price("0.001"),
                        per_1k_tokens: price("0.002"),
                        per_gb_storage: price("0.10"),
                    },
                ),
                (
                    "pro".to_string(),
                    TierPrices {
                        base_fee: price("49.00"),
                        per_compute_unit: price("0.0008"),
                        per_1k_tokens: price("0.0015"),
                        per_gb_storage: price("0.08"),
                    },
                ),
            ]),
        }
    }
}

/// A priced bill.
#[derive(Debug, Clone, PartialEq)]
pub struct Bill {
    pub tier: String,
    pub currency: String,
    pub requests: u64,
    pub by_category: BTreeMap<String, u64>,
    pub compute_units: f64,
    pub tokens: u64,
    pub storage_bytes: u64,
    pub base_fee: Decimal,
    pub compute_charges: Decimal,
    pub token_charges: Decimal,
    pub storage_charges: Decimal,
    pub total: Decimal,
}

/// Rounds to cents, half to even.
pub fn to_cents(amount: Decimal) -> Decimal {
    amount.round_dp_with_strategy(2, RoundingStrategy::MidpointNearestEven)
}

// A metric sum as an exact decimal: its shortest decimal representation.
fn decimal(quantity: f64) -> Decimal {
    Decimal::from_f64_retain(quantity)
        .map(|d| d.round_dp(9).normalize())
        .unwrap_or_default()
}

impl Pricing {
    /// The prices of `tier`, falling back to the default tier's.
    pub fn prices(&self, tier: &str) -> (&str, TierPrices) {
        match self.tiers.get_key_value(tier) {
            Some((name, p)) => (name.as_str(), p.clone()),
            None => (
                super::event::DEFAULT_TIER,
                self.tiers
                    .get(super::event::DEFAULT_TIER)
                    .cloned()
                    .unwrap_or_default(),
            ),
        }
    }

    /// Prices `summary` for a user of `tier`.
    pub fn bill(&self, tier: &str, summary: &UsageSummary) -> Bill {
        let (tier, prices) = self.prices(tier);
        let compute_units = summary.metric("compute_units");
        let tokens = summary.metric("tokens").round().max(0.0) as u64;
        let storage_bytes = summary.metric("storage_bytes").round().max(0.0) as u64;
        let base_fee = to_cents(prices.base_fee);
        let compute_charges = to_cents(decimal(compute_units) * prices.per_compute_unit);
        let token_charges =
            to_cents(Decimal::from(tokens) * prices.per_1k_tokens / Decimal::from(1_000));
        let storage_charges = to_cents(
            Decimal::from(storage_bytes) * prices.per_gb_storage / Decimal::from(1_000_000_000),
        );
        Bill {
            tier: tier.to_string(),
            currency: self.currency.clone(),
            requests: summary.total,
            by_category: summary.by_category.clone(),
            compute_units,
            tokens,
            storage_bytes,
            base_fee,
            compute_charges,
            token_charges,
            storage_charges,
            total: base_fee + compute_charges + token_charges + storage_charges,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap_or_default()
    }

    #[test]
    fn cents_round_half_to_even() {
        assert_eq!(to_cents(d("0.125")), d("0.12"));
        assert_eq!(to_cents(d("0.135")), d("0.14"));
        assert_eq!(to_cents(d("0.1251")), d("0.13"));
        assert_eq!(to_cents(d("-0.125")), d("-0.12"));
    }

    #[test]
    fn summary_fills_every_day_and_sums() {
        let from = NaiveDate::from_ymd_opt(2026, 2, 27).unwrap_or_default();
        let to = NaiveDate::from_ymd_opt(2026, 3, 2).unwrap_or_default();
        let mut day = DayUsage {
            date: NaiveDate::from_ymd_opt(2026, 3, 1).unwrap_or_default(),
            ..Default::default()
        };
        day.by_category.insert("ai".into(), 3);
        day.metrics.insert("tokens".into(), 1500.0);
        let s = UsageSummary::new(vec![day], from, to);
        assert_eq!(s.daily.len(), 4, "27, 28 Feb, 1, 2 Mar");
        assert_eq!(
            s.daily.iter().map(|d| d.total()).collect::<Vec<_>>(),
            vec![0, 0, 3, 0]
        );
        assert_eq!(s.total, 3);
        assert_eq!(s.metric("tokens"), 1500.0);
    }

    #[test]
    fn a_bill_is_exact_and_its_lines_add_up() {
        let mut pricing = Pricing::default();
        pricing.tiers.insert(
            "t".into(),
            TierPrices {
                base_fee: d("10.00"),
                per_compute_unit: d("0.015"),
                per_1k_tokens: d("0.002"),
                per_gb_storage: d("0.10"),
            },
        );
        let mut summary = UsageSummary::default();
        summary.metrics.insert("compute_units".into(), 12.5);
        summary.metrics.insert("tokens".into(), 1_234_567.0);
        summary
            .metrics
            .insert("storage_bytes".into(), 2_500_000_000.0);
        let bill = pricing.bill("t", &summary);
        // 12.5 × 0.015 = 0.1875 → 0.19; 1234.567 × 0.002 = 2.469134 → 2.47;
        // 2.5 × 0.10 = 0.25.
        assert_eq!(bill.compute_charges, d("0.19"));
        assert_eq!(bill.token_charges, d("2.47"));
        assert_eq!(bill.storage_charges, d("0.25"));
        assert_eq!(bill.total, d("12.91"));
        assert_eq!(pricing.bill("unknown", &summary).tier, "basic");
    }
}
