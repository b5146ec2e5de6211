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

/// jemalloc's options, read at its start. `oversize_threshold:0`: allocations of
/// 8 MB and more (a drain's write batch, its outbox entry, RocksDB's table blocks)
/// otherwise go to an arena that returns them to the system at once, so every such
/// buffer was faulted in afresh, page by page (`clear_page` ~10% of `strata run`).
/// They now share the arenas' normal decay (freed pages kept ~10 s for reuse).
#[cfg(not(target_env = "msvc"))]
#[unsafe(export_name = "malloc_conf")]
#[allow(non_upper_case_globals)]
static malloc_conf: Option<&'static u8> = Some(&b"oversize_threshold:0\0"[0]);

fn main() {
    // Test builds only (`failpoints`): fail points named in FAILPOINTS (crash and
    // delay injection); without the feature this does nothing.
    let failpoints = fail::FailScenario::setup();
    let code = cli::main();
    failpoints.teardown();
    std::process::exit(code);
}
