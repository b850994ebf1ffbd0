//! One way to take a `std::sync::Mutex` in berth.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`. A panic elsewhere while it was held leaves it usable: berth's mutexes
/// guard state whose every update is one operation (a map insert or removal, a slot
/// replaced), never left half-done by an unwinding holder.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
