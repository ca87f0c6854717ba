//! Metric names and statistics, as CloudWatch spells them for API Gateway.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// A per-variant metric the gateway records for every request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Metric {
    Count,
    #[serde(rename = "4XXError")]
    Error4xx,
    #[serde(rename = "5XXError")]
    Error5xx,
    Latency,
    IntegrationLatency,
    CacheHitCount,
    CacheMissCount,
}

impl Metric {
    pub fn parse(field: &str, s: &str) -> Result<Metric> {
        Ok(match s {
            "Count" => Metric::Count,
            "4XXError" => Metric::Error4xx,
            "5XXError" => Metric::Error5xx,
            "Latency" => Metric::Latency,
            "IntegrationLatency" => Metric::IntegrationLatency,
            "CacheHitCount" => Metric::CacheHitCount,
            "CacheMissCount" => Metric::CacheMissCount,
            _ => {
                return Err(Error::invalid(
                    field,
                    s,
                    "must be Count, 4XXError, 5XXError, Latency, IntegrationLatency, CacheHitCount or CacheMissCount",
                ))
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Metric::Count => "Count",
            Metric::Error4xx => "4XXError",
            Metric::Error5xx => "5XXError",
            Metric::Latency => "Latency",
            Metric::IntegrationLatency => "IntegrationLatency",
            Metric::CacheHitCount => "CacheHitCount",
            Metric::CacheMissCount => "CacheMissCount",
        }
    }

    /// CloudWatch's unit name for the metric.
    pub fn unit(self) -> &'static str {
        match self {
            Metric::Latency | Metric::IntegrationLatency => "Milliseconds",
            _ => "Count",
        }
    }
}

/// How the samples of one period are reduced to a datapoint. Written as CloudWatch does: `Sum`,
/// `Average`, `SampleCount`, `Minimum`, `Maximum`, `p99`, `p99.9`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Statistic {
    Sum,
    Average,
    SampleCount,
    Minimum,
    Maximum,
    /// `pNN`: the percentile (0 < NN < 100, e.g. p50, p99, p99.9).
    Percentile(f64),
}

impl Statistic {
    pub fn parse(field: &str, s: &str) -> Result<Statistic> {
        Ok(match s {
            "Sum" => Statistic::Sum,
            "Average" => Statistic::Average,
            "SampleCount" => Statistic::SampleCount,
            "Minimum" => Statistic::Minimum,
            "Maximum" => Statistic::Maximum,
            _ => {
                let p = s
                    .strip_prefix('p')
                    .and_then(|n| n.parse::<f64>().ok())
                    .filter(|p| *p > 0.0 && *p < 100.0);
                Statistic::Percentile(p.ok_or_else(|| {
                    Error::invalid(
                        field,
                        s,
                        "must be Sum, Average, SampleCount, Minimum, Maximum or pNN with 0 < NN < 100",
                    )
                })?)
            }
        })
    }
}

impl std::fmt::Display for Statistic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Statistic::Sum => f.write_str("Sum"),
            Statistic::Average => f.write_str("Average"),
            Statistic::SampleCount => f.write_str("SampleCount"),
            Statistic::Minimum => f.write_str("Minimum"),
            Statistic::Maximum => f.write_str("Maximum"),
            Statistic::Percentile(p) => write!(f, "p{p}"),
        }
    }
}

impl Serialize for Statistic {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Statistic {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Statistic::parse("statistic", &s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_statistics_and_metrics() {
        assert_eq!(Statistic::parse("s", "p99.9").unwrap(), Statistic::Percentile(99.9));
        assert_eq!(Statistic::parse("s", "p99.9").unwrap().to_string(), "p99.9");
        assert!(Statistic::parse("statistic", "p100").unwrap_err().to_string().contains("statistic"));
        assert!(Statistic::parse("s", "Median").is_err());
        assert_eq!(Metric::parse("m", "5XXError").unwrap(), Metric::Error5xx);
        assert!(Metric::parse("metric", "Errors").unwrap_err().to_string().contains("\"Errors\""));
    }
}
