//! The `strata` binary: thin. Parse the command line, hand over to the library, turn
//! errors into a message and an exit code (ripgrep's `main.rs` shape).

mod cli;

/// jemalloc returns freed memtable and compaction buffers to the system where glibc's
/// allocator kept them, which kept RSS growing with the write load (BENCHMARKS.md).
/// It is also RocksDB's allocator (`unprefixed_malloc_on_supported_platforms`): with
/// glibc's, every large write batch, memtable arena block and table block was a fresh
/// `mmap` whose pages faulted in one by one (~5% of `strata run`'s CPU).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read at its start (`MALLOC_CONF` in the environment overrides
/// them). `oversize_threshold:0`: allocations of 8 MB and more (a drain's write
/// batch, its outbox entry, RocksDB's table blocks) otherwise go to an arena that
/// returns them to the system at once, so every such buffer was faulted in afresh,
/// page by page (`clear_page` ~10% of `strata run`). They now share the arenas'
/// normal decay (freed pages kept ~10 s for reuse).
///
/// `thp:always`: jemalloc asks the kernel for transparent huge pages (2 MiB) for its
/// memory, where the system leaves them to `madvise` (most distributions' default).
/// `strata run` at 1M customers then took 8x fewer page faults and ~10 % less CPU
/// per event (BENCHMARKS.md, stop 39). Only `run` keeps them: every other command
/// turns them off at its start ([`cli`]), because replay gained nothing from them and
/// its peak RSS rose by up to 5 % (memory is handed out 2 MiB at a time).
#[cfg(not(target_env = "msvc"))]
#[unsafe(export_name = "malloc_conf")]
#[allow(non_upper_case_globals)]
static malloc_conf: Option<&'static u8> =
    Some(&b"oversize_threshold:0,thp:always,metadata_thp:auto\0"[0]);

/// Transparent huge pages off for this process from now on (Linux's
/// `PR_SET_THP_DISABLE`, which overrides jemalloc's `madvise`); see [`malloc_conf`].
/// Best effort: elsewhere, or on a kernel without it, nothing changes.
fn huge_pages_off() {
    #[cfg(target_os = "linux")]
    // SAFETY: prctl with integer arguments only; it changes a flag of this process.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

fn main() {
    // Test builds only (`failpoints`): fail points named in FAILPOINTS (crash and
    // delay injection); without the feature this does nothing.
    let failpoints = fail::FailScenario::setup();
    let code = cli::main();
    failpoints.teardown();
    std::process::exit(code);
}
