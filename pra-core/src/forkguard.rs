//! Fork safety of pra's own SQLite: a process never forks while one of its threads is inside
//! it. SQLite keeps process-wide mutexes (the unix VFS's inode list and lock mutexes); a
//! thread that held one at the moment of a `fork()` does not exist in the child, so the first
//! SQLite call of the child that needs it — reopening a store after the fork — would wait
//! forever. Every use of pra's SQLite holds an [`enter`] guard (shared, re-entrant per thread);
//! a `pthread_atfork` handler takes the lock exclusively before the fork and releases it in
//! both processes after it. Forks that run no atfork handlers (`posix_spawn`, the raw `clone`
//! of `pra run`'s init) are not held up.

use std::cell::Cell;
use std::sync::OnceLock;

struct RwLock(std::cell::UnsafeCell<libc::pthread_rwlock_t>);

// SAFETY: a pthread rwlock is made to be shared between threads; it is never moved (it lives
// in a leaked Box).
unsafe impl Sync for RwLock {}
// SAFETY: as above.
unsafe impl Send for RwLock {}

static LOCK: OnceLock<&'static RwLock> = OnceLock::new();

thread_local! {
    // How many guards this thread holds: only the outermost takes the shared lock, so that a
    // nested use never waits behind a fork that waits for this very thread.
    static DEPTH: Cell<u32> = const { Cell::new(0) };
}

fn lock() -> &'static RwLock {
    LOCK.get_or_init(|| {
        let l: &'static RwLock = Box::leak(Box::new(RwLock(std::cell::UnsafeCell::new(
            libc::PTHREAD_RWLOCK_INITIALIZER,
        ))));
        // SAFETY: registers three handlers that only lock and unlock the static lock.
        unsafe { libc::pthread_atfork(Some(prepare), Some(in_parent), Some(in_child)) };
        l
    })
}

extern "C" fn prepare() {
    // A thread that forks from inside a guard (it never should) cannot wait for itself.
    if DEPTH.with(Cell::get) == 0 {
        // SAFETY: the lock is initialized (the handler is registered after it).
        unsafe { libc::pthread_rwlock_wrlock(lock().0.get()) };
        DEPTH.with(|d| d.set(u32::MAX));
    }
}

extern "C" fn in_parent() {
    if DEPTH.with(Cell::get) == u32::MAX {
        DEPTH.with(|d| d.set(0));
        // SAFETY: this thread took the write lock in `prepare`.
        unsafe { libc::pthread_rwlock_unlock(lock().0.get()) };
    }
}

extern "C" fn in_child() {
    if DEPTH.with(Cell::get) == u32::MAX {
        DEPTH.with(|d| d.set(0));
        // The child's only thread has another thread id than the one that locked: glibc would
        // not recognise it as the writer. Nothing else runs here yet: start afresh.
        // SAFETY: the child is single-threaded; nobody holds or waits for the lock.
        unsafe { *lock().0.get() = libc::PTHREAD_RWLOCK_INITIALIZER };
    }
}

/// A shared hold on pra's SQLite: no fork happens while it lives.
#[derive(Debug)]
pub struct Guard(());

/// Enters pra's SQLite (see the module's documentation).
pub fn enter() -> Guard {
    let l = lock();
    DEPTH.with(|d| {
        if d.get() == 0 {
            // SAFETY: the lock is initialized.
            unsafe { libc::pthread_rwlock_rdlock(l.0.get()) };
        }
        d.set(d.get() + 1);
    });
    Guard(())
}

impl Drop for Guard {
    fn drop(&mut self) {
        DEPTH.with(|d| {
            d.set(d.get() - 1);
            if d.get() == 0 {
                // SAFETY: this thread took the shared lock in `enter`.
                unsafe { libc::pthread_rwlock_unlock(lock().0.get()) };
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_guards_and_a_fork_do_not_deadlock() {
        let a = enter();
        let b = enter();
        drop(a);
        drop(b);
        let t = std::thread::spawn(|| {
            for _ in 0..100_000 {
                let _g = enter();
            }
        });
        // Fork while the other thread takes and drops its guard in a loop.
        std::thread::sleep(std::time::Duration::from_millis(1));
        // SAFETY: fork in a test; the child only exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let _g = enter();
            // SAFETY: exit without running the parent's destructors.
            unsafe { libc::_exit(0) };
        }
        let mut st = 0;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        // SAFETY: waits for (and, if it hangs, kills) our child.
        while unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG) } == 0 {
            if std::time::Instant::now() > deadline {
                unsafe { libc::kill(pid, libc::SIGKILL) };
                panic!("the child hung entering pra's SQLite after the fork");
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0);
        t.join().unwrap();
    }
}
