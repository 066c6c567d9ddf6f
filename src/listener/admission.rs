//! Caps on connections that have not proved anything yet: pending handshakes (TCP accepted,
//! WebSocket upgrade not complete) and upgraded connections that have not logged in. Each
//! kind has a total cap and a cap per client address; a connection holds a [`Slot`] while it
//! is of that kind, and the slot gives its place back when dropped.

use crate::stats::Gauge;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Why a slot was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The total cap is reached.
    Total,
    /// The cap for the client's address is reached.
    PerAddress,
}

/// One kind of pending connection, capped in total and per client address.
pub struct Limiter {
    total_max: u64,
    per_addr_max: u32,
    /// Slots held, in total (exposed on `/healthz`).
    pub held: Arc<Gauge>,
    per_addr: Mutex<HashMap<AddrKey, u32>>,
}

/// What the per-address cap counts by: an IPv4 address, or the /64 prefix of an IPv6 one (a
/// single host usually holds a whole /64).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AddrKey(u128);

impl AddrKey {
    pub fn of(ip: IpAddr) -> AddrKey {
        match ip {
            IpAddr::V4(v4) => AddrKey(u32::from(v4) as u128),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => AddrKey(u32::from(v4) as u128),
                // Top bit set keeps IPv6 keys apart from IPv4 ones.
                None => AddrKey((u128::from(v6) & !((1u128 << 64) - 1)) | 1),
            },
        }
    }
}

impl Limiter {
    pub fn new(total_max: usize, per_addr_max: usize, held: Arc<Gauge>) -> Arc<Limiter> {
        Arc::new(Limiter {
            total_max: total_max as u64,
            per_addr_max: u32::try_from(per_addr_max).unwrap_or(u32::MAX),
            held,
            per_addr: Mutex::new(HashMap::new()),
        })
    }

    /// A slot counted in the total only (the address is not known yet); see
    /// [`Slot::attach`].
    pub fn acquire_total(self: &Arc<Self>) -> Result<Slot, Refused> {
        let per_addr = self.lock();
        if self.held.get() >= self.total_max {
            return Err(Refused::Total);
        }
        self.held.inc();
        drop(per_addr);
        Ok(Slot {
            limiter: self.clone(),
            addr: None,
        })
    }

    /// A slot counted in the total and for `ip`.
    pub fn acquire(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refused> {
        let mut slot = self.acquire_total()?;
        slot.attach(ip)?;
        Ok(slot)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<AddrKey, u32>> {
        self.per_addr.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Slots held for `ip` (tests, logs).
    pub fn held_by(&self, ip: IpAddr) -> u32 {
        self.lock().get(&AddrKey::of(ip)).copied().unwrap_or(0)
    }
}

/// A place under a [`Limiter`]'s caps, given back on drop.
pub struct Slot {
    limiter: Arc<Limiter>,
    addr: Option<AddrKey>,
}

impl Slot {
    /// Counts this slot for `ip` too, once the client's address is known. Refused when that
    /// address holds its cap already (the slot then still counts in the total until dropped).
    /// A slot already counted for an address is moved to `ip`.
    pub fn attach(&mut self, ip: IpAddr) -> Result<(), Refused> {
        let key = AddrKey::of(ip);
        let mut map = self.limiter.lock();
        if self.addr == Some(key) {
            return Ok(());
        }
        let n = map.entry(key).or_insert(0);
        if *n >= self.limiter.per_addr_max {
            if *n == 0 {
                map.remove(&key);
            }
            return Err(Refused::PerAddress);
        }
        *n += 1;
        if let Some(old) = self.addr.replace(key) {
            release(&mut map, old);
        }
        Ok(())
    }
}

fn release(map: &mut HashMap<AddrKey, u32>, key: AddrKey) {
    if let Some(n) = map.get_mut(&key) {
        *n -= 1;
        if *n == 0 {
            map.remove(&key);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut map = self.limiter.lock();
        if let Some(key) = self.addr {
            release(&mut map, key);
        }
        self.limiter.held.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn caps_hold_in_total_and_per_address_and_slots_give_back_on_drop() {
        let l = Limiter::new(3, 2, Arc::new(Gauge::default()));
        let a1 = l.acquire(ip("10.0.0.1")).unwrap();
        let a2 = l.acquire(ip("10.0.0.1")).unwrap();
        assert_eq!(
            l.acquire(ip("10.0.0.1")).err(),
            Some(Refused::PerAddress),
            "third from one address"
        );
        assert_eq!(l.held.get(), 2, "the refused one gave its total place back");
        let b = l.acquire(ip("10.0.0.2")).unwrap();
        assert_eq!(l.acquire(ip("10.0.0.3")).err(), Some(Refused::Total));
        drop(a1);
        assert_eq!(l.held_by(ip("10.0.0.1")), 1);
        let _a3 = l.acquire(ip("::ffff:10.0.0.1")).unwrap();
        assert_eq!(l.held_by(ip("10.0.0.1")), 2, "IPv4-mapped counts as IPv4");
        drop((a2, b));
        assert_eq!(l.held.get(), 1);
        assert!(l.lock().len() == 1);
    }

    #[test]
    fn ipv6_counts_by_slash_64_and_attach_moves_a_slot() {
        let l = Limiter::new(10, 1, Arc::new(Gauge::default()));
        let _a = l.acquire(ip("2001:db8::1")).unwrap();
        assert!(l.acquire(ip("2001:db8::2")).is_err(), "same /64");
        let mut b = l.acquire(ip("2001:db8:0:1::1")).unwrap();
        b.attach(ip("192.0.2.7")).unwrap();
        assert_eq!(l.held_by(ip("2001:db8:0:1::1")), 0);
        assert_eq!(l.held_by(ip("192.0.2.7")), 1);
        let mut c = l.acquire_total().unwrap();
        assert_eq!(c.attach(ip("192.0.2.7")), Err(Refused::PerAddress));
        drop((b, c));
        assert_eq!(l.held.get(), 1);
    }
}
