//! Fault injection for tests: a test makes the Nth I/O step of the current thread fail, so
//! every step of a block cut or a WAL write can be shown to lose nothing acknowledged.
//! Compiled to nothing outside `cfg(test)`.

use std::path::Path;

use crate::error::Result;
#[cfg(test)]
use crate::error::TsdbError;

#[cfg(test)]
thread_local! {
    static LEFT: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
    static HIT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// One I/O step on `path`: fails if the test's countdown reached it.
#[inline]
pub(crate) fn step(path: &Path) -> Result<()> {
    #[cfg(test)]
    {
        if let Some(n) = LEFT.get() {
            if n == 0 {
                LEFT.set(None);
                HIT.set(true);
                return Err(TsdbError::io(
                    path,
                    std::io::Error::other("injected I/O fault"),
                ));
            }
            LEFT.set(Some(n - 1));
        }
    }
    let _ = path;
    Ok(())
}

/// Makes step number `n` (0-based) on this thread fail; `None` disarms.
#[cfg(test)]
pub(crate) fn fail_at(n: Option<u64>) {
    LEFT.set(n);
    HIT.set(false);
}

/// Whether the armed fault fired since [`fail_at`].
#[cfg(test)]
pub(crate) fn fired() -> bool {
    HIT.get()
}
