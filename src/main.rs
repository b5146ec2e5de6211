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

fn main() {
    std::process::exit(cli::main());
}
