//! CPU and memory of the instances an actuator runs, per instance, as 1 s series: the
//! local actuator samples each ready instance's process from `/proc` (CPU time from
//! `stat`, resident memory from `statm`), which works with or without cgroups. Kept for
//! `KEPT` samples; `GET /v1/services/{name}/usage` shows each instance's series with a
//! forecast (the same engine as request rates). Actuators that cannot see their
//! instances' processes (Kubernetes without a metrics API) report none.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Instant;

use serde::Serialize;

/// Samples kept per instance: an hour at one a second.
pub const KEPT: usize = 3600;
/// How often the local actuator samples.
pub const EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// One reading of a process.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    /// CPU time used so far (user + system), seconds.
    pub cpu_seconds: f64,
    pub rss_bytes: u64,
}

/// Reads process `pid` from `/proc` (None: it is gone, or this is not Linux).
pub fn read(pid: u32) -> Option<Reading> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    parse(&stat, &statm, ticks_per_second(), page_size())
}

fn ticks_per_second() -> u64 {
    rustix::param::clock_ticks_per_second()
}

fn page_size() -> u64 {
    rustix::param::page_size() as u64
}

/// `stat`: after the command name in parentheses (which may hold spaces), fields 3.. of
/// proc(5); utime and stime are the 14th and 15th, in clock ticks. `statm`: the second
/// field is resident pages.
fn parse(stat: &str, statm: &str, ticks: u64, page: u64) -> Option<Reading> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, index 11.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let resident: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(Reading {
        cpu_seconds: (utime + stime) as f64 / ticks.max(1) as f64,
        rss_bytes: resident * page,
    })
}

/// One instance's series.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct InstanceSeries {
    pub instance: String,
    /// host:port.
    pub endpoint: String,
    /// Unix ms of the last sample.
    pub last_unix_ms: i64,
    /// CPU cores used over each second, oldest first.
    pub cpu_cores: Vec<f64>,
    /// Resident memory, bytes, oldest first.
    pub memory_bytes: Vec<f64>,
}

#[derive(Debug)]
struct Track {
    endpoint: String,
    last: Option<(Instant, f64)>,
    last_unix_ms: i64,
    cpu: VecDeque<f64>,
    memory: VecDeque<f64>,
}

/// Every instance's series, by instance id.
#[derive(Debug, Default)]
pub struct Usage {
    tracks: Mutex<BTreeMap<String, Track>>,
}

impl Usage {
    /// Adds a reading of `instance`; CPU is the rate since its previous reading.
    pub fn record(&self, instance: &str, endpoint: &str, r: Reading, at: Instant, unix_ms: i64) {
        let mut tracks = self.tracks.lock().expect("usage lock poisoned");
        let t = tracks.entry(instance.to_string()).or_insert_with(|| Track {
            endpoint: endpoint.to_string(),
            last: None,
            last_unix_ms: 0,
            cpu: VecDeque::new(),
            memory: VecDeque::new(),
        });
        if let Some((then, cpu)) = t.last {
            let secs = at.saturating_duration_since(then).as_secs_f64();
            if secs > 0.0 {
                push(&mut t.cpu, ((r.cpu_seconds - cpu) / secs).max(0.0));
                push(&mut t.memory, r.rss_bytes as f64);
            }
        }
        t.last = Some((at, r.cpu_seconds));
        t.last_unix_ms = unix_ms;
    }

    /// The instance is gone.
    pub fn forget(&self, instance: &str) {
        self.tracks
            .lock()
            .expect("usage lock poisoned")
            .remove(instance);
    }

    pub fn series(&self) -> Vec<InstanceSeries> {
        let tracks = self.tracks.lock().expect("usage lock poisoned");
        tracks
            .iter()
            .map(|(id, t)| InstanceSeries {
                instance: id.clone(),
                endpoint: t.endpoint.clone(),
                last_unix_ms: t.last_unix_ms,
                cpu_cores: t.cpu.iter().copied().collect(),
                memory_bytes: t.memory.iter().copied().collect(),
            })
            .collect()
    }
}

/// An instance's usage now and a forecast of it (`GET /v1/services/{name}/usage`).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct InstanceUsage {
    pub instance: String,
    pub endpoint: String,
    pub last_unix_ms: i64,
    /// Samples held (one a second, up to an hour).
    pub samples: usize,
    /// The last second's CPU, cores.
    pub cpu_cores: f64,
    /// The last sample's resident memory, bytes.
    pub memory_bytes: f64,
    /// Means over the last minute.
    pub cpu_cores_1m: f64,
    pub memory_bytes_1m: f64,
    pub cpu_forecast: Option<UsageForecast>,
    pub memory_forecast: Option<UsageForecast>,
    /// Why there is no forecast (too few samples), if so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forecast_unavailable: Option<String>,
}

/// The forecast `horizon_s` seconds ahead: the point and its 95% interval.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct UsageForecast {
    pub horizon_s: usize,
    pub model: String,
    pub point: f64,
    pub lo95: f64,
    pub hi95: f64,
}

/// Samples a forecast is fitted on: the last ten minutes.
const FIT_ON: usize = 600;

impl InstanceSeries {
    /// Its state now, and forecasts `horizon_s` ahead (the request-rate engine, fitted on
    /// the last ten minutes).
    pub fn summary(&self, horizon_s: usize) -> InstanceUsage {
        let tail_mean = |v: &[f64]| {
            let t = &v[v.len().saturating_sub(60)..];
            t.iter().sum::<f64>() / t.len().max(1) as f64
        };
        let mut why = None;
        let mut ahead = |v: &[f64]| {
            let y = &v[v.len().saturating_sub(FIT_ON)..];
            match crate::forecast::forecast(y, horizon_s, &[], &[95.0]) {
                Ok(f) => {
                    let last = horizon_s - 1;
                    let (_, lo, hi) = &f.intervals[0];
                    Some(UsageForecast {
                        horizon_s,
                        model: f.model,
                        point: f.point[last].max(0.0),
                        lo95: lo[last].max(0.0),
                        hi95: hi[last].max(0.0),
                    })
                }
                Err(e) => {
                    why = Some(e.to_string());
                    None
                }
            }
        };
        let cpu_forecast = ahead(&self.cpu_cores);
        let memory_forecast = ahead(&self.memory_bytes);
        InstanceUsage {
            instance: self.instance.clone(),
            endpoint: self.endpoint.clone(),
            last_unix_ms: self.last_unix_ms,
            samples: self.cpu_cores.len(),
            cpu_cores: self.cpu_cores.last().copied().unwrap_or(0.0),
            memory_bytes: self.memory_bytes.last().copied().unwrap_or(0.0),
            cpu_cores_1m: tail_mean(&self.cpu_cores),
            memory_bytes_1m: tail_mean(&self.memory_bytes),
            cpu_forecast,
            memory_forecast,
            forecast_unavailable: why,
        }
    }
}

fn push(q: &mut VecDeque<f64>, v: f64) {
    if q.len() == KEPT {
        q.pop_front();
    }
    q.push_back(v);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_fields_are_read_past_a_command_name_with_spaces() {
        let stat = "4242 (my (odd) app) S 1 4242 4242 0 -1 4194560 500 0 0 0 250 50 0 0 20 0 1 0 100 1000000 300 18446744073709551615";
        let r = parse(stat, "2500 300 100 1 0 200 0", 100, 4096).unwrap();
        assert_eq!(r.cpu_seconds, 3.0, "(250 + 50) ticks at 100 a second");
        assert_eq!(r.rss_bytes, 300 * 4096);
        assert!(parse("garbage", "1 2", 100, 4096).is_none());
    }

    #[test]
    fn cpu_is_the_rate_between_readings_and_series_are_bounded() {
        let u = Usage::default();
        let t0 = Instant::now();
        let r = |cpu: f64| Reading {
            cpu_seconds: cpu,
            rss_bytes: 1 << 20,
        };
        u.record("a", "127.0.0.1:1", r(1.0), t0, 0);
        u.record("a", "127.0.0.1:1", r(1.5), t0 + EVERY, 1000);
        let s = &u.series()[0];
        assert_eq!(s.cpu_cores, [0.5]);
        assert_eq!(s.memory_bytes, [1048576.0]);
        for i in 2..(KEPT as u32 + 10) {
            u.record("a", "127.0.0.1:1", r(1.5), t0 + EVERY * i, 0);
        }
        assert_eq!(u.series()[0].cpu_cores.len(), KEPT);
        u.forget("a");
        assert!(u.series().is_empty());
    }

    #[test]
    fn a_summary_holds_the_latest_the_last_minute_and_a_forecast_with_its_interval() {
        // Synthetic: this checks the summary's plumbing (the engine's accuracy is tested on
        // the real traces in forecast::tests). Ten minutes of busy-then-idle CPU (30 s
        // periods) and a slow memory leak.
        let cpu: Vec<f64> = (0..600)
            .map(|i| if (i / 30) % 2 == 0 { 0.8 } else { 0.1 })
            .collect();
        let memory: Vec<f64> = (0..600).map(|i| 50e6 + 1e4 * i as f64).collect();
        let s = InstanceSeries {
            instance: "api-0".into(),
            endpoint: "127.0.0.1:1".into(),
            last_unix_ms: 1,
            cpu_cores: cpu,
            memory_bytes: memory,
        };
        let u = s.summary(10);
        assert_eq!(u.samples, 600);
        assert_eq!(u.cpu_cores, 0.1);
        assert!((u.cpu_cores_1m - 0.45).abs() < 1e-9, "{}", u.cpu_cores_1m);
        let m = u.memory_forecast.expect("a memory forecast");
        assert!(m.lo95 <= m.point && m.point <= m.hi95, "{m:?}");
        assert!(m.point > 55.9e6, "the leak goes on: {m:?}");
        assert!(u.cpu_forecast.is_some());
        // Too short to fit: said so.
        let short = InstanceSeries {
            cpu_cores: vec![0.1; 3],
            memory_bytes: vec![1.0; 3],
            ..s
        };
        let u = short.summary(60);
        assert!(u.cpu_forecast.is_none());
        assert!(u.forecast_unavailable.unwrap().contains("points"));
    }

    #[test]
    fn this_process_can_be_read() {
        let r = read(std::process::id()).expect("/proc of this process");
        assert!(r.rss_bytes > 0);
    }
}
