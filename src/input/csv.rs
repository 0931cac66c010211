//! CSV exports → typed Arrow columns, with every unreadable row located by line.
//!
//! Parsing uses the `csv` crate (RFC 4180, quoted newlines) on raw bytes so that a bad row —
//! wrong field count, invalid UTF-8 — is one rejected line, not a failed file. Typing is
//! vectorized: each column is read as text and cast with Arrow's kernels; a value that was
//! present but did not survive the cast is a bad value. Types are never inferred: identity data
//! has leading zeros and empty fields mean NULL.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int64Array, RecordBatch, StringArray, StringBuilder,
    StringDictionaryBuilder,
};
use datafusion::arrow::compute::{CastOptions, cast_with_options, filter_record_batch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, UInt32Type};

use crate::config::{ColumnType, CsvOptions, OnBadRow};
use crate::error::{Error, Result};

/// Name of the column carrying each row's line number in the file.
pub const LINE: &str = "_line";
/// Name of the column carrying the lowercased change command of incremental files.
pub const COMMAND: &str = "_command";

/// What to read from one file.
pub struct CsvSpec {
    pub file: PathBuf,
    pub columns: Vec<(String, ColumnType)>,
    /// The key column: a NULL or duplicated key is a bad row.
    pub key: Option<String>,
    /// Incremental files: the name of the command column, which is then required.
    pub command_column: Option<String>,
    /// Columns whose cells hold several values separated by this text (links).
    pub split: Vec<(String, String)>,
    /// Text columns (other than the key) come dictionary-encoded in the batches, one
    /// dictionary a batch, while [`Loaded::schema`] names their plain type: for files of few
    /// distinct values repeated over millions of rows (link pairs: 13.6M memberships of 1M
    /// identities, ~12 a run per account, 55k groups), where the plain text is most of a
    /// load's memory. Not with `split`.
    pub dictionary: bool,
    pub options: CsvOptions,
}

#[derive(Debug, Clone)]
pub struct Rejected {
    pub line: u64,
    pub reason: String,
    pub raw: String,
    /// The row's key field as written, when the file has one and the row reaches it.
    pub key: Option<String>,
}

/// A loaded file: the good rows (declared columns, typed, then `_line`, then `_command` when
/// incremental), the rejected ones, and the source text for later rejections (link endpoints).
/// With [`CsvSpec::dictionary`] the batches' text columns are dictionaries of the `schema`'s
/// text type (`tasks::frames::frame` and the store's writer decode them a batch at a time).
///
/// The rows come in file order as batches of at most [`BATCH_ROWS`] records (more after
/// multi-valued cells are split), each with buffers of its own: DataFusion accounts a batch's
/// memory by its buffers, so slices of one large batch would each count the whole file.
pub struct Loaded {
    pub file: PathBuf,
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
    pub rejected: Vec<Rejected>,
    pub rows_read: u64,
    /// The file's length and modification time when it was read: its text is read again
    /// for later rejections, and only if it is still the same file.
    read_as: (usize, Option<std::time::SystemTime>),
    /// (line, byte offset) of each data record, in file order.
    starts: Vec<(u64, usize)>,
}

impl Loaded {
    /// The good rows.
    pub fn num_rows(&self) -> u64 {
        self.batches.iter().map(|b| b.num_rows() as u64).sum()
    }

    /// The raw text of the record starting at `line`, read again from the file (the file's
    /// text is not kept in memory: 1.4 GB for 13.6M memberships). Empty when there is no such
    /// record, or when the file changed since it was read.
    pub fn raw_line(&self, line: u64) -> String {
        let Ok(k) = self.starts.binary_search_by_key(&line, |&(l, _)| l) else {
            return String::new();
        };
        let (start, end) = (
            self.starts[k].1,
            record_end(&self.starts, k, self.read_as.0),
        );
        match read_ranges(&self.file, self.read_as, &[(start, end)]) {
            Ok(mut texts) => raw_text(&texts.pop().unwrap_or_default()),
            Err(e) => {
                tracing::warn!(file = %self.file.display(), line, error = %e, "raw text of a rejected row not available");
                String::new()
            }
        }
    }
}

/// Where record `k` ends: where the next one starts, or at the end of the file.
fn record_end(starts: &[(u64, usize)], k: usize, file_len: usize) -> usize {
    starts.get(k + 1).map_or(file_len, |s| s.1).min(file_len)
}

/// Field `k` of the record in `text`, as written, when the record has it and it is UTF-8.
fn field(text: &[u8], k: usize, delimiter: u8) -> Option<String> {
    let mut record = ::csv::ByteRecord::new();
    ::csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .delimiter(delimiter)
        .from_reader(text)
        .read_byte_record(&mut record)
        .ok()?;
    let v = std::str::from_utf8(record.get(k)?).ok()?;
    Some(v.to_string())
}

/// A record's text without its line break.
fn raw_text(record: &[u8]) -> String {
    let slice = record.strip_suffix(b"\n").unwrap_or(record);
    let slice = slice.strip_suffix(b"\r").unwrap_or(slice);
    String::from_utf8_lossy(slice).into_owned()
}

/// The reason of a row with another number of fields than the header, after the number.
const FIELD_COUNT: &str = "fields as in the header";

/// Fails the file when it has bad rows and `on_bad_row = "fail"` (listing the first 20).
pub fn fail_on_bad_rows(file: &Path, rejected: &[Rejected], on_bad_row: OnBadRow) -> Result<()> {
    if rejected.is_empty() || on_bad_row == OnBadRow::Quarantine {
        return Ok(());
    }
    let mut sorted: Vec<&Rejected> = rejected.iter().collect();
    sorted.sort_by_key(|r| r.line);
    let mut message = format!(
        "{} bad row{}:",
        sorted.len(),
        if sorted.len() == 1 { "" } else { "s" }
    );
    for r in sorted.iter().take(20) {
        message.push_str(&format!("\n  line {}: {}", r.line, r.reason));
        // A row that does not split into the header's fields names no value: show the row.
        if r.reason.contains(FIELD_COUNT) {
            let shown: String = r.raw.chars().take(120).collect();
            let more = if shown.len() < r.raw.len() { "…" } else { "" };
            message.push_str(&format!(": `{shown}{more}`"));
        }
    }
    if sorted.len() > 20 {
        message.push_str(&format!("\n  … and {} more", sorted.len() - 20));
    }
    message.push_str(
        "\nfix the export, or set csv = { on_bad_row = \"quarantine\" } to load the good rows and keep the bad ones in `rejected_rows`",
    );
    Err(Error::Input {
        file: file.to_path_buf(),
        message,
    })
}

pub fn read(spec: &CsvSpec) -> Result<Loaded> {
    read_in_chunks(spec, PARALLEL_BYTES, BATCH_ROWS, BLOCK_BYTES)
}

/// [`read`] on a blocking thread, so that the async workers keep running the queries of tasks
/// that run meanwhile (parsing a large export takes seconds).
pub async fn load(spec: CsvSpec) -> Result<Loaded> {
    tokio::task::spawn_blocking(move || read(&spec))
        .await
        .map_err(|e| Error::Engine(datafusion::error::DataFusionError::External(Box::new(e))))?
}

/// Records per batch of a loaded file.
pub const BATCH_ROWS: usize = 8192;

/// [`read`], parsing on several threads when the data rows are at least `parallel_bytes` long,
/// into batches of `batch_rows` records. A file longer than `block_bytes` is read and parsed a
/// block at a time, so that its whole text is never held (1.4 GB for the 13.6M memberships of
/// 1M identities, beside the columns parsed from it); the text of its rejected
/// records is read again from the file. A file whose blocks cannot be cut at record ends with
/// certainty (quotes the csv reader takes as text, bare carriage returns, a header longer than a
/// block) is read whole, as a small one is.
fn read_in_chunks(
    spec: &CsvSpec,
    parallel_bytes: usize,
    batch_rows: usize,
    block_bytes: usize,
) -> Result<Loaded> {
    let whole = || read_in_chunks(spec, parallel_bytes, batch_rows, usize::MAX);
    let file = &spec.file;
    let cannot_read = |e: std::io::Error| Error::Input {
        file: file.clone(),
        message: if e.kind() == std::io::ErrorKind::NotFound {
            "export file not found: the connector's export folder must hold it (check `exports` and `file` in pipeline.toml)".into()
        } else {
            format!("cannot read: {e}")
        },
    };
    // The text (whole, or its first block) and the length and time it was read at, from one
    // open file.
    let (mut f, source, read_as, eof) = (|| {
        let mut f = std::fs::File::open(file)?;
        let meta = f.metadata()?;
        let mut source = Vec::with_capacity((meta.len() as usize).min(block_bytes));
        let eof = read_block(&mut f, &mut source, block_bytes)?;
        std::io::Result::Ok((f, source, (meta.len() as usize, meta.modified().ok()), eof))
    })()
    .map_err(cannot_read)?;
    let body: &[u8] = source
        .strip_prefix(b"\xEF\xBB\xBF".as_slice())
        .unwrap_or(&source);
    let bom = source.len() - body.len();

    let mut out_fields: Vec<Field> = spec
        .columns
        .iter()
        .map(|(n, t)| Field::new(n, t.data_type(), true))
        .collect();
    out_fields.push(Field::new(LINE, DataType::Int64, false));
    if spec.command_column.is_some() {
        out_fields.push(Field::new(COMMAND, DataType::Utf8, true));
    }
    let out_schema = Arc::new(Schema::new(out_fields));
    // Which declared columns are parsed into dictionaries, and the batches' schema with them.
    let encoded: Vec<bool> = spec
        .columns
        .iter()
        .map(|(n, t)| {
            spec.dictionary
                && spec.split.is_empty()
                && *t == ColumnType::String
                && spec.key.as_deref() != Some(n.as_str())
        })
        .collect();
    let batch_schema = Arc::new(Schema::new(
        out_schema
            .fields()
            .iter()
            .enumerate()
            .map(|(j, f)| match encoded.get(j) {
                Some(true) => f.as_ref().clone().with_data_type(DataType::Dictionary(
                    Box::new(DataType::UInt32),
                    Box::new(f.data_type().clone()),
                )),
                _ => f.as_ref().clone(),
            })
            .collect::<Vec<_>>(),
    ));

    if body.iter().all(|b| b.is_ascii_whitespace()) {
        if !eof {
            return whole();
        }
        // No rows (not even a header): an empty export, which blocks against a non-empty
        // table (SPEC 4: "An empty file for a non-empty table always blocks").
        return Ok(Loaded {
            file: file.clone(),
            schema: out_schema,
            batches: Vec::new(),
            rejected: Vec::new(),
            rows_read: 0,
            read_as,
            starts: Vec::new(),
        });
    }

    let mut reader = ::csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .delimiter(spec.options.delimiter)
        .from_reader(body);
    let mut record = ::csv::ByteRecord::new();

    // Header.
    let header_ok = reader
        .read_byte_record(&mut record)
        .map_err(|e| input(file, format!("cannot read the header row: {e}")))?;
    if !header_ok {
        return Err(input(file, "no header row".into()));
    }
    let header: Vec<String> = record
        .iter()
        .enumerate()
        .map(|(i, f)| {
            std::str::from_utf8(f)
                .map(|s| s.trim().to_string())
                .map_err(|_| {
                    input(
                        file,
                        format!("line 1: header field {} is not valid UTF-8", i + 1),
                    )
                })
        })
        .collect::<Result<_>>()?;
    let index_of = |name: &str| header.iter().position(|h| h == name);
    let mut wanted: Vec<&str> = spec.columns.iter().map(|(n, _)| n.as_str()).collect();
    if let Some(c) = &spec.command_column {
        wanted.push(c);
    }
    let missing: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|n| index_of(n).is_none())
        .collect();
    if !missing.is_empty() {
        return Err(input(
            file,
            format!(
                "line 1: declared column{} {} {} missing from the header (header has: {})",
                if missing.len() == 1 { "" } else { "s" },
                missing
                    .iter()
                    .map(|m| format!("`{m}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
                if missing.len() == 1 { "is" } else { "are" },
                header.join(", ")
            ),
        ));
    }
    // A declared column named twice: which field holds its values is a guess.
    for n in &wanted {
        let fields: Vec<String> = header
            .iter()
            .enumerate()
            .filter(|(_, h)| h == n)
            .map(|(i, _)| (i + 1).to_string())
            .collect();
        if fields.len() > 1 {
            return Err(input(
                file,
                format!(
                    "line 1: declared column `{n}` appears {} times in the header (fields {}); rename or remove the extra one",
                    fields.len(),
                    fields.join(" and ")
                ),
            ));
        }
    }
    let indices: Vec<usize> = wanted
        .iter()
        .map(|n| index_of(n).expect("checked above"))
        .collect();
    let n_fields = header.len();

    // Records → text columns. A row that cannot be split or decoded gets NULLs and a reason.
    let layout = Layout {
        indices: &indices,
        wanted: &wanted,
        n_fields,
        key_index: spec.key.as_deref().and_then(index_of),
        encoded: &encoded,
        delimiter: spec.options.delimiter,
        batch_rows: batch_rows.max(1),
    };
    let data_start = reader.position().byte() as usize;
    if !eof && data_start >= body.len() {
        // The header does not end within the first block.
        return whole();
    }
    let data = &body[data_start..];
    // Lines are counted here, not taken from the csv reader (whose count lags by one line for
    // the first record it reads): a record's line is 1 + the newlines before it.
    let first_line = 1 + memchr::memchr_iter(b'\n', &body[..data_start]).count() as u64;
    let parsed = if eof {
        parse_chunks(&layout, data, parallel_bytes, first_line, bom + data_start).0
    } else {
        let at = bom + data_start;
        match parse_blocks(
            &layout,
            &mut f,
            data.to_vec(),
            at,
            first_line,
            parallel_bytes,
            block_bytes,
        )
        .map_err(cannot_read)?
        {
            Some(parsed) => parsed,
            None => return whole(),
        }
    };
    drop(f);
    // The text of rejected records: from memory when the file was read whole.
    let whole_text = eof.then_some(&source);
    // Text columns in parts of at most `batch_rows` records; lines and offsets flat; the
    // reason why a record is rejected by its index (a few among millions, so not one slot
    // per record).
    let mut parts: Vec<Vec<ArrayRef>> = Vec::new();
    // Sized at once: grown by doubling, the starts of 13.6M records (218 MB) were copied into
    // fresh pages again and again (7% of a 1M load's samples).
    let records = parsed
        .iter()
        .filter_map(|p| p.as_ref().ok())
        .map(|p| p.starts.len())
        .sum();
    let mut starts: Vec<(u64, usize)> = Vec::with_capacity(records);
    let mut reasons: BTreeMap<usize, String> = BTreeMap::new();
    for part in parsed {
        let part = part.map_err(|e| input(file, format!("cannot read: {e}")))?;
        // Where the row with the stray quote ends cannot be told, so no row after its quote can
        // be trusted either: the file fails, under quarantine too.
        if let Some(message) = part.unclosed {
            return Err(input(file, message));
        }
        parts.extend(part.parts);
        let base = starts.len();
        starts.extend(part.starts);
        reasons.extend(part.bad.into_iter().map(|(i, r)| (base + i, r)));
    }
    let rows = starts.len();
    // Where each part starts among the records.
    let offsets: Vec<usize> = parts
        .iter()
        .scan(0, |o, p| {
            let start = *o;
            *o += p.first().map_or(0, |a| a.len());
            Some(start)
        })
        .collect();

    // Typing, part by part and column by column.
    let mut typed: Vec<Vec<ArrayRef>> = Vec::with_capacity(parts.len());
    let mut commands: Vec<Option<StringArray>> = Vec::with_capacity(parts.len());
    for (texts, &offset) in parts.iter().zip(&offsets) {
        let n = texts.first().map_or(0, |a| a.len());
        let mut columns = Vec::with_capacity(spec.columns.len());
        for (j, (name, ty)) in spec.columns.iter().enumerate() {
            if encoded[j] {
                // Text kept as text: nothing to cast.
                columns.push(Arc::clone(&texts[j]));
                continue;
            }
            let text = texts[j].as_string::<i32>();
            let array = cast_text(text, *ty)?;
            // A value that did not survive the cast is a NULL that was not one in the text.
            if array.null_count() == text.null_count() {
                columns.push(array);
                continue;
            }
            for i in 0..n {
                if text.is_valid(i) && array.is_null(i) {
                    reasons.entry(offset + i).or_insert_with(|| {
                        format!(
                            "column `{name}`: `{}` is not a valid {}{}",
                            text.value(i),
                            ty.name(),
                            match ty {
                                ColumnType::Date => " (YYYY-MM-DD)",
                                ColumnType::Timestamp => " (RFC 3339)",
                                ColumnType::Bool => " (true or false)",
                                _ => "",
                            }
                        )
                    });
                }
            }
            columns.push(array);
        }
        typed.push(columns);

        // Incremental command.
        commands.push(match &spec.command_column {
            None => None,
            Some(command_column) => {
                let text = texts[spec.columns.len()].as_string::<i32>();
                let mut b = StringBuilder::with_capacity(n, n * 6);
                for i in 0..n {
                    let v = text
                        .is_valid(i)
                        .then(|| text.value(i).trim().to_ascii_lowercase());
                    match v.as_deref() {
                        Some(c @ ("insert" | "update" | "delete")) => b.append_value(c),
                        other => {
                            reasons.entry(offset + i).or_insert_with(|| format!(
                                "column `{command_column}`: `{}` is not a command (use insert, update or delete)",
                                other.map(|_| text.value(i)).unwrap_or("")
                            ));
                            b.append_null();
                        }
                    }
                }
                Some(b.finish())
            }
        });
    }

    // Keys: NULL or duplicated (the first row with a key wins).
    if let Some(key) = &spec.key {
        let j = spec
            .columns
            .iter()
            .position(|(n, _)| n == key)
            .expect("invariant: key is declared");
        let mut seen: HashMap<&str, u64> = HashMap::with_capacity(rows);
        for (texts, &offset) in parts.iter().zip(&offsets) {
            let text = texts[j].as_string::<i32>();
            for i in 0..text.len() {
                let std::collections::btree_map::Entry::Vacant(reason) = reasons.entry(offset + i)
                else {
                    continue;
                };
                if text.is_null(i) {
                    reason.insert(format!("key `{key}` is empty"));
                    continue;
                }
                match seen.entry(text.value(i)) {
                    Entry::Occupied(first) => {
                        reason.insert(format!(
                            "duplicated key `{key}` = `{}` (first at line {})",
                            text.value(i),
                            first.get()
                        ));
                    }
                    Entry::Vacant(v) => {
                        v.insert(starts[offset + i].0);
                    }
                }
            }
        }
    }

    // The rejected rows, then each part's good rows (multi-valued cells split).
    let ranges: Vec<(usize, usize)> = reasons
        .keys()
        .map(|&i| (starts[i].1, record_end(&starts, i, read_as.0)))
        .collect();
    let texts: Vec<Vec<u8>> = match whole_text {
        Some(source) => ranges
            .iter()
            .map(|&(a, b)| source[a.min(source.len())..b.min(source.len())].to_vec())
            .collect(),
        None => read_ranges(file, read_as, &ranges).unwrap_or_else(|e| {
            tracing::warn!(file = %file.display(), error = %e, "raw text of rejected rows not available");
            vec![Vec::new(); ranges.len()]
        }),
    };
    let mut rejected = Vec::new();
    for ((&i, reason), record) in reasons.iter().zip(&texts) {
        rejected.push(Rejected {
            line: starts[i].0,
            reason: reason.clone(),
            raw: raw_text(record),
            key: layout
                .key_index
                .and_then(|k| field(record, k, layout.delimiter)),
        });
    }
    drop(texts);
    drop(source);
    drop(parts);
    let mut batches = Vec::with_capacity(typed.len());
    for ((mut columns, command), offset) in typed.into_iter().zip(commands).zip(offsets) {
        let n = columns.first().map_or(0, |a| a.len());
        let mut keep = vec![true; n];
        for (&i, _) in reasons.range(offset..offset + n) {
            keep[i - offset] = false;
        }
        let keep = BooleanArray::from(keep);
        columns.push(Arc::new(Int64Array::from_iter_values(
            starts[offset..offset + n].iter().map(|&(l, _)| l as i64),
        )));
        if let Some(c) = command {
            columns.push(Arc::new(c));
        }
        let batch = RecordBatch::try_new(batch_schema.clone(), columns)
            .map_err(|e| input(file, e.to_string()))?;
        let mut batch =
            filter_record_batch(&batch, &keep).map_err(|e| input(file, e.to_string()))?;
        if !spec.split.is_empty() {
            batch = split_cells(&batch, &spec.split).map_err(|e| input(file, e.to_string()))?;
        }
        if batch.num_rows() > 0 {
            batches.push(batch);
        }
    }
    Ok(Loaded {
        file: file.clone(),
        schema: out_schema,
        batches,
        rejected,
        rows_read: rows as u64,
        read_as,
        starts,
    })
}

/// Where the fields of a file are and how many there must be.
struct Layout<'a> {
    /// Field index of each wanted column, in output order.
    indices: &'a [usize],
    wanted: &'a [&'a str],
    n_fields: usize,
    key_index: Option<usize>,
    /// Whether each wanted column (by output position) is parsed into a dictionary; columns
    /// past its end (the command) are not.
    encoded: &'a [bool],
    delimiter: u8,
    /// Records per part of the text columns.
    batch_rows: usize,
}

/// A run of records as text columns, with each record's line, start and reason for rejection.
#[derive(Default)]
struct Records {
    /// The text columns (plain, or dictionaries: [`Layout::encoded`]), in parts of at most
    /// `batch_rows` records.
    parts: Vec<Vec<ArrayRef>>,
    /// (line, byte offset in the file) of each record.
    starts: Vec<(u64, usize)>,
    /// (index among the run's records, reason) of each unreadable record.
    bad: Vec<(usize, String)>,
    /// Why the text cannot be split into records: a quoted field that is never closed.
    unclosed: Option<String>,
}

/// Below this size a file is parsed on one thread.
const PARALLEL_BYTES: usize = 16 << 20;

/// A larger file is read and parsed a block of this size at a time.
const BLOCK_BYTES: usize = 64 << 20;

/// Appends up to `block_bytes` of `f` to `buf`; whether the file ended.
fn read_block(
    f: &mut std::fs::File,
    buf: &mut Vec<u8>,
    block_bytes: usize,
) -> std::io::Result<bool> {
    use std::io::Read;
    let before = buf.len();
    f.take(block_bytes as u64).read_to_end(buf)?;
    Ok(buf.len() - before < block_bytes)
}

/// The records of `data` (starting with a record, at byte `offset` of the file, on line
/// `first_line`), each chunk on its own thread (one chunk for a small text, see [`chunks`]),
/// and how many newlines `data` has (each chunk's counted once, before it is parsed).
fn parse_chunks(
    layout: &Layout,
    data: &[u8],
    parallel_bytes: usize,
    first_line: u64,
    offset: usize,
) -> (Vec<std::result::Result<Records, ::csv::Error>>, u64) {
    let bounds = chunks(data, parallel_bytes, layout.delimiter);
    parse_chunks_at(layout, data, &bounds, first_line, offset)
}

/// [`parse_chunks`] of the byte ranges `bounds` of `data`, each a run of whole records.
fn parse_chunks_at(
    layout: &Layout,
    data: &[u8],
    bounds: &[(usize, usize)],
    first_line: u64,
    offset: usize,
) -> (Vec<std::result::Result<Records, ::csv::Error>>, u64) {
    std::thread::scope(|scope| {
        let mut newlines = 0;
        let mut handles = Vec::new();
        for &(a, b) in bounds {
            let (chunk, line) = (&data[a..b], first_line + newlines);
            let lines = memchr::memchr_iter(b'\n', chunk).count();
            handles.push(
                scope.spawn(move || parse_records(layout, chunk, line, offset + a, lines + 1)),
            );
            newlines += lines as u64;
        }
        let parsed = handles
            .into_iter()
            .map(|h| h.join().expect("invariant: CSV parsing does not panic"))
            .collect();
        (parsed, newlines)
    })
}

/// The records of the rest of `f`, read a block at a time after `buf` (the data read so far,
/// starting with a record at byte `offset`, on line `first_line`): each block is parsed up to
/// the last record end in it, the rest carried to the next. While a block's records are parsed
/// (on threads of their own), the next block is read and cut, where the other cores used to
/// wait for it; the one scan that cuts a block also splits it into chunks ([`next_region`]).
/// With both, the 13.6M memberships' load took 0.6–0.8 s less (BENCHMARKS.md, thirty-eighth
/// pass). `None` when a block cannot be cut with certainty (see [`read_in_chunks`]).
#[allow(clippy::too_many_arguments)]
fn parse_blocks(
    layout: &Layout,
    f: &mut std::fs::File,
    mut buf: Vec<u8>,
    mut offset: usize,
    mut first_line: u64,
    parallel_bytes: usize,
    block_bytes: usize,
) -> std::io::Result<Option<Vec<std::result::Result<Records, ::csv::Error>>>> {
    let mut parsed = Vec::new();
    let mut eof = false;
    let Some(mut region) = next_region(layout, f, &mut buf, &mut eof, parallel_bytes, block_bytes)?
    else {
        return Ok(None);
    };
    loop {
        let last = eof && buf.is_empty();
        let (records, following) = std::thread::scope(|scope| {
            let parsing = (!region.text.is_empty()).then(|| {
                let region = &region;
                scope.spawn(move || match &region.bounds {
                    Some(bounds) => {
                        parse_chunks_at(layout, &region.text, bounds, first_line, offset)
                    }
                    None => parse_chunks(layout, &region.text, parallel_bytes, first_line, offset),
                })
            });
            let following = match last {
                true => Ok(Some(Region::default())),
                false => next_region(layout, f, &mut buf, &mut eof, parallel_bytes, block_bytes),
            };
            let records = parsing.map(|h| h.join().expect("invariant: CSV parsing does not panic"));
            (records, following)
        });
        if let Some((records, newlines)) = records {
            parsed.extend(records);
            first_line += newlines;
        }
        offset += region.text.len();
        if last {
            return Ok(Some(parsed));
        }
        match following? {
            Some(next) => region = next,
            None => return Ok(None),
        }
    }
}

/// A run of whole records to parse, and where its chunks start when they were found as it was
/// cut (`None`: [`chunks`] finds them).
#[derive(Default)]
struct Region {
    text: Vec<u8>,
    bounds: Option<Vec<(usize, usize)>>,
}

/// The next region of whole records to parse, taken from the front of `buf` (read on from `f`
/// as needed, `eof` set when the file ends): up to the start of its last record when the file
/// goes on, all of it at the end. `None` when it cannot be cut with certainty: quotes the csv
/// reader takes as text, or a bare carriage return. The scan that finds the cut finds where
/// the region's chunks start too (one per thread, as [`chunks`] would).
fn next_region(
    layout: &Layout,
    f: &mut std::fs::File,
    buf: &mut Vec<u8>,
    eof: &mut bool,
    parallel_bytes: usize,
    block_bytes: usize,
) -> std::io::Result<Option<Region>> {
    loop {
        if !*eof {
            *eof = read_block(f, buf, block_bytes)?;
        }
        let (cut, bounds) = if *eof {
            (buf.len(), None)
        } else {
            // The start of the last record that begins past the middle of the data, and the
            // chunks' starts after even parts of it.
            let len = buf.len();
            let threads = crate::engine::threads();
            let even = match threads > 1 && len >= parallel_bytes {
                true => parts(len, threads),
                false => Vec::new(),
            };
            let mut targets = even.clone();
            targets.extend([len / 2, len - (len / 2).min(1 << 16)]);
            targets.sort_unstable();
            let Some(starts) = record_starts_in(buf, &targets, layout.delimiter) else {
                return Ok(None);
            };
            // One record longer than the data so far: read on.
            let Some(&cut) = starts.last() else {
                continue;
            };
            // The first start after each part's offset, below the cut, each once.
            let mut chunk_starts: Vec<usize> = even
                .iter()
                .filter_map(|&t| starts.iter().copied().find(|&s| s > t))
                .filter(|&s| s < cut)
                .collect();
            chunk_starts.dedup();
            let bounds = (!even.is_empty()).then(|| split_at(chunk_starts, cut));
            (cut, bounds)
        };
        let region = &buf[..cut];
        if memchr::memchr_iter(b'\r', region).any(|i| region.get(i + 1) != Some(&b'\n')) {
            return Ok(None);
        }
        // The rest (at most the last 64 KiB and a record) moves; the region keeps the buffer.
        let mut rest = Vec::with_capacity(buf.len() - cut + block_bytes.min(BLOCK_BYTES));
        rest.extend_from_slice(&buf[cut..]);
        buf.truncate(cut);
        let text = std::mem::replace(buf, rest);
        return Ok(Some(Region { text, bounds }));
    }
}

/// The text of each byte range of `file`, read again; an error when the file no longer has
/// the length and modification time it was read with.
fn read_ranges(
    file: &Path,
    read_as: (usize, Option<std::time::SystemTime>),
    ranges: &[(usize, usize)],
) -> std::io::Result<Vec<Vec<u8>>> {
    use std::io::{Read, Seek, SeekFrom};
    if ranges.is_empty() {
        return Ok(Vec::new());
    }
    let mut f = std::fs::File::open(file)?;
    let meta = f.metadata()?;
    if (meta.len() as usize, meta.modified().ok()) != read_as {
        return Err(std::io::Error::other("the file changed after it was read"));
    }
    ranges
        .iter()
        .map(|&(start, end)| {
            f.seek(SeekFrom::Start(start as u64))?;
            let mut text = vec![0; end.saturating_sub(start)];
            f.read_exact(&mut text)?;
            Ok(text)
        })
        .collect()
}

/// Byte ranges of `data` that can be parsed independently: several when the file is large,
/// has no bare carriage returns and quotes only whole fields (RFC 4180), so that the newlines
/// outside quotes are exactly the ends of records.
fn chunks(data: &[u8], parallel_bytes: usize, delimiter: u8) -> Vec<(usize, usize)> {
    let threads = crate::engine::threads();
    let whole = vec![(0, data.len())];
    if threads == 1
        || data.len() < parallel_bytes
        || memchr::memchr_iter(b'\r', data).any(|i| data.get(i + 1) != Some(&b'\n'))
    {
        return whole;
    }
    let targets = parts(data.len(), threads);
    let Some(starts) = record_starts_after(data, &targets, delimiter) else {
        return whole;
    };
    split_at(starts, data.len())
}

/// Offsets that cut `len` bytes into `threads` even parts.
fn parts(len: usize, threads: usize) -> Vec<usize> {
    (1..threads).map(|k| len * k / threads).collect()
}

/// The byte ranges from 0 to `end` that the ascending `starts` (each below `end`) divide it into.
fn split_at(starts: impl IntoIterator<Item = usize>, end: usize) -> Vec<(usize, usize)> {
    let mut bounds = vec![0];
    bounds.extend(starts);
    bounds.push(end);
    bounds.windows(2).map(|w| (w[0], w[1])).collect()
}

/// For each target offset (ascending), where the first record after it starts: the byte after
/// the first newline at or past the target that is outside quotes. `None` when a quote is not
/// where RFC 4180 puts one (opening a field, closing it, or doubled inside it): the csv reader
/// takes such quotes as text, so counting them would misplace the records. Also `None` when
/// the data ends inside quotes.
fn record_starts_after(data: &[u8], targets: &[usize], delimiter: u8) -> Option<Vec<usize>> {
    let (starts, inside) = quote_scan(data, targets, delimiter)?;
    (!inside).then_some(starts)
}

/// [`record_starts_after`] over the beginning of a text: the data may end inside quotes (a
/// field that goes on in the next block).
fn record_starts_in(data: &[u8], targets: &[usize], delimiter: u8) -> Option<Vec<usize>> {
    quote_scan(data, targets, delimiter).map(|(starts, _)| starts)
}

/// The record starts of [`record_starts_after`], and whether the data ends inside quotes.
fn quote_scan(data: &[u8], targets: &[usize], delimiter: u8) -> Option<(Vec<usize>, bool)> {
    let mut out: Vec<usize> = Vec::with_capacity(targets.len());
    let mut pending = targets.iter().copied().peekable();
    let mut quotes = memchr::memchr_iter(b'"', data);
    let (mut inside, mut region_start) = (false, 0);
    loop {
        let next = quotes.next();
        let region_end = next.unwrap_or(data.len());
        // Between two quotes nothing changes: outside quotes, a newline ends a record.
        while !inside && let Some(&target) = pending.peek() {
            let from = target.max(region_start);
            if from >= region_end {
                break;
            }
            let Some(j) = memchr::memchr(b'\n', &data[from..region_end]) else {
                break;
            };
            let start = from + j + 1;
            while pending.peek().is_some_and(|&t| t < start) {
                pending.next();
            }
            if start < data.len() && out.last().is_none_or(|&last| last < start) {
                out.push(start);
            }
        }
        let Some(i) = next else {
            break;
        };
        let before = i.checked_sub(1).map(|k| data[k]);
        let after = data.get(i + 1).copied();
        if inside {
            if after == Some(b'"') {
                quotes.next();
                region_start = i + 2;
                continue;
            }
            if !matches!(after, None | Some(b'\n' | b'\r')) && after != Some(delimiter) {
                return None;
            }
            inside = false;
        } else {
            if !matches!(before, None | Some(b'\n' | b'\r')) && before != Some(delimiter) {
                return None;
            }
            inside = true;
        }
        region_start = i + 1;
    }
    Some((out, inside))
}

/// One wanted column of a part being parsed: plain text, or a dictionary whose runs of equal
/// values (an account's memberships are listed together) are looked up once.
enum TextBuilder {
    Plain(StringBuilder),
    Dictionary {
        builder: StringDictionaryBuilder<UInt32Type>,
        /// The run being counted, not appended yet: its value (`None`: NULL) and length.
        run: Option<Option<String>>,
        run_len: usize,
    },
}

impl TextBuilder {
    /// A builder for `rows` records of about `bytes` of text (of distinct text, `bytes / 32`
    /// values, for a dictionary).
    fn new(encoded: bool, rows: usize, bytes: usize) -> Self {
        if encoded {
            Self::Dictionary {
                builder: StringDictionaryBuilder::with_capacity(
                    rows,
                    (bytes / 32).clamp(64, rows.max(64)),
                    bytes,
                ),
                run: None,
                run_len: 0,
            }
        } else {
            Self::Plain(StringBuilder::with_capacity(rows, bytes))
        }
    }

    fn append(&mut self, v: Option<&str>) {
        match self {
            Self::Plain(b) => b.append_option(v),
            Self::Dictionary {
                builder,
                run,
                run_len,
            } => {
                if run.as_ref().is_some_and(|r| r.as_deref() == v) {
                    *run_len += 1;
                    return;
                }
                Self::flush(builder, run, *run_len);
                // The run's text buffer is reused for the next run.
                match (run.as_mut(), v) {
                    (Some(Some(text)), Some(v)) => {
                        text.clear();
                        text.push_str(v);
                    }
                    _ => *run = Some(v.map(str::to_owned)),
                }
                *run_len = 1;
            }
        }
    }

    fn flush(
        builder: &mut StringDictionaryBuilder<UInt32Type>,
        run: &Option<Option<String>>,
        n: usize,
    ) {
        match run {
            Some(Some(v)) if n > 0 => {
                // A part holds far fewer than 2^32 distinct values.
                builder
                    .append_n(v, n)
                    .expect("invariant: a part's dictionary keys fit in u32");
            }
            Some(None) if n > 0 => builder.append_nulls(n),
            _ => {}
        }
    }

    /// The part's array, and about the bytes of text the next part's builder needs (its
    /// distinct text, for a dictionary).
    fn finish(&mut self) -> (ArrayRef, usize) {
        match self {
            Self::Plain(b) => {
                let bytes = b.values_slice().len() + b.values_slice().len() / 32;
                (Arc::new(b.finish()), bytes)
            }
            Self::Dictionary {
                builder,
                run,
                run_len,
            } => {
                Self::flush(builder, run, *run_len);
                *run = None;
                *run_len = 0;
                let array = builder.finish();
                let bytes = array.values().as_string::<i32>().value_data().len();
                (Arc::new(array), bytes + bytes / 8)
            }
        }
    }
}

/// Parses the records of `chunk`, whose first line is `first_line` and which starts at byte
/// `offset` of the file; it has at most `max_records` records (one per line).
fn parse_records(
    layout: &Layout,
    chunk: &[u8],
    first_line: u64,
    offset: usize,
    max_records: usize,
) -> std::result::Result<Records, ::csv::Error> {
    let mut reader = ::csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .delimiter(layout.delimiter)
        .from_reader(chunk);
    let mut record = ::csv::ByteRecord::new();
    // Each part's builders sized as the part before ended up (growing them by doubling was
    // a tenth of a large load's time, copying).
    let sized = |bytes: &[usize]| -> Vec<TextBuilder> {
        bytes
            .iter()
            .enumerate()
            .map(|(j, &b)| {
                TextBuilder::new(
                    layout.encoded.get(j).copied().unwrap_or(false),
                    layout.batch_rows.min(1 << 16),
                    b,
                )
            })
            .collect()
    };
    let mut builders = sized(&vec![1024; layout.wanted.len()]);
    let finish = |builders: &mut Vec<TextBuilder>| -> Vec<ArrayRef> {
        let (part, bytes): (Vec<ArrayRef>, Vec<usize>) =
            builders.iter_mut().map(TextBuilder::finish).unzip();
        *builders = sized(&bytes);
        part
    };
    let mut out = Records::default();
    // Reserved at once, not grown by doubling (each copy into fresh pages, which this kind of
    // VM backs slowly).
    out.starts.reserve(max_records);
    let n_fields = layout.n_fields;
    let (mut line, mut counted) = (first_line, 0);
    while reader.read_byte_record(&mut record)? {
        let mut start = record
            .position()
            .expect("invariant: csv records carry positions")
            .byte() as usize;
        // After a `\r\n` the reader places the next record at the `\n` (and at blank lines
        // before it); a record starts at its first byte, which is never a line break.
        while matches!(chunk.get(start), Some(b'\r' | b'\n')) {
            start += 1;
        }
        line += memchr::memchr_iter(b'\n', &chunk[counted..start]).count() as u64;
        counted = start;
        out.starts.push((line, offset + start));
        // Why the row is unreadable, if it is; else its wanted fields as text (checked first,
        // then appended: no row is appended in part).
        let unreadable = if record.len() != n_fields {
            Some(format!(
                "expected {n_fields} {FIELD_COUNT}, found {}",
                record.len()
            ))
        } else {
            layout
                .indices
                .iter()
                .zip(layout.wanted)
                .find(|&(&i, _)| std::str::from_utf8(&record[i]).is_err())
                .map(|(_, name)| format!("column `{name}`: value is not valid UTF-8"))
        };
        match unreadable {
            Some(r) => {
                for b in &mut builders {
                    b.append(None);
                }
                out.bad.push((out.starts.len() - 1, r));
            }
            None => {
                for (b, &i) in builders.iter_mut().zip(layout.indices) {
                    match std::str::from_utf8(&record[i]) {
                        Ok(v) if !v.is_empty() => b.append(Some(v)),
                        _ => b.append(None),
                    }
                }
            }
        }
        if out.starts.len() % layout.batch_rows == 0 {
            out.parts.push(finish(&mut builders));
        }
    }
    if out.starts.len() % layout.batch_rows != 0 {
        out.parts.push(finish(&mut builders));
    }
    // The csv reader ends a quoted field that is never closed at the end of the text, without
    // an error: the records after the stray quote would become its value.
    if let Some(&(line, start)) = out.starts.last() {
        let record = &chunk[start - offset..];
        if let Some(q) = unclosed_quote(record, layout.delimiter) {
            let quote_line = line + memchr::memchr_iter(b'\n', &record[..q]).count() as u64;
            let value = &record[q + 1..];
            let shown: String = String::from_utf8_lossy(&value[..value.len().min(64)])
                .chars()
                .take_while(|c| *c != '\n' && *c != '\r')
                .take(30)
                .collect();
            let row = if quote_line == line {
                String::new()
            } else {
                format!(" (in the row starting on line {line})")
            };
            out.unclosed = Some(format!(
                "line {quote_line}: unterminated quoted field{row}: the quote that opens the value starting `\"{shown}…` is never closed, so the rest of the file would be read as that value; close the quote, or double it (\"\") inside a quoted field"
            ));
        }
    }
    Ok(out)
}

/// The offset of the opening quote of a quoted field that `record` (a record and what follows
/// it to the end of the text) never closes. Follows the csv reader's rules: a quote opens a
/// field only at its start, `""` inside it is a quote, and a quote elsewhere is text.
fn unclosed_quote(record: &[u8], delimiter: u8) -> Option<usize> {
    enum At {
        FieldStart,
        Unquoted,
        Quoted(usize),
        /// A quote inside a quoted field: it closes the field unless another one follows.
        QuoteInQuoted(usize),
    }
    let ends_field = |b: u8| b == delimiter || b == b'\n' || b == b'\r';
    let mut at = At::FieldStart;
    for (i, &b) in record.iter().enumerate() {
        at = match at {
            At::FieldStart if b == b'"' => At::Quoted(i),
            At::FieldStart | At::Unquoted | At::QuoteInQuoted(_) if ends_field(b) => At::FieldStart,
            At::FieldStart | At::Unquoted => At::Unquoted,
            At::Quoted(q) if b == b'"' => At::QuoteInQuoted(q),
            At::Quoted(q) => At::Quoted(q),
            At::QuoteInQuoted(q) if b == b'"' => At::Quoted(q),
            At::QuoteInQuoted(_) => At::Unquoted,
        };
    }
    match at {
        At::Quoted(q) => Some(q),
        _ => None,
    }
}

fn input(file: &Path, message: String) -> Error {
    Error::Input {
        file: file.to_path_buf(),
        message,
    }
}

fn cast_text(text: &StringArray, ty: ColumnType) -> Result<ArrayRef> {
    let safe = CastOptions {
        safe: true,
        ..Default::default()
    };
    let array: ArrayRef = match ty {
        ColumnType::String => Arc::new(text.clone()),
        ColumnType::Bool => {
            // Only `true` / `false`, in any case: Arrow's cast would also take yes/no/1/0.
            let b: BooleanArray = text
                .iter()
                .map(|v| {
                    v.and_then(|s| {
                        if s.eq_ignore_ascii_case("true") {
                            Some(true)
                        } else if s.eq_ignore_ascii_case("false") {
                            Some(false)
                        } else {
                            None
                        }
                    })
                })
                .collect();
            Arc::new(b)
        }
        ColumnType::Date => {
            // Strict `YYYY-MM-DD`: Arrow's cast also accepts longer forms.
            let shaped: StringArray = text.iter().map(|v| v.filter(|s| is_iso_date(s))).collect();
            cast_with_options(&shaped, &ty.data_type(), &safe)
                .map_err(datafusion::error::DataFusionError::from)?
        }
        ColumnType::Timestamp => {
            // RFC 3339 (an offset left out is UTC, SPEC 11.17): Arrow's cast also takes a date
            // alone and an offset without its colon.
            let shaped: StringArray = text.iter().map(|v| v.filter(|s| is_rfc3339(s))).collect();
            cast_with_options(&shaped, &ty.data_type(), &safe)
                .map_err(datafusion::error::DataFusionError::from)?
        }
        _ => cast_with_options(text, &ty.data_type(), &safe)
            .map_err(datafusion::error::DataFusionError::from)?,
    };
    Ok(array)
}

/// `YYYY-MM-DD`, `T` (or `t` or a space), `HH:MM:SS`, an optional fraction, then `Z` (or `z`),
/// `±HH:MM` or nothing. The values of the fields are the cast's to check.
fn is_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    if b.len() < 19
        || !iso_date(&b[..10])
        || !matches!(b[10], b'T' | b't' | b' ')
        || !(digits(11..13) && b[13] == b':' && digits(14..16) && b[16] == b':' && digits(17..19))
    {
        return false;
    }
    let mut rest = &b[19..];
    if let Some((b'.', fraction)) = rest.split_first() {
        let n = fraction.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return false;
        }
        rest = &fraction[n..];
    }
    match rest {
        [] | [b'Z' | b'z'] => true,
        [b'+' | b'-', h1, h2, b':', m1, m2] => [h1, h2, m1, m2].iter().all(|c| c.is_ascii_digit()),
        _ => false,
    }
}

fn is_iso_date(s: &str) -> bool {
    iso_date(s.as_bytes())
}

fn iso_date(b: &[u8]) -> bool {
    b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
}

/// One output row per value of each multi-valued cell; empty parts are dropped, so an empty
/// cell (an account in no group) gives no row: it holds no values, which is not a bad row.
fn split_cells(
    batch: &RecordBatch,
    split: &[(String, String)],
) -> datafusion::error::Result<RecordBatch> {
    let mut batch = batch.clone();
    for (column, sep) in split {
        let Some(idx) = batch.schema().index_of(column).ok() else {
            continue;
        };
        let values = batch
            .column(idx)
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("invariant: link columns are text")
            .clone();
        let mut take: Vec<u32> = Vec::new();
        let mut parts = StringBuilder::new();
        for i in 0..values.len() {
            if values.is_null(i) {
                continue;
            }
            for p in values
                .value(i)
                .split(sep.as_str())
                .map(str::trim)
                .filter(|p| !p.is_empty())
            {
                take.push(i as u32);
                parts.append_value(p);
            }
        }
        let indices = datafusion::arrow::array::UInt32Array::from(take);
        let mut columns: Vec<ArrayRef> = batch
            .columns()
            .iter()
            .map(|c| datafusion::arrow::compute::take(c, &indices, None))
            .collect::<std::result::Result<_, _>>()?;
        columns[idx] = Arc::new(parts.finish());
        batch = RecordBatch::try_new(batch.schema(), columns)?;
    }
    Ok(batch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CsvOptions;

    /// Timestamps are RFC 3339 with the offset optional (UTC); the forms Arrow's cast also
    /// takes (a date alone, an offset without its colon, a bare time) are bad values.
    #[test]
    fn timestamps_are_rfc_3339() {
        let cases = [
            ("2024-05-06T07:08:09Z", Some("2024-05-06T07:08:09Z")),
            ("2024-05-06t07:08:09z", Some("2024-05-06T07:08:09Z")),
            ("2024-05-06 07:08:09", Some("2024-05-06T07:08:09Z")),
            (
                "2024-05-06T07:08:09.5+02:00",
                Some("2024-05-06T05:08:09.500Z"),
            ),
            ("2024-05-06T07:08:09-01:30", Some("2024-05-06T08:38:09Z")),
            ("2024-05-06", None),
            ("2024-05-06T07:08:09+0200", None),
            ("2024-05-06T07:08", None),
            ("2024-05-06T07:08:09.", None),
            ("2024-05-06T07:08:09 Z", None),
            ("2024-05-06T07:08:09+02", None),
            ("2024-13-06T07:08:09Z", None),
            ("2024-05-06T07:08:0ä", None),
            ("2024-05-0éT07:08:09Z", None),
            ("1714979289", None),
        ];
        let text: StringArray = cases.iter().map(|(t, _)| Some(*t)).collect();
        let typed = cast_text(&text, ColumnType::Timestamp).unwrap();
        let shown = datafusion::arrow::compute::cast(&typed, &DataType::Utf8).unwrap();
        let shown = shown.as_any().downcast_ref::<StringArray>().unwrap();
        for (i, (t, want)) in cases.iter().enumerate() {
            let got = shown.is_valid(i).then(|| shown.value(i));
            assert_eq!(got, *want, "{t}");
        }
    }

    /// Records start after the newlines outside quotes; quotes used as text stop the split.
    #[test]
    fn record_starts_skip_quoted_newlines() {
        let data = b"a,\"x\ny\"\nb,\"say \"\"hi\"\"\"\nc,d\n";
        // A target inside the quoted newline moves to the next record, `b,…`.
        assert_eq!(record_starts_after(data, &[3], b','), Some(vec![8]));
        // A target inside the escaped quotes moves to `c,d`.
        assert_eq!(record_starts_after(data, &[14], b','), Some(vec![23]));
        assert_eq!(&data[23..], b"c,d\n");
        // Targets sharing a record start give it once; a target in the last record gives none.
        assert_eq!(record_starts_after(data, &[1, 4, 23], b','), Some(vec![8]));
        // Quotes the csv reader takes as text: no split.
        assert_eq!(record_starts_after(b"a,b\"c\nd,e\n", &[1], b','), None);
        assert_eq!(record_starts_after(b"a,\"b\"c\nd,e\n", &[1], b','), None);
        assert_eq!(record_starts_after(b"a,\"b\nd,e\n", &[1], b','), None);
        // A semicolon file: the delimiter is the field separator.
        assert_eq!(
            record_starts_after(b"a;\"b;c\"\nd;e\n", &[1], b';'),
            Some(vec![8])
        );
    }

    /// Only a quote that opens a field and is never closed leaves the field open at the end.
    #[test]
    fn unclosed_quotes_follow_the_csv_readers_rules() {
        assert_eq!(unclosed_quote(b"1,\"abc\n2,x\n3,c\n", b','), Some(2));
        assert_eq!(unclosed_quote(b"1,\"a\nb\"\n", b','), None);
        assert_eq!(unclosed_quote(b"1,\"a\"\"b\"\n", b','), None);
        assert_eq!(unclosed_quote(b"1,\"a\"\"\n", b','), Some(2));
        // Quotes inside an unquoted field, or after a closed one, are text.
        assert_eq!(unclosed_quote(b"1,a\"b\n", b','), None);
        assert_eq!(unclosed_quote(b"1,\"a\"b\"c\n", b','), None);
        assert_eq!(unclosed_quote(b"1;\"a;b\n", b';'), Some(2));
    }

    fn all(l: &Loaded) -> RecordBatch {
        datafusion::arrow::compute::concat_batches(&l.schema, &l.batches).unwrap()
    }

    /// `text` written to a file and read with `columns` and `key`, on one thread and in chunks
    /// of 100-record parts; both must give the same rows, lines, reasons and raw text.
    fn read_both_ways(
        text: &str,
        data_start: usize,
        columns: &[(&str, ColumnType)],
        key: &str,
    ) -> (Loaded, Loaded, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("export.csv");
        std::fs::write(&path, text).unwrap();
        let spec = CsvSpec {
            file: path,
            columns: columns.iter().map(|(n, t)| (n.to_string(), *t)).collect(),
            key: Some(key.into()),
            command_column: None,
            split: Vec::new(),
            dictionary: false,
            options: CsvOptions::default(),
        };
        assert!(
            chunks(&text.as_bytes()[data_start..], 0, b',').len() > 1
                || std::thread::available_parallelism().map_or(1, |n| n.get()) == 1
        );
        let one = read_in_chunks(&spec, usize::MAX, BATCH_ROWS, usize::MAX).unwrap();
        // Small parts: keys, reasons and lines must line up across part boundaries.
        let many = read_in_chunks(&spec, 0, 100, usize::MAX).unwrap();
        assert!(many.batches.iter().all(|b| b.num_rows() <= 100));
        assert_eq!(all(&one), all(&many));
        assert_eq!(one.rows_read, many.rows_read);
        let lines = |l: &Loaded| {
            l.rejected
                .iter()
                .map(|r| (r.line, r.reason.clone(), r.raw.clone(), r.key.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(lines(&one), lines(&many));
        // Read in blocks of a few records (records and quoted fields cut by a block's end),
        // in chunks and on one thread: the same rows, lines and rejected text (read again from
        // the file).
        for (parallel, block) in [(0, 300), (usize::MAX, 1000), (0, 4096)] {
            let blocks = read_in_chunks(&spec, parallel, 100, block).unwrap();
            assert_eq!(all(&one), all(&blocks), "blocks of {block} bytes");
            assert_eq!(one.rows_read, blocks.rows_read);
            assert_eq!(lines(&one), lines(&blocks), "blocks of {block} bytes");
            assert_eq!(one.starts, blocks.starts);
        }
        (one, many, dir)
    }

    /// A quoted file (separators, doubled quotes and newlines inside fields) parses in chunks
    /// to the same rows, lines and rejections as on one thread.
    #[test]
    fn quoted_file_chunked_equals_sequential() {
        let mut text = String::from("dn,note\n");
        for i in 0..3000 {
            match i % 500 {
                7 => text.push_str(&format!("\"CN=A{i},OU=X\",\"one\",\"two\"\n")),
                _ => text.push_str(&format!(
                    "\"CN=A{i},OU=X\",\"said \"\"hi\"\"\nover two lines {i}\"\n"
                )),
            }
        }
        let columns = [("dn", ColumnType::String), ("note", ColumnType::String)];
        let (one, many, _dir) = read_both_ways(&text, "dn,note\n".len(), &columns, "dn");
        assert_eq!(one.num_rows(), 2994, "6 rows with a third field");
        // Each record spans two lines: record i starts on line 2 + 2i.
        assert_eq!(many.rejected[0].line, 2 + 2 * 7);
        assert_eq!(many.rejected[0].raw, "\"CN=A7,OU=X\",\"one\",\"two\"");
        assert_eq!(many.rejected[0].key.as_deref(), Some("CN=A7,OU=X"));
        let notes = all(&many);
        let notes = notes
            .column(1)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!(notes.value(0), "said \"hi\"\nover two lines 0");
    }

    /// Files whose blocks cannot be cut at record ends with certainty are read whole: the same
    /// rows and rejections as without blocks.
    #[test]
    fn files_that_cannot_be_cut_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("export.csv");
        let mut quoted_text = String::from("id,note\n");
        let mut bare_cr = String::from("id,note\r");
        let mut long_header = format!("id,note,{}\n", "x".repeat(500));
        for i in 0..400 {
            // A quote the csv reader takes as text, in one row of many.
            let note = if i == 200 { "say \"hi\"" } else { "plain" };
            quoted_text.push_str(&format!("a{i},{note}\n"));
            bare_cr.push_str(&format!("a{i},{note}\r"));
            long_header.push_str(&format!("a{i},{note},\n"));
        }
        // A duplicated key: a rejected row whose text comes from the blocks' path or the file.
        quoted_text.push_str("a7,again\n");
        for text in [quoted_text, bare_cr, long_header] {
            std::fs::write(&path, &text).unwrap();
            let spec = CsvSpec {
                file: path.clone(),
                columns: vec![
                    ("id".into(), ColumnType::String),
                    ("note".into(), ColumnType::String),
                ],
                key: Some("id".into()),
                command_column: None,
                split: Vec::new(),
                dictionary: false,
                options: CsvOptions::default(),
            };
            let whole = read_in_chunks(&spec, usize::MAX, BATCH_ROWS, usize::MAX).unwrap();
            let blocks = read_in_chunks(&spec, 0, 100, 256).unwrap();
            assert_eq!(whole.num_rows(), 400);
            assert_eq!(all(&whole), all(&blocks));
            let rejected = |l: &Loaded| {
                l.rejected
                    .iter()
                    .map(|r| (r.line, r.reason.clone(), r.raw.clone()))
                    .collect::<Vec<_>>()
            };
            assert_eq!(rejected(&whole), rejected(&blocks));
        }
    }

    /// Link pairs parsed into dictionaries (runs of one account, NULLs, bad rows among them)
    /// decode to the rows parsed as plain text, in parts and blocks alike; the batches say
    /// they are dictionaries, the schema gives the plain type.
    #[test]
    fn dictionary_columns_decode_to_the_plain_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memberships.csv");
        let mut text = String::from("account,group,note\n");
        for i in 0..3000 {
            let account = format!("\"CN=User {},OU=Users\"", i / 7);
            match i % 401 {
                5 => text.push_str(&format!("{account},,empty group\n")),
                6 => text.push_str(&format!("{account},G1\n")),
                7 => text.push_str(&format!(",G{},no account\n", i % 13)),
                _ => text.push_str(&format!("{account},G{},n{}\n", i % 13, i % 3)),
            }
        }
        std::fs::write(&path, &text).unwrap();
        let spec = |dictionary| CsvSpec {
            file: path.clone(),
            columns: vec![
                ("account".into(), ColumnType::String),
                ("group".into(), ColumnType::String),
            ],
            key: None,
            command_column: None,
            split: Vec::new(),
            dictionary,
            options: CsvOptions::default(),
        };
        let decoded = |l: &Loaded| {
            let batches: Vec<RecordBatch> = l
                .batches
                .iter()
                .map(|b| crate::engine::cast_batch(b, &l.schema).unwrap())
                .collect();
            datafusion::arrow::compute::concat_batches(&l.schema, &batches).unwrap()
        };
        let plain = read_in_chunks(&spec(false), usize::MAX, BATCH_ROWS, usize::MAX).unwrap();
        assert_eq!(plain.num_rows(), 3000 - 8, "8 rows with too few fields");
        for (parallel, rows, block) in [
            (usize::MAX, BATCH_ROWS, usize::MAX),
            (0, 100, usize::MAX),
            (0, 64, 700),
        ] {
            let encoded = read_in_chunks(&spec(true), parallel, rows, block).unwrap();
            assert_eq!(encoded.schema, plain.schema);
            let first = encoded.batches[0].schema();
            for j in 0..2 {
                assert!(matches!(
                    first.field(j).data_type(),
                    DataType::Dictionary(k, v) if **k == DataType::UInt32 && **v == DataType::Utf8
                ));
            }
            assert_eq!(first.field(2).data_type(), &DataType::Int64, "_line");
            assert_eq!(decoded(&encoded), decoded(&plain));
            assert_eq!(encoded.rejected.len(), plain.rejected.len());
            // Each batch's dictionary holds a run's value once.
            let accounts = encoded.batches[0].column(0).as_any_dictionary();
            assert!(accounts.values().len() * 5 < accounts.len());
        }
        // NULLs stay NULLs (an empty group, no account).
        let all = decoded(&plain);
        assert_eq!(all.column(1).null_count(), 8);
        assert_eq!(all.column(0).null_count(), 8);
    }

    /// Parsed on one thread and in chunks, a file gives the same rows, lines and rejections.
    #[test]
    fn chunked_parse_equals_sequential() {
        let mut text = String::from("\u{feff}id,name,age\r\n");
        for i in 0..5000 {
            match i % 997 {
                13 => text.push_str(&format!("a{i},too,many,fields\r\n")),
                14 => text.push_str(&format!("a{i},Émile {i},not-a-number\r\n")),
                15 => text.push_str("\r\n"),
                // A key seen in an earlier part.
                20 => text.push_str("a1,Again,3\r\n"),
                _ => text.push_str(&format!("a{i},Name {i},{}\r\n", i % 90)),
            }
        }
        let columns = [("id", ColumnType::String), ("age", ColumnType::Int)];
        let (one, many, _dir) = read_both_ways(&text, 0, &columns, "id");
        assert!(many.batches.len() > 40);
        // Line numbers count the header and the blank lines; raw text is the record as written.
        let first = &many.rejected[0];
        assert_eq!(first.line, 15);
        assert_eq!(first.raw, "a13,too,many,fields");
        // The key as written, also for a row rejected before its fields were read.
        assert_eq!(first.key.as_deref(), Some("a13"));
        assert_eq!(many.rejected[1].key.as_deref(), Some("a14"));
        assert_eq!(many.raw_line(17), "", "a blank line is no record");
        assert_eq!(many.raw_line(18), "a16,Name 16,16");
        assert_eq!(one.rejected.len(), 17);
        assert_eq!(one.num_rows(), 5000 - 5 - 17, "5 blank lines, 17 bad rows");
        let duplicated = many.rejected.iter().find(|r| r.line == 1019).unwrap();
        assert_eq!(
            duplicated.reason,
            "duplicated key `id` = `a1` (first at line 3)"
        );
        assert_eq!(duplicated.key.as_deref(), Some("a1"));
        // The raw text is read again from the file, and not from a file that changed since.
        let raw = many.raw_line(1019);
        assert_eq!(raw, "a1,Again,3");
        std::fs::write(&many.file, text.replace("a1,Again,3", "a1,Changed,3")).unwrap();
        assert_eq!(many.raw_line(1019), "", "the file changed");
    }
}
