//! Admission and limits: how many connections the server and each client address may hold,
//! the refusals (`503`, `429`) of the rest, and the socket options every connection gets.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::Config;
use crate::error::refusal;
use crate::hand_off::builder;
use http::{Request, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// Connections turned away beyond this many at once are closed without an answer: answering
/// costs a task and a timer, and a flood must not turn that into unbounded work.
pub(crate) const MAX_REFUSING: usize = 1024;

/// The counters of a [`Server`], read through [`ServerStatsHandle::get`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerStats {
    /// Connections open now.
    pub open: usize,
    /// Connections accepted and served since the start.
    pub accepted: u64,
    /// Connections refused with 503 because `max_connections` were open.
    pub refused_capacity: u64,
    /// Connections refused with 429 because their address had `max_connections_per_ip` open.
    pub refused_per_ip: u64,
    /// Connections closed unanswered because too many refusals were in progress.
    pub dropped: u64,
    /// Requests answered 431 because their head was over `max_header_bytes`.
    pub header_too_large: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) open: AtomicUsize,
    pub(crate) refusing: AtomicUsize,
    pub(crate) accepted: AtomicU64,
    pub(crate) refused_capacity: AtomicU64,
    pub(crate) refused_per_ip: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) header_too_large: AtomicU64,
    pub(crate) per_ip: Mutex<HashMap<IpAddr, usize>>,
    pub(crate) closed: Notify,
    /// Every open connection's task, to abort when the grace period is over (`None` until its
    /// task is spawned); an entry goes with its connection.
    pub(crate) tasks: Mutex<HashMap<u64, Option<tokio::task::AbortHandle>>>,
    pub(crate) next_id: AtomicU64,
}

/// Reads a [`Server`]'s counters while it runs (for metrics). Cheap to clone.
#[derive(Debug, Clone)]
pub struct ServerStatsHandle(pub(crate) Arc<Counters>);

impl ServerStatsHandle {
    /// The counters now.
    pub fn get(&self) -> ServerStats {
        let c = &self.0;
        ServerStats {
            open: c.open.load(Ordering::Relaxed),
            accepted: c.accepted.load(Ordering::Relaxed),
            refused_capacity: c.refused_capacity.load(Ordering::Relaxed),
            refused_per_ip: c.refused_per_ip.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            header_too_large: c.header_too_large.load(Ordering::Relaxed),
        }
    }
}
/// One admitted connection: counted until dropped.
pub(crate) struct Admitted {
    pub(crate) stats: Arc<Counters>,
    pub(crate) ip: IpAddr,
    /// Its entry in [`Counters::tasks`].
    pub(crate) id: u64,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut per_ip = self.stats.per_ip.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
        drop(per_ip);
        self.stats.tasks.lock().unwrap_or_else(PoisonError::into_inner).remove(&self.id);
        metrics::gauge!("tidings_http_connections").decrement(1.0);
        if self.stats.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.stats.closed.notify_waiters();
        }
    }
}

pub(crate) fn admit(stats: &Arc<Counters>, config: &Config, ip: IpAddr) -> Result<Admitted, StatusCode> {
    let mut per_ip = stats.per_ip.lock().unwrap_or_else(PoisonError::into_inner);
    if stats.open.load(Ordering::Acquire) >= config.max_connections {
        return Err(StatusCode::SERVICE_UNAVAILABLE);
    }
    let n = per_ip.entry(ip).or_insert(0);
    if *n >= config.max_connections_per_ip {
        if *n == 0 {
            per_ip.remove(&ip);
        }
        return Err(StatusCode::TOO_MANY_REQUESTS);
    }
    *n += 1;
    stats.open.fetch_add(1, Ordering::AcqRel);
    drop(per_ip);
    let id = stats.next_id.fetch_add(1, Ordering::Relaxed);
    stats.tasks.lock().unwrap_or_else(PoisonError::into_inner).insert(id, None);
    metrics::gauge!("tidings_http_connections").increment(1.0);
    Ok(Admitted { stats: stats.clone(), ip, id })
}

/// The address connections are counted under: IPv4 (also when mapped into IPv6) as it is,
/// IPv6 by its /64 network.
pub(crate) fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}
/// Answers every request on `stream` with the refusal `status`, then closes it.
pub(crate) fn refuse(stream: TcpStream, status: StatusCode, stats: &Arc<Counters>, config: &Config) {
    let counter = if status == StatusCode::TOO_MANY_REQUESTS { &stats.refused_per_ip } else { &stats.refused_capacity };
    counter.fetch_add(1, Ordering::Relaxed);
    let reason = if status == StatusCode::TOO_MANY_REQUESTS { "per_ip" } else { "capacity" };
    metrics::counter!("tidings_http_refused_connections_total", "reason" => reason).increment(1);
    if stats.refusing.fetch_add(1, Ordering::AcqRel) >= MAX_REFUSING {
        stats.refusing.fetch_sub(1, Ordering::AcqRel);
        stats.dropped.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("tidings_http_refused_connections_total", "reason" => "dropped").increment(1);
        return; // `stream` is dropped: closed unanswered.
    }
    let message = if status == StatusCode::TOO_MANY_REQUESTS {
        format!("too many connections from your address (the limit is {})", config.max_connections_per_ip)
    } else {
        format!("the server is at its connection limit ({}); try again later", config.max_connections)
    };
    let retry_after = config.retry_after;
    let mut builder = builder(config);
    builder.keep_alive(false).header_read_timeout(config.header_timeout.min(Duration::from_secs(5)));
    let stats = stats.clone();
    tokio::spawn(async move {
        let service = service_fn(move |_request: Request<Incoming>| {
            let answer = refusal(status, &message, Some(retry_after));
            async move { Ok::<_, Infallible>(answer) }
        });
        let _ = builder.serve_connection(TokioIo::new(stream), service).await;
        stats.refusing.fetch_sub(1, Ordering::AcqRel);
    });
}

pub(crate) fn default_max_connections() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|limits| {
            let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
            line.split_whitespace().nth(3)?.parse::<usize>().ok()
        })
        .map_or(10_000, |files| files - files / 10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_key(a), client_key(b));
        assert_ne!(client_key(a), client_key(c));
        let mapped: IpAddr = "::ffff:10.0.0.7".parse().unwrap();
        assert_eq!(client_key(mapped), "10.0.0.7".parse::<IpAddr>().unwrap());
    }
}
