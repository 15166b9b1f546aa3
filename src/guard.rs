//! What one client address may do: the rules that count per address, and
//! the bounded tables they count in.
//!
//! * **Which address a client counts as** ([`Grouping::key`]): IPv4
//!   addresses (and IPv4-mapped IPv6 ones) exactly; IPv6 ones by their
//!   first `--ipv6-prefix` bits (64 by default), since one IPv6 host is
//!   given a whole /64 to pick addresses from and would otherwise walk past
//!   every per-address limit. `--max-connections-per-ip` counts by the same
//!   key ([`crate::stats`]), and so do the two rules below.
//! * **Connection rate** ([`ConnectionRate`], `--max-connection-rate-per-ip
//!   N`): an address that has opened N connections within the last second
//!   (refused ones count too) is turned away, `ERR connecting too fast`.
//! * **Guessing the token** ([`AuthFailures`], `--max-auth-failures-per-ip
//!   N`): after N failed `AUTH`s within 60 s, the address's `AUTH`s and new
//!   connections are refused until 60 s pass since its last failure.
//!
//! Both rules remember only recent addresses, in a [`Recent`] table of two
//! generations of at most [`RECENT_ADDRESSES`] each: its memory is bounded
//! whatever the number of addresses that come and go (about 2.3 MiB per
//! table at the worst, measured by `a_recent_table_stays_within_its_bound`
//! and `tests/guards.rs`). Both are process-wide, each behind a mutex of
//! its own, taken when its rule is on and not at all when it is off: the
//! rate's once per new connection; the failures' once per failed `AUTH`,
//! and once per new connection and per `AUTH` only while some address is
//! refused (an atomic says when the last refusal ends).
//!
//! Counting is by buckets, not timestamps (a timestamp per connection would
//! cost memory per connection): a connection counts for the rate until 1.0
//! to 1.05 s after it was made ([`RATE_TICK`]), a failure for the failure
//! count until 60 to 65 s after it ([`FAILURE_TICK`]); the period a
//! refused address waits is exact.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::fmt;
use std::mem;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use log::warn;

/// How IPv6 clients are grouped (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grouping {
    /// `--ipv6-prefix`: 1 to 128.
    ipv6_prefix: u8,
}

impl Default for Grouping {
    /// IPv6 clients grouped by /64, the option's default.
    fn default() -> Grouping {
        Grouping { ipv6_prefix: 64 }
    }
}

impl Grouping {
    /// IPv6 clients grouped by their first `ipv6_prefix` bits (clamped to
    /// 1..=128: the option's range).
    pub fn new(ipv6_prefix: u8) -> Grouping {
        Grouping {
            ipv6_prefix: ipv6_prefix.clamp(1, 128),
        }
    }

    /// The address `ip` counts as: itself for IPv4 (IPv4-mapped IPv6 too,
    /// as its IPv4 address), its prefix for IPv6 (the rest zeroed).
    pub fn key(self, ip: IpAddr) -> IpAddr {
        match ip.to_canonical() {
            IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(mask128(u128::from(v6), self.ipv6_prefix))),
            v4 => v4,
        }
    }
}

/// A range of addresses, as `--proxy-from` takes it: `10.0.0.0/8`,
/// `2001:db8::/32`, or one address (`192.0.2.7`, a /32; `::1`, a /128).
/// An IPv4-mapped IPv6 peer is matched as its IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The first address of the range (the bits past the prefix are zero).
    base: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` is in the range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.base, ip.to_canonical()) {
            (IpAddr::V4(base), IpAddr::V4(ip)) => {
                mask32(u32::from(ip), self.prefix) == u32::from(base)
            }
            (IpAddr::V6(base), IpAddr::V6(ip)) => {
                mask128(u128::from(ip), self.prefix) == u128::from(base)
            }
            _ => false,
        }
    }

    /// Whether every address of the range is a loopback one.
    pub fn is_loopback(&self) -> bool {
        match self.base {
            IpAddr::V4(base) => base.is_loopback() && self.prefix >= 8,
            IpAddr::V6(base) => base.is_loopback() && self.prefix == 128,
        }
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;

    /// `ADDRESS/BITS` or `ADDRESS`; the bits past the prefix must be zero
    /// (`10.0.0.1/8` is refused: it names one address or the range?).
    fn from_str(text: &str) -> Result<Cidr, String> {
        let (address, bits) = match text.split_once('/') {
            Some((address, bits)) => (address, Some(bits)),
            None => (text, None),
        };
        let base: IpAddr = address.parse().map_err(|_| {
            format!("{text:?} is not an address range (examples: 10.0.0.0/8, 192.0.2.7, 2001:db8::/32, ::1)")
        })?;
        let base = base.to_canonical();
        let width = if base.is_ipv4() { 32 } else { 128 };
        let prefix = match bits {
            None => width,
            Some(bits) => match bits.parse::<u8>() {
                Ok(bits) if bits <= width => bits,
                _ => return Err(format!("{text:?}: the prefix length must be 0 to {width}")),
            },
        };
        let masked = match base {
            IpAddr::V4(v4) => IpAddr::from(mask32(u32::from(v4), prefix).to_be_bytes()),
            IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(mask128(u128::from(v6), prefix))),
        };
        if masked != base {
            return Err(format!(
                "{text:?} has bits set past its prefix: the range is {masked}/{prefix}"
            ));
        }
        Ok(Cidr { base, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

fn mask32(ip: u32, prefix: u8) -> u32 {
    match prefix {
        0 => 0,
        p => ip & (u32::MAX << (32 - u32::from(p.min(32)))),
    }
}

fn mask128(ip: u128, prefix: u8) -> u128 {
    match prefix {
        0 => 0,
        p => ip & (u128::MAX << (128 - u32::from(p.min(128)))),
    }
}

/// How many addresses one generation of a [`Recent`] table holds at most.
pub const RECENT_ADDRESSES: usize = 8192;

/// A map from address to what a rule counts for it, that remembers an
/// address for at least `memory` after it was last touched, and never more
/// than `2 * cap` addresses.
///
/// Two generations: `current` holds the addresses touched since `since`,
/// `previous` those touched in the generation before. Every `memory` the
/// generations turn over: `previous` is dropped (nothing in it was touched
/// for `memory`), `current` becomes `previous`. An address touched again
/// moves to `current`. When `current` reaches `cap` (more than `cap` new
/// addresses within `memory`: a flood from many addresses), it turns over
/// early, and what `previous` held is forgotten before its time: the price
/// of the bound, paid only during such a flood.
#[derive(Debug)]
pub struct Recent<V> {
    current: HashMap<IpAddr, V>,
    previous: HashMap<IpAddr, V>,
    since: Instant,
    memory: Duration,
    cap: usize,
}

impl<V: Default> Recent<V> {
    /// An empty table; the first generation starts at `now`.
    pub fn new(memory: Duration, cap: usize, now: Instant) -> Recent<V> {
        Recent {
            current: HashMap::new(),
            previous: HashMap::new(),
            since: now,
            memory,
            cap: cap.max(1),
        }
    }

    /// What `key` has counted so far (a default one if it was forgotten),
    /// to update: the address is touched.
    pub fn touch(&mut self, key: IpAddr, now: Instant) -> &mut V {
        self.turn_over_if_due(now);
        if self.current.len() >= self.cap && !self.current.contains_key(&key) {
            self.turn_over(now);
        }
        match self.current.entry(key) {
            Entry::Occupied(entry) => entry.into_mut(),
            // New to this generation: what the last one counted moves here.
            Entry::Vacant(entry) => entry.insert(self.previous.remove(&key).unwrap_or_default()),
        }
    }

    /// What `key` has counted, if it is remembered; not a touch.
    pub fn get(&mut self, key: IpAddr, now: Instant) -> Option<&mut V> {
        self.turn_over_if_due(now);
        match self.current.get_mut(&key) {
            Some(counted) => Some(counted),
            None => self.previous.get_mut(&key),
        }
    }

    /// Addresses remembered now (both generations).
    pub fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }

    /// Whether no address is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entries the two generations have room for: the memory they hold.
    pub fn capacity(&self) -> usize {
        self.current.capacity() + self.previous.capacity()
    }

    fn turn_over_if_due(&mut self, now: Instant) {
        let age = now.saturating_duration_since(self.since);
        if age >= self.memory * 2 {
            // Nothing in either generation was touched for `memory`.
            self.previous = HashMap::new();
            self.current = HashMap::new();
            self.since = now;
        } else if age >= self.memory {
            self.turn_over(now);
        }
    }

    fn turn_over(&mut self, now: Instant) {
        // The new generation starts empty, and grows only as addresses come.
        self.previous = mem::take(&mut self.current);
        self.since = now;
    }
}

/// Counts of events in the last `B - 1` to `B` ticks: one bucket per tick,
/// the current one included. 2 bytes per bucket, whatever the rate.
#[derive(Debug, Clone, Copy)]
struct Window<const B: usize> {
    /// The tick of the newest bucket.
    last: u32,
    counts: [u16; B],
}

impl<const B: usize> Default for Window<B> {
    fn default() -> Window<B> {
        Window {
            last: 0,
            counts: [0; B],
        }
    }
}

impl<const B: usize> Window<B> {
    /// Empties the buckets of the ticks that passed since the newest one.
    fn advance(&mut self, tick: u32) {
        // Each loop stamps events with the time its turn began, so an event
        // may come a little after a newer one from another loop: it is
        // counted in its own bucket, already in the window, and nothing
        // is emptied.
        if tick <= self.last {
            return;
        }
        if (tick - self.last) as usize >= B {
            self.counts = [0; B];
        } else {
            for t in self.last + 1..=tick {
                self.counts[t as usize % B] = 0;
            }
        }
        self.last = tick;
    }

    /// One more event at `tick`.
    fn add(&mut self, tick: u32) {
        self.advance(tick);
        let count = &mut self.counts[tick as usize % B];
        *count = count.saturating_add(1);
    }

    /// Events in the window that ends at `tick`.
    fn total(&mut self, tick: u32) -> u32 {
        self.advance(tick);
        self.counts.iter().map(|&c| u32::from(c)).sum()
    }
}

/// The time a connection counts for the rate: one second.
pub const RATE_WINDOW: Duration = Duration::from_secs(1);
/// The rate's bucket: a connection stops counting between 1.0 and 1.05 s
/// after it was made.
pub const RATE_TICK: Duration = Duration::from_millis(50);
/// Buckets covering the window, and the current one.
const RATE_BUCKETS: usize = 21;

/// The time a failed `AUTH` counts, and that an address is refused after
/// its last failure: 60 s.
pub const FAILURE_PERIOD: Duration = Duration::from_secs(60);
/// The failure count's bucket: a failure stops counting between 60 and
/// 65 s after it.
pub const FAILURE_TICK: Duration = Duration::from_secs(5);
const FAILURE_BUCKETS: usize = 13;

/// The highest `--max-connection-rate-per-ip` and
/// `--max-auth-failures-per-ip`: what a bucket can count.
pub const MAX_PER_ADDRESS_COUNT: u64 = u16::MAX as u64;

/// `--max-connection-rate-per-ip`: connections per address per second.
#[derive(Debug)]
pub struct ConnectionRate {
    max: u32,
    epoch: Instant,
    table: Mutex<Recent<Window<RATE_BUCKETS>>>,
}

impl ConnectionRate {
    /// At most `max` connections per address within a second.
    pub fn new(max: u32, now: Instant) -> ConnectionRate {
        ConnectionRate {
            max,
            epoch: now,
            // Remembered for the whole window and its last bucket.
            table: Mutex::new(Recent::new(RATE_WINDOW + RATE_TICK, RECENT_ADDRESSES, now)),
        }
    }

    /// Counts a new connection from `key` (an address as grouped); returns
    /// whether `key` had opened `max` within the last second already.
    pub fn too_fast(&self, key: IpAddr, now: Instant) -> bool {
        let tick = ticks(now.saturating_duration_since(self.epoch), RATE_TICK);
        let mut table = lock(&self.table);
        let window = table.touch(key, now);
        let before = window.total(tick);
        window.add(tick);
        before >= self.max
    }

    /// Addresses remembered now, and the entries the table has room for.
    pub fn size(&self) -> (usize, usize) {
        let table = lock(&self.table);
        (table.len(), table.capacity())
    }
}

/// What [`AuthFailures`] knows of one address.
#[derive(Debug, Default, Clone, Copy)]
struct FailureRecord {
    failures: Window<FAILURE_BUCKETS>,
    /// Refused until then (milliseconds after `AuthFailures::epoch`).
    refused_until_ms: u64,
    /// Its refusal in this period was logged.
    warned: bool,
}

/// `--max-auth-failures-per-ip`: failed `AUTH`s per address per 60 s.
#[derive(Debug)]
pub struct AuthFailures {
    max: u32,
    epoch: Instant,
    /// When the latest refusal of any address ends (milliseconds after
    /// `epoch`): past it no address is refused, and [`AuthFailures::refuses`]
    /// answers without the lock, as on almost every accept (nobody is
    /// guessing).
    refusals_end_ms: AtomicU64,
    table: Mutex<Recent<FailureRecord>>,
}

impl AuthFailures {
    /// At most `max` failures per address within [`FAILURE_PERIOD`].
    pub fn new(max: u32, now: Instant) -> AuthFailures {
        AuthFailures {
            max,
            epoch: now,
            refusals_end_ms: AtomicU64::new(0),
            // Remembered while its failures count and while it is refused:
            // at most a period and a bucket after its last failure.
            table: Mutex::new(Recent::new(
                FAILURE_PERIOD + FAILURE_TICK,
                RECENT_ADDRESSES,
                now,
            )),
        }
    }

    /// A failed `AUTH` from `key`: when it makes `max` within the period,
    /// the address is refused until a period after it.
    pub fn failed(&self, key: IpAddr, now: Instant) {
        let since_epoch = now.saturating_duration_since(self.epoch);
        let mut table = lock(&self.table);
        let record = table.touch(key, now);
        let tick = ticks(since_epoch, FAILURE_TICK);
        record.failures.add(tick);
        if record.failures.total(tick) >= self.max {
            record.refused_until_ms = millis(since_epoch + FAILURE_PERIOD);
            record.warned = false;
            // Release: a loop that reads the new end (Acquire) also sees
            // the record behind the lock once it takes it.
            self.refusals_end_ms
                .fetch_max(record.refused_until_ms, Ordering::Release);
        }
    }

    /// Whether `key` is refused now. The first refusal of a period logs one
    /// warn line naming `client` (the address that asked), for fail2ban.
    /// A refusal does not extend the period.
    pub fn refuses(&self, key: IpAddr, client: IpAddr, now: Instant) -> bool {
        let now_ms = millis(now.saturating_duration_since(self.epoch));
        // Nobody is refused now: no lock. (A failure on another loop at
        // this very moment is then ordered after this check.)
        if now_ms >= self.refusals_end_ms.load(Ordering::Acquire) {
            return false;
        }
        let first_refusal = {
            let mut table = lock(&self.table);
            let Some(record) = table.get(key, now) else {
                return false;
            };
            if now_ms >= record.refused_until_ms {
                return false;
            }
            !mem::replace(&mut record.warned, true)
        };
        // Logged with the table unlocked: a log write can block (a full
        // pipe to the journal), and every loop takes this lock at accept.
        if first_refusal {
            warn!("auth: too many failures from {client}");
        }
        true
    }

    /// Addresses remembered now, and the entries the table has room for.
    pub fn size(&self) -> (usize, usize) {
        let table = lock(&self.table);
        (table.len(), table.capacity())
    }
}

/// The per-address rules of one process, shared by its loops.
#[derive(Debug, Default)]
pub struct Guards {
    /// How IPv6 clients are grouped (`--ipv6-prefix`), for every rule.
    pub grouping: Grouping,
    /// `--max-connection-rate-per-ip`, when on.
    pub rate: Option<ConnectionRate>,
    /// `--max-auth-failures-per-ip`, when on (and `--auth-file` given).
    pub auth: Option<AuthFailures>,
}

impl Guards {
    /// No rule on, IPv6 grouped by /64.
    pub const OFF: Guards = Guards {
        grouping: Grouping { ipv6_prefix: 64 },
        rate: None,
        auth: None,
    };
}

/// Why [`Guards::admits`] turns a client away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turned {
    /// It connects too fast.
    TooFast,
    /// Its address failed `AUTH` too often.
    AuthFailures,
}

impl Guards {
    /// A new connection from `client`: counted for its rate, then checked.
    /// `Ok` if the rules let it in.
    pub fn admits(&self, client: IpAddr, now: Instant) -> Result<(), Turned> {
        if self.rate.is_none() && self.auth.is_none() {
            return Ok(());
        }
        let key = self.grouping.key(client);
        if let Some(rate) = &self.rate {
            if rate.too_fast(key, now) {
                return Err(Turned::TooFast);
            }
        }
        match &self.auth {
            Some(auth) if auth.refuses(key, client, now) => Err(Turned::AuthFailures),
            _ => Ok(()),
        }
    }

    /// Whether an `AUTH` from `client` is refused now (its address failed
    /// too often).
    pub fn auth_refused(&self, client: IpAddr, now: Instant) -> bool {
        self.auth
            .as_ref()
            .is_some_and(|auth| auth.refuses(self.grouping.key(client), client, now))
    }

    /// `client` failed an `AUTH`.
    pub fn auth_failed(&self, client: IpAddr, now: Instant) {
        if let Some(auth) = &self.auth {
            auth.failed(self.grouping.key(client), now);
        }
    }
}

/// Whole ticks in `elapsed` (saturating: 2^32 ticks of 50 ms are 6.8 years).
fn ticks(elapsed: Duration, tick: Duration) -> u32 {
    u32::try_from(elapsed.as_nanos() / tick.as_nanos()).unwrap_or(u32::MAX)
}

fn millis(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
}

/// The tables hold counts only: one poisoned by a panic elsewhere is still
/// sound to use.
fn lock<T>(table: &Mutex<T>) -> MutexGuard<'_, T> {
    table
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an address")
    }

    #[test]
    fn ipv6_clients_count_by_prefix_and_ipv4_exactly() {
        let by64 = Grouping::default();
        assert_eq!(by64.key(ip("2001:db8:1:2:3:4:5:6")), ip("2001:db8:1:2::"));
        assert_eq!(by64.key(ip("2001:db8:1:2:ffff::1")), ip("2001:db8:1:2::"));
        assert_ne!(
            by64.key(ip("2001:db8:1:3::1")),
            by64.key(ip("2001:db8:1:2::1"))
        );
        assert_eq!(by64.key(ip("192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(by64.key(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        let exact = Grouping::new(128);
        assert_eq!(exact.key(ip("2001:db8::5")), ip("2001:db8::5"));
        assert_eq!(Grouping::new(1).key(ip("ffff::1")), ip("8000::"));
        assert_eq!(
            Grouping::new(48).key(ip("2001:db8:1:2::1")),
            ip("2001:db8:1::")
        );
    }

    #[test]
    fn ranges_parse_match_and_refuse_what_is_ambiguous() {
        let cidr = |text: &str| text.parse::<Cidr>();
        let lan = cidr("10.0.0.0/8").expect("a range");
        assert!(lan.contains(ip("10.200.1.1")));
        assert!(lan.contains(ip("::ffff:10.0.0.1")));
        assert!(!lan.contains(ip("11.0.0.1")));
        assert!(!lan.contains(ip("::1")));
        let one = cidr("192.0.2.7").expect("an address");
        assert_eq!(one.to_string(), "192.0.2.7/32");
        assert!(one.contains(ip("192.0.2.7")) && !one.contains(ip("192.0.2.8")));
        let v6 = cidr("2001:db8::/32").expect("a v6 range");
        assert!(v6.contains(ip("2001:db8:ffff::1")) && !v6.contains(ip("2001:db9::1")));
        assert!(cidr("0.0.0.0/0")
            .expect("everything")
            .contains(ip("203.0.113.9")));
        assert!(cidr("::1").expect("loopback").is_loopback());
        assert!(cidr("127.0.0.0/8").expect("loopback").is_loopback());
        assert!(!cidr("0.0.0.0/0").expect("everything").is_loopback());
        for bad in [
            "10.0.0.1/8",
            "10.0.0.0/33",
            "::/129",
            "nonsense",
            "10.0.0.0/",
            "/8",
        ] {
            assert!(cidr(bad).is_err(), "{bad} parsed");
        }
        assert!(cidr("10.0.0.1/8").unwrap_err().contains("10.0.0.0/8"));
    }

    #[test]
    fn the_rate_counts_the_last_second_refusals_included() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let rate = ConnectionRate::new(3, t0);
        let a = ip("192.0.2.1");
        assert!(!rate.too_fast(a, at(0)));
        assert!(!rate.too_fast(a, at(100)));
        assert!(!rate.too_fast(a, at(900)));
        // Three within the last second: the fourth is too fast, and so is
        // every one after it while it keeps trying (refused ones count).
        assert!(rate.too_fast(a, at(950)));
        assert!(rate.too_fast(a, at(1040)));
        // Another address is not concerned.
        assert!(!rate.too_fast(ip("192.0.2.2"), at(1040)));
        // A second and a bucket after the last attempt, it may connect.
        assert!(!rate.too_fast(a, at(2100)));
    }

    #[test]
    fn a_connection_counts_for_at_least_a_second_and_at_most_a_bucket_more() {
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        // Wherever in its bucket the first connection falls.
        for phase in [0u64, 10, 49, 50, 999] {
            let rate = ConnectionRate::new(1, t0);
            let first = t0 + Duration::from_millis(phase);
            assert!(!rate.too_fast(a, first));
            let just_under = first + RATE_WINDOW - Duration::from_millis(1);
            assert!(rate.too_fast(a, just_under), "forgotten before a second");
            // `just_under` counted too; the window is clean a second and a
            // bucket after both.
            let past = just_under + RATE_WINDOW + RATE_TICK;
            assert!(
                !rate.too_fast(a, past),
                "remembered past a second and a bucket"
            );
        }
    }

    #[test]
    fn failures_refuse_an_address_for_a_period_after_the_last_one() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let auth = AuthFailures::new(3, t0);
        let a = ip("192.0.2.1");
        auth.failed(a, at(0));
        auth.failed(a, at(10));
        assert!(!auth.refuses(a, a, at(11)));
        auth.failed(a, at(20));
        assert!(auth.refuses(a, a, at(21)));
        // Refusals do not extend the period: 60 s after the last failure.
        assert!(auth.refuses(a, a, at(79)));
        assert!(!auth.refuses(a, a, at(80)));
        // Failures spread wider than the period never add up to three.
        let b = ip("192.0.2.2");
        for s in [100, 170, 240, 310] {
            auth.failed(b, at(s));
            assert!(!auth.refuses(b, b, at(s + 1)));
        }
    }

    #[test]
    fn a_recent_table_stays_within_its_bound() {
        let t0 = Instant::now();
        let mut table: Recent<u32> = Recent::new(Duration::from_secs(1), 1000, t0);
        // 100,000 distinct addresses within one second: never more than
        // two generations of 1,000.
        for i in 0..100_000u32 {
            let key = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            *table.touch(key, t0 + Duration::from_micros(u64::from(i))) += 1;
            assert!(table.len() <= 2000);
        }
        assert!(
            table.capacity() <= 2 * 2048,
            "capacity {}",
            table.capacity()
        );
        // Remembered for its time, forgotten after.
        let key = ip("192.0.2.1");
        *table.touch(key, t0) += 1;
        assert!(table.get(key, t0 + Duration::from_millis(1500)).is_some());
        assert!(table.get(key, t0 + Duration::from_millis(2600)).is_none());
        assert!(table.is_empty());
    }
}
