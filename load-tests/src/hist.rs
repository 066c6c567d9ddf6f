//! Latency histograms (microseconds) with percentiles, merging and a portable encoding
//! (HdrHistogram V2, base64) so worker processes can hand theirs to the parent.

use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use serde::{Deserialize, Serialize};

/// Highest value recorded, µs (60 s); larger values are clamped to it.
const MAX_US: u64 = 60_000_000;

/// A latency histogram in microseconds.
#[derive(Clone, Debug)]
pub struct Lat(Histogram<u64>);

impl Default for Lat {
    fn default() -> Self {
        Lat(Histogram::new_with_bounds(1, MAX_US, 3).expect("valid histogram bounds"))
    }
}

/// Percentiles of one histogram, in milliseconds.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl Lat {
    /// Records one latency given in nanoseconds (clamped to 1 µs ..= 60 s).
    pub fn record_ns(&mut self, ns: u64) {
        let us = (ns / 1000).clamp(1, MAX_US);
        self.0.saturating_record(us);
    }

    pub fn count(&self) -> u64 {
        self.0.len()
    }

    pub fn merge(&mut self, other: &Lat) {
        self.0
            .add(&other.0)
            .expect("histograms with equal bounds merge");
    }

    pub fn summary(&self) -> Summary {
        let h = &self.0;
        let ms = |v: u64| v as f64 / 1000.0;
        if h.is_empty() {
            return Summary::default();
        }
        Summary {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
            mean_ms: h.mean() / 1000.0,
        }
    }

    /// HdrHistogram V2 bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        V2Serializer::new()
            .serialize(&self.0, &mut out)
            .expect("serializing into a Vec cannot fail");
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> anyhow::Result<Lat> {
        let h: Histogram<u64> = Deserializer::new()
            .deserialize(&mut &bytes[..])
            .map_err(|e| anyhow::anyhow!("bad histogram: {e:?}"))?;
        let mut lat = Lat::default();
        lat.0
            .add(&h)
            .map_err(|e| anyhow::anyhow!("bad histogram: {e:?}"))?;
        Ok(lat)
    }
}

impl Serialize for Lat {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex(&self.to_bytes()))
    }
}

impl<'de> Deserialize<'de> for Lat {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Lat, D::Error> {
        let s = String::deserialize(d)?;
        let bytes = unhex(&s).ok_or_else(|| serde::de::Error::custom("bad hex"))?;
        Lat::from_bytes(&bytes).map_err(serde::de::Error::custom)
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_merge_and_round_trip() {
        let mut a = Lat::default();
        for i in 1..=1000u64 {
            a.record_ns(i * 1_000_000); // 1..1000 ms
        }
        let mut b = Lat::default();
        b.record_ns(5_000_000_000);
        let decoded: Lat = serde_json::from_str(&serde_json::to_string(&b).unwrap()).unwrap();
        a.merge(&decoded);
        let s = a.summary();
        assert_eq!(s.count, 1001);
        assert!((s.p50_ms - 500.0).abs() < 2.5, "{s:?}");
        assert!((s.p99_ms - 990.0).abs() < 5.0, "{s:?}");
        assert!((s.max_ms - 5000.0).abs() < 25.0, "{s:?}");
    }
}
