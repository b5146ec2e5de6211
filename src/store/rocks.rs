//! RocksDB implementation of [`Store`].
//!
//! Memory is bounded by configuration, not by the number of customers: one shared
//! LRU block cache (`engine.block_cache_mb`, index and filter blocks charged to it) and
//! memtables (`engine.write_buffer_mb` each, all of them together capped at four
//! times that; the WAL at eight times, past which the oldest log's families flush). Point
//! lookups on `customers` and `dedupe` use bloom filters, so a miss (a new customer, a
//! new event id) rarely touches disk. The WAL stays on: a batch is the unit of
//! exactly-once (state + offsets), and it must survive a crash once written.

use std::path::Path;

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, Options, ReadOptions, WriteBatch, DB,
};

use super::{Batch, Cf, Store, StoreError, Visitor};

pub struct RocksStore {
    db: DB,
}

fn backend(e: rocksdb::Error) -> StoreError {
    StoreError::Backend(e.into_string())
}

impl RocksStore {
    pub fn open(
        path: &Path,
        block_cache_mb: usize,
        write_buffer_mb: usize,
    ) -> Result<RocksStore, StoreError> {
        std::fs::create_dir_all(path).map_err(|e| {
            StoreError::Backend(format!("cannot create state dir {}: {e}", path.display()))
        })?;
        let cache = Cache::new_lru_cache(block_cache_mb.max(1) * 1024 * 1024);
        let cf_opts = |cf: Cf| {
            let mut table = BlockBasedOptions::default();
            table.set_block_cache(&cache);
            table.set_cache_index_and_filter_blocks(true);
            table.set_pin_l0_filter_and_index_blocks_in_cache(true);
            if matches!(cf, Cf::Customers | Cf::Dedupe) {
                table.set_bloom_filter(10.0, false);
            }
            let mut o = Options::default();
            o.set_block_based_table_factory(&table);
            o.set_write_buffer_size(write_buffer_mb.max(1) * 1024 * 1024);
            o.set_max_write_buffer_number(2);
            // Levels 0 and 1 uncompressed, LZ4 below: a customer record is mostly
            // event-id hashes, which do not compress, and every flushed byte is
            // compacted again soon; compressing them was ~5 % of a replay's CPU.
            use rocksdb::DBCompressionType::{Lz4, None as Raw};
            o.set_compression_per_level(&[Raw, Raw, Lz4, Lz4, Lz4, Lz4, Lz4]);
            o
        };
        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        // One cap on all memtables together, so memory does not grow with the number of
        // column families either.
        db_opts.set_db_write_buffer_size(write_buffer_mb.max(1) * 4 * 1024 * 1024);
        // A WAL file is deleted once every column family with data in it has flushed.
        // A family written rarely (`meta`: a few keys per batch) never fills its
        // memtable, so without a cap it pinned every WAL since its first write: a 1M
        // customer replay left 3.4 GB of logs beside 270 MB of tables, and the next
        // open replayed them all (13.6 s). Past the cap RocksDB flushes the families
        // that hold the oldest log.
        db_opts.set_max_total_wal_size((write_buffer_mb.max(1) * 8 * 1024 * 1024) as u64);
        db_opts.set_max_background_jobs(2);
        db_opts.set_max_open_files(256);
        let cfs = Cf::ALL.map(|cf| ColumnFamilyDescriptor::new(cf.name(), cf_opts(cf)));
        let db = DB::open_cf_descriptors(&db_opts, path, cfs).map_err(|e| {
            StoreError::Backend(format!(
                "cannot open state dir {}: {} (is another strata process using it?)",
                path.display(),
                e.into_string()
            ))
        })?;
        Ok(RocksStore { db })
    }

    fn cf(&self, cf: Cf) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(cf.name())
            .expect("column families are created at open")
    }

    /// Memory RocksDB holds now: (memtables, block cache, table readers outside the
    /// cache), in bytes.
    pub fn memory(&self) -> (u64, u64, u64) {
        let one = |name: &str| {
            self.db
                .property_int_value_cf(self.cf(Cf::Customers), name)
                .ok()
                .flatten()
                .unwrap_or(0)
        };
        (
            self.property("rocksdb.cur-size-all-mem-tables"),
            one("rocksdb.block-cache-usage"),
            self.property("rocksdb.estimate-table-readers-mem"),
        )
    }

    /// RocksDB's estimate of the keys in one column family (for gauges).
    pub fn estimate_keys(&self, cf: Cf) -> u64 {
        self.db
            .property_int_value_cf(self.cf(cf), "rocksdb.estimate-num-keys")
            .ok()
            .flatten()
            .unwrap_or(0)
    }

    /// A RocksDB integer property summed over the column families (for metrics/docs).
    pub fn property(&self, name: &str) -> u64 {
        Cf::ALL
            .iter()
            .filter_map(|&cf| {
                self.db
                    .property_int_value_cf(self.cf(cf), name)
                    .ok()
                    .flatten()
            })
            .sum()
    }
}

impl Store for RocksStore {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.db.get_cf(self.cf(cf), key).map_err(backend)
    }

    fn multi_get(&self, cf: Cf, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let h = self.cf(cf);
        self.db
            .batched_multi_get_cf(h, keys.iter(), false)
            .into_iter()
            .map(|r| r.map(|o| o.map(|p| p.to_vec())).map_err(backend))
            .collect()
    }

    fn write(&self, batch: Batch) -> Result<(), StoreError> {
        // Inserting into the memtable's skip list in key order lets each insert start
        // from the previous one's position. The sort is stable, so several writes to
        // one key keep their order (last wins, as written).
        let ops = batch.sorted();
        // Sized up front: grown by doubling, the batch's buffer was copied again at
        // each step (~2.5 % of a replay in `memmove`).
        let mut wb = WriteBatch::with_capacity_bytes(batch.bytes() + 16 * ops.len() + 64);
        for (cf, k, v) in ops {
            let h = self.cf(cf);
            match v {
                Some(v) => wb.put_cf(h, k, v),
                None => wb.delete_cf(h, k),
            }
        }
        // Freed before the memtable grows by the same bytes: a large batch is held
        // twice at most, not three times.
        drop(batch);
        self.db.write(wb).map_err(backend)
    }

    fn scan(
        &self,
        cf: Cf,
        from: &[u8],
        to: Option<&[u8]>,
        f: Visitor<'_>,
    ) -> Result<(), StoreError> {
        let mut opts = ReadOptions::default();
        if let Some(t) = to {
            opts.set_iterate_upper_bound(t.to_vec());
        }
        let mut it = self.db.raw_iterator_cf_opt(self.cf(cf), opts);
        it.seek(from);
        while it.valid() {
            if !f(it.key().unwrap(), it.value().unwrap())? {
                return Ok(());
            }
            it.next();
        }
        it.status().map_err(backend)
    }
}
