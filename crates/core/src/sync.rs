//! Small helpers over `std::sync` that every crate uses the same way.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `m`, taking the guard even when another thread panicked while holding it.
///
/// Every mutex in distlock guards state that each critical section leaves consistent (single
/// inserts, removals and field writes), so a poisoned lock still holds a usable value; failing
/// every later call because one panicked would turn one bug into a provider that no longer
/// releases anything.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_mutex_still_locks() {
        let m = std::sync::Arc::new(Mutex::new(1));
        let m2 = m.clone();
        let _ = std::thread::spawn(move || {
            let _g = m2.lock();
            panic!("poison it");
        })
        .join();
        assert!(m.is_poisoned());
        *lock(&m) += 1;
        assert_eq!(*lock(&m), 2);
    }
}
