//! The process's allocators and how they are tuned: mimalloc for Rust's allocations, glibc's
//! malloc for SQLite's.

use std::ffi::{c_int, c_long, OsStr};

/// mimalloc: allocation and freeing were about a third of a busy node's CPU with glibc's
/// allocator (every write is decoded, recorded, forwarded and acknowledged across threads);
/// with mimalloc the same mesh carries about a fifth more writes per second. Built without
/// transparent huge pages (`no_thp`): with them, each node's RSS roughly tripled.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How long mimalloc keeps memory the program freed before it gives it back to the OS
/// (mimalloc's own default is 1,000 ms). A node's frames and rows come and go by the
/// megabyte: kept for a second, they made the origin of a 7-node mesh peak at 55–69 MiB after
/// a peer's stall (median 60, 5 runs in 10 above 60), against 51–62 MiB at 100 ms (median 55,
/// 1 in 10), for about 5 % fewer writes/s there and 1–2 % at 3 nodes (7 % in an earlier,
/// slower spell; BENCHMARKS.md). Giving memory back at once (0) took the peak lower still but
/// cost 10–20 % more CPU. An operator's `MIMALLOC_PURGE_DELAY` overrides this.
pub const PURGE_DELAY_MS: c_long = 100;

/// `mi_option_purge_delay` in mimalloc v3's `mimalloc.h` (the Rust bindings name no constant
/// for it); a test checks it against the option's documented default.
const MI_OPTION_PURGE_DELAY: c_int = 15;

extern "C" {
    #[cfg(test)]
    fn mi_option_get(option: c_int) -> c_long;
    fn mi_option_set(option: c_int, value: c_long);
}

/// Tunes both allocators; called first thing in `main`, before any other thread exists.
pub fn tune() {
    limit_malloc_arenas();
    if let Some(ms) = purge_delay(std::env::var_os("MIMALLOC_PURGE_DELAY").as_deref()) {
        // SAFETY: mimalloc's options are plain values it reads on each purge decision;
        // setting one is allowed at any time.
        unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, ms) }
    }
}

/// The purge delay to set, given the environment's `MIMALLOC_PURGE_DELAY`: none when the
/// operator set one (mimalloc read it at start-up).
fn purge_delay(env: Option<&OsStr>) -> Option<c_long> {
    env.is_none().then_some(PURGE_DELAY_MS)
}

/// The purge delay in effect, in milliseconds.
#[cfg(test)]
fn purge_delay_ms() -> c_long {
    // SAFETY: reads an option's value.
    unsafe { mi_option_get(MI_OPTION_PURGE_DELAY) }
}

/// SQLite allocates through glibc's malloc, which gives every thread that allocates its own
/// arena, and memory freed in one arena is not reused by another: under load a node's RSS grew
/// to several times what it uses. Two arenas keep it near what is live, at no measurable cost
/// in throughput (see BENCHMARKS.md).
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; it is called before any other thread
    // exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The option number is mimalloc's purge delay: it reads as that option's documented
    /// default (1,000 ms in mimalloc v3) until set, and as what was set after. A mimalloc
    /// whose options were renumbered fails here rather than tuning something else.
    #[test]
    fn the_purge_delay_is_the_option_tuned() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return;
        }
        assert_eq!(purge_delay_ms(), 1000, "mimalloc v3's default purge delay");
        // SAFETY: as in `tune`.
        unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) }
        assert_eq!(purge_delay_ms(), PURGE_DELAY_MS);
    }

    #[test]
    fn an_operators_setting_is_left_alone() {
        assert_eq!(purge_delay(None), Some(PURGE_DELAY_MS));
        assert_eq!(purge_delay(Some(OsStr::new("0"))), None);
        assert_eq!(purge_delay(Some(OsStr::new("1000"))), None);
    }
}
