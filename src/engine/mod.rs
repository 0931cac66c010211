//! The one place that builds DataFusion sessions, plus small Arrow helpers every task shares.

mod as_of;
mod compact;
pub mod expr;
mod hits;
mod opaque;
mod row_values;
mod scrub;
mod sorted;
mod value_hash;

use std::sync::Arc;

use datafusion::arrow::array::{RecordBatch, new_null_array};
use datafusion::arrow::compute::{CastOptions, cast_with_options};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::error::DataFusionError;
use datafusion::prelude::{DataFrame, SessionConfig, SessionContext};

pub use hits::rule_positions_udf;
pub use opaque::opaque_udf;
pub use row_values::row_values_udf;
pub use scrub::{contains_needle, is_whole_needle, replace_needles, scrub_json_udf, scrub_udf};
pub use sorted::{
    collect_in_order, collect_ordered_by, concat_ascending, decoded_schema, distinct_adjacent,
    rows_beside, sorted_difference, sorted_distinct, sorted_distinct_on, splice, stream_in_order,
    strictly_ascending, unpivot,
};
pub use value_hash::{value_fingerprint_udaf, value_hash_udf};

static RUNTIME: std::sync::OnceLock<Arc<datafusion::execution::runtime_env::RuntimeEnv>> =
    std::sync::OnceLock::new();

/// Whether plans should prefer operators that spill: as [`set_memory_limit`] chose, or while a
/// task runs again after running out of memory (see [`set_spill_friendly`]).
static SPILL_FRIENDLY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static RETRYING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Sets the memory the query engine may use (all sessions of the process share one pool);
/// operators that can spill (sorts, aggregations, sort-merge joins) go to temporary files in
/// the system's temp folder beyond it. With `spill_friendly` (`IGAFLOW_JOINS=sort-merge`, or
/// while a task that ran out of memory runs again: see `tasks::run_task`), joins are planned
/// as sort-merge joins, which spill, instead of hash joins, which hold their build side in
/// memory.
///
/// With `fair` (an explicit `--memory-limit`), the pool gives each spilling operator an equal
/// share, so that one large sort cannot starve the others. Without it (the default limit, a
/// fraction of RAM) operators take memory as they need it up to the limit: a fair share is
/// the pool divided by the spilling operators registered at that moment (every partition of
/// every sort and repartition of the queries a task runs together), so with a few dozen of
/// them a sort of a few GB spilled although most of the memory was free.
/// Call once, before the first session.
pub fn set_memory_limit(
    bytes: usize,
    spill_friendly: bool,
    fair: bool,
) -> datafusion::error::Result<()> {
    SPILL_FRIENDLY.store(spill_friendly, std::sync::atomic::Ordering::Relaxed);
    use datafusion::execution::memory_pool::{
        FairSpillPool, GreedyMemoryPool, MemoryPool, TrackConsumersPool,
    };
    let top = std::num::NonZeroUsize::new(5).expect("non-zero");
    let pool: Arc<dyn MemoryPool> = if fair {
        Arc::new(TrackConsumersPool::new(FairSpillPool::new(bytes), top))
    } else {
        Arc::new(TrackConsumersPool::new(GreedyMemoryPool::new(bytes), top))
    };
    let runtime = datafusion::execution::runtime_env::RuntimeEnvBuilder::new()
        .with_memory_pool(pool)
        .build_arc()?;
    let _ = RUNTIME.set(runtime);
    Ok(())
}

/// Whether freed memory stays with the process between tasks (see [`keep_freed_memory`]).
static KEEP_FREED_MEMORY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Between tasks: hands the allocator's free memory back to the system, unless
/// [`keep_freed_memory`] was called. glibc keeps the pages of freed tables in its arenas.
pub fn release_free_memory() {
    if !KEEP_FREED_MEMORY.load(std::sync::atomic::Ordering::Relaxed) {
        hand_back_free_memory();
    }
}

/// Hands the allocator's free memory back to the system (between scheduled runs: an idle
/// scheduler holds no more than it needs).
pub fn hand_back_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// For a job's tasks (`run`, `schedule`) without an explicit `--memory-limit`: memory a task
/// frees stays with the process for the next task instead of going back to the system. Memory
/// handed back and taken again is memory the system must clear again, and on a virtual machine
/// that returns a guest's free pages to its host (free page reporting) each page taken again
/// waits for the host to back it: at 1M identities the complete job took 1.8–6.4 s less in
/// nine of ten interleaved pairs, for 50–200 MiB more at its peak (BENCHMARKS.md,
/// thirty-sixth pass). So: blocks up to 32 MiB (glibc's largest threshold) come from the
/// arenas rather than from fresh mappings, the arenas are not trimmed as blocks are freed,
/// and not between tasks. A `GLIBC_TUNABLES` or `MALLOC_*_` setting of the user's is kept.
/// An explicit `--memory-limit` asks for memory before speed: glibc's defaults then hold, and
/// free memory goes back between tasks.
pub fn keep_freed_memory() {
    KEEP_FREED_MEMORY.store(true, std::sync::atomic::Ordering::Relaxed);
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let tunables = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
        for (param, value) in retention_settings(&tunables, |v| std::env::var_os(v).is_some()) {
            // SAFETY: mallopt only sets a parameter of the allocator (under its lock).
            unsafe {
                libc::mallopt(param, value);
            }
        }
    }
}

/// The `mallopt` settings of [`keep_freed_memory`] that the user's `GLIBC_TUNABLES`
/// (`tunables`) and environment (`set`: whether a variable is set) leave to igaflow.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn retention_settings(
    tunables: &str,
    set: impl Fn(&str) -> bool,
) -> Vec<(libc::c_int, libc::c_int)> {
    [
        (
            "MALLOC_MMAP_THRESHOLD_",
            "glibc.malloc.mmap_threshold",
            libc::M_MMAP_THRESHOLD,
            32 << 20,
        ),
        (
            "MALLOC_TRIM_THRESHOLD_",
            "glibc.malloc.trim_threshold",
            libc::M_TRIM_THRESHOLD,
            libc::c_int::MAX,
        ),
    ]
    .into_iter()
    .filter(|(env, tunable, ..)| !set(env) && !tunables.contains(tunable))
    .map(|(.., param, value)| (param, value))
    .collect()
}

/// One malloc arena per core instead of glibc's eight per core. Threads that allocate in
/// arenas of their own leave each arena's free pages apart from the others': at 1M identities
/// the complete job peaked 8–16% lower with two arenas on two cores, in the same time
/// (BENCHMARKS.md, thirty-first pass). A `MALLOC_ARENA_MAX` or `GLIBC_TUNABLES` arena setting
/// of the user's is kept. Call first, before any other thread starts.
pub fn limit_allocator_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let given = std::env::var_os("MALLOC_ARENA_MAX").is_some()
            || std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("arena_max"));
        if !given {
            let cores = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));
            let arenas = libc::c_int::try_from(cores).unwrap_or(libc::c_int::MAX);
            // SAFETY: mallopt only sets a parameter of the allocator, before other threads run.
            unsafe {
                libc::mallopt(libc::M_ARENA_MAX, arenas);
            }
        }
    }
}

/// The default memory limit: three quarters of the machine's memory.
pub fn default_memory_limit() -> Option<usize> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: usize = info
        .lines()
        .find(|l| l.starts_with("MemTotal:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kib * 1024 / 4 * 3)
}

/// Parses `512MiB`, `1GiB`, `2GB`, `1500000` (bytes).
pub fn parse_size(s: &str) -> Option<usize> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: f64 = n.parse().ok()?;
    let factor: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "kib" => 1024.0,
        "m" | "mb" => 1e6,
        "mib" => 1024.0 * 1024.0,
        "g" | "gb" => 1e9,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    let bytes = n * factor;
    (bytes >= 1.0).then_some(bytes as usize)
}

/// Whether sessions are planned to spill (see [`set_memory_limit`]).
pub fn spill_friendly() -> bool {
    SPILL_FRIENDLY.load(std::sync::atomic::Ordering::Relaxed)
        || RETRYING.load(std::sync::atomic::Ordering::Relaxed)
}

/// With `true`, sessions created from now on plan joins that spill (sort-merge joins); with
/// `false`, they go back to what [`set_memory_limit`] chose.
pub fn set_spill_friendly(on: bool) {
    RETRYING.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// A session with igaflow's settings and functions.
///
/// Strings stay `Utf8` (not `Utf8View`) so that tables read back from Parquet have the same
/// types as freshly loaded CSV data, and all timestamps are interpreted in UTC.
pub fn context() -> SessionContext {
    // `DATAFUSION_*` environment variables tune the engine (as in `datafusion-cli`); the
    // settings below, which igaflow's results depend on, override them.
    let config = SessionConfig::from_env().unwrap_or_else(|e| {
        tracing::warn!("DATAFUSION_* environment variables ignored: {e}");
        SessionConfig::new()
    });
    let mut config = config
        .with_information_schema(true)
        .with_default_catalog_and_schema("datafusion", "public");
    let opts = config.options_mut();
    opts.execution.parquet.schema_force_view_types = false;
    opts.sql_parser.map_string_types_to_utf8view = false;
    opts.execution.time_zone = Some("+00:00".to_string());
    // A hash join whose build side is known to be small (a collected table: a scope, the
    // added owners, link candidates) is built once on one core rather than both sides being
    // hashed into partitions: repartitioning a probe side of millions of rows costs more on
    // two cores than a single-threaded build of a few MB. DataFusion's defaults (1 MB, 128K
    // rows) left those joins partitioned; at 1M identities these limits took the complete job
    // from 66.8-67.0 s to 58.7-63.0 s (BENCHMARKS.md, nineteenth pass). The DATAFUSION_*
    // variables still override them.
    if std::env::var_os("DATAFUSION_OPTIMIZER_HASH_JOIN_SINGLE_PARTITION_THRESHOLD").is_none() {
        opts.optimizer.hash_join_single_partition_threshold = 16 * 1024 * 1024;
    }
    if std::env::var_os("DATAFUSION_OPTIMIZER_HASH_JOIN_SINGLE_PARTITION_THRESHOLD_ROWS").is_none()
    {
        opts.optimizer.hash_join_single_partition_threshold_rows = 256 * 1024;
    }
    if spill_friendly() {
        opts.optimizer.prefer_hash_join = false;
        // A plan of sort-merge joins has many sorts at once; each keeps this much memory it
        // cannot spill for its final merge (10 MB by default, which alone can fill the pool).
        opts.execution.sort_spill_reservation_bytes = 256 * 1024;
    }
    let mut state = datafusion::execution::SessionStateBuilder::new()
        .with_config(config)
        .with_default_features();
    if let Some(rt) = RUNTIME.get() {
        state = state.with_runtime_env(rt.clone());
    }
    // DataFusion's rules, then ours (a builder given one rule would run only that one).
    let mut rules = datafusion::physical_optimizer::optimizer::PhysicalOptimizer::new().rules;
    rules.push(Arc::new(compact::CompactInputs));
    let state = state.with_physical_optimizer_rules(rules).build();
    let ctx = SessionContext::new_with_state(state);
    ctx.register_udf(row_values_udf());
    ctx.register_udf(value_hash_udf());
    ctx.register_udaf(value_fingerprint_udaf());
    ctx
}

/// Whether `t` is one of Arrow's text types (`Utf8`, `Utf8View`, `LargeUtf8`).
pub fn is_text(t: &datafusion::arrow::datatypes::DataType) -> bool {
    use datafusion::arrow::datatypes::DataType;
    matches!(t, DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8)
}

/// Lets the Parquet scans of `ctx` planned from now on apply their filters while decoding
/// (`pushdown_filters`), the joins' dynamic filters included: a scan cut to a small set of keys
/// then decodes its other columns only for the rows kept. For the narrow queries of an
/// incremental run (an incremental synchronization at 1M identities: 0.8 → 0.5 s); a complete
/// run keeps decoding whole columns, which is cheaper when most rows are kept.
pub fn filter_while_decoding(ctx: &SessionContext) {
    if std::env::var_os("DATAFUSION_EXECUTION_PARQUET_PUSHDOWN_FILTERS").is_some() {
        return;
    }
    ctx.state_ref()
        .write()
        .config_mut()
        .options_mut()
        .execution
        .parquet
        .pushdown_filters = true;
}

/// `df` with its hash joins built on the side the plan names (the left one). DataFusion swaps
/// a join's sides when statistics make the build side look larger, and estimates a union of
/// joins over small configuration tables as small: `assigned_links`' semi join on the 1M
/// assigned owners (the side to build) was swapped to build a hash table over the 13M granted
/// links instead (1.3 GB at the role model's peak).
pub fn as_written(df: DataFrame) -> DataFrame {
    let (state, plan) = df.into_parts();
    let mut config = state.config().clone();
    config.options_mut().optimizer.join_reordering = false;
    // The state keeps the session's catalogs: no new (empty) default catalog over them.
    config
        .options_mut()
        .catalog
        .create_default_catalog_and_schema = false;
    let state = datafusion::execution::SessionStateBuilder::new_from_existing(state)
        .with_config(config)
        .build();
    DataFrame::new(state, plan)
}

/// A session whose `current_date` is `as_of` (the run's `--as-of` date).
pub fn context_at(as_of: chrono::NaiveDate) -> SessionContext {
    let ctx = context();
    ctx.register_udf(as_of::current_date_udf(as_of));
    ctx
}

/// `f` of each item, each on a thread of its own, in the items' order. For CPU work outside
/// DataFusion's plans (a task's output formatting, a sort of gathered columns) that would
/// otherwise keep one core of two.
pub fn on_threads<T: Send, R: Send>(
    items: impl Iterator<Item = T>,
    f: impl Fn(T) -> R + Sync,
) -> Vec<R> {
    std::thread::scope(|s| {
        let f = &f;
        let handles: Vec<_> = items.map(|item| s.spawn(move || f(item))).collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a worker thread does not panic"))
            .collect()
    })
}

/// The number of threads [`on_threads`] work is split into: the cores (at most 8).
pub fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(8))
}

/// Casts a batch to `schema` by column name; columns missing from the batch become NULL.
pub fn cast_batch(
    batch: &RecordBatch,
    schema: &SchemaRef,
) -> datafusion::error::Result<RecordBatch> {
    let opts = CastOptions {
        safe: false,
        ..Default::default()
    };
    let columns = schema
        .fields()
        .iter()
        .map(|f| match batch.column_by_name(f.name()) {
            Some(c) if c.data_type() == f.data_type() => Ok(c.clone()),
            Some(c) => cast_with_options(c, f.data_type(), &opts).map_err(DataFusionError::from),
            None => Ok(new_null_array(f.data_type(), batch.num_rows())),
        })
        .collect::<datafusion::error::Result<Vec<_>>>()?;
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

/// `batches` with `schema` (by position when only nullability or metadata differ, else cast
/// by name).
pub fn align(
    batches: &[RecordBatch],
    schema: &SchemaRef,
) -> datafusion::error::Result<Vec<RecordBatch>> {
    batches
        .iter()
        .map(|b| {
            if b.schema() == *schema {
                Ok(b.clone())
            } else {
                RecordBatch::try_new(schema.clone(), b.columns().to_vec())
                    .or_else(|_| cast_batch(b, schema))
            }
        })
        .collect()
}

/// Batches as one `MemTable` source for a session. The schema is made all-nullable and every
/// batch is aligned to it (plans may infer NOT NULL or carry metadata a batch lacks).
pub fn mem_table(
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
) -> datafusion::error::Result<Arc<datafusion::datasource::MemTable>> {
    Ok(Arc::new(mem_table_partitions(schema, vec![batches])?))
}

/// [`mem_table`] with several partitions.
pub fn mem_table_partitions(
    schema: SchemaRef,
    partitions: Vec<Vec<RecordBatch>>,
) -> datafusion::error::Result<datafusion::datasource::MemTable> {
    let schema = Arc::new(datafusion::arrow::datatypes::Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| {
                f.as_ref()
                    .clone()
                    .with_nullable(true)
                    .with_metadata(Default::default())
            })
            .collect::<Vec<_>>(),
    ));
    let partitions = partitions
        .into_iter()
        .map(|batches| {
            let mut sliced = Vec::with_capacity(batches.len());
            for b in align(&batches, &schema)? {
                // Whole-file batches are sliced (zero-copy): DataFusion repartitions by moving
                // whole batches, so one batch of a 13M-row export would keep a single core busy.
                let n = b.num_rows();
                sliced.extend(
                    (0..n.div_ceil(SLICE_ROWS).max(1))
                        .map(|k| b.slice(k * SLICE_ROWS, SLICE_ROWS.min(n - k * SLICE_ROWS))),
                );
            }
            Ok(sliced)
        })
        .collect::<datafusion::error::Result<Vec<_>>>()?;
    datafusion::datasource::MemTable::try_new(schema, partitions)
}

/// Rows per batch of an in-memory table.
const SLICE_ROWS: usize = 1 << 16;

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::retention_settings;

    #[test]
    fn retention_leaves_the_users_allocator_settings_alone() {
        let none = retention_settings("", |_| false);
        assert_eq!(
            none,
            vec![
                (libc::M_MMAP_THRESHOLD, 32 << 20),
                (libc::M_TRIM_THRESHOLD, libc::c_int::MAX)
            ]
        );
        // A tunable of the user's keeps glibc's setting of it; the other is still igaflow's.
        let tuned = retention_settings("glibc.malloc.trim_threshold=1048576", |_| false);
        assert_eq!(tuned, vec![(libc::M_MMAP_THRESHOLD, 32 << 20)]);
        let both = "glibc.malloc.mmap_threshold=65536:glibc.malloc.trim_threshold=0";
        assert!(retention_settings(both, |_| false).is_empty());
        // So does the older environment variable.
        let env = retention_settings("", |v| v == "MALLOC_MMAP_THRESHOLD_");
        assert_eq!(env, vec![(libc::M_TRIM_THRESHOLD, libc::c_int::MAX)]);
    }
}
