//! What the fuzz targets share: the example catalog, the people mapping of
//! the end-to-end tests, and the drop-folder readers driven the way the
//! folder source drives them.
//!
//! Nothing here re-implements agent or hub code: it builds the real
//! structures and calls the real readers and rules, and turns the
//! invariants of ARCHITECTURE.md into panics the fuzzer can find.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

use std::fs::File;
use std::io::{Seek, Write};
use std::sync::OnceLock;

use rules::catalog::Catalog;
use agent::config::MappingConfig;
use agent::normalize::{Mapping, Outcome};
use agent::source::format::{Charset, CsvRows, JsonRows, Limits, Pos, Rows, Unreadable, Utf8Evidence, XlsxRows};

/// The agency that provides the people resource.
pub const AGENCY: &str = "320282-gaj";
pub const PEOPLE: &str = "1010100/0001";

/// `tests/src/lib.rs` PEOPLE_COLUMNS: the header of every people file.
pub const PEOPLE_COLUMNS: [(&str, &str); 8] = [
    ("公民身份号码", "DE00001"),
    ("姓名", "DE00002"),
    ("性别", "DE00003"),
    ("出生日期", "DE00004"),
    ("民族", "DE00005"),
    ("住址", "DE00006"),
    ("联系电话", "DE00007"),
    ("登记日期", "DE00008"),
];

/// `deploy/catalog.example.toml`, parsed once.
pub fn catalog() -> &'static Catalog {
    static CATALOG: OnceLock<Catalog> = OnceLock::new();
    CATALOG.get_or_init(|| {
        Catalog::from_toml_str(include_str!("../../deploy/catalog.example.toml")).expect("the example catalog parses")
    })
}

/// The people mapping of `deploy/agent.example.toml` (and of the
/// end-to-end tests), as config validation would build it.
pub fn people_source(op_column: Option<&str>) -> MappingConfig {
    MappingConfig {
        op_column: op_column.map(str::to_owned),
        transforms: Default::default(),
        columns: PEOPLE_COLUMNS
            .iter()
            .map(|(c, e)| ((*c).to_owned(), (*e).to_owned()))
            .collect(),
    }
}

/// The people mapping, built once.
pub fn people_mapping() -> &'static Mapping {
    static MAPPING: OnceLock<Mapping> = OnceLock::new();
    MAPPING.get_or_init(|| {
        let resource = catalog()
            .resource(PEOPLE)
            .expect("the example catalog has the people resource");
        Mapping::new(AGENCY, "people", &people_source(None), resource)
    })
}

/// Small limits, so that short inputs reach the oversized-row and
/// oversized-value paths.
pub const SMALL: Limits = Limits {
    max_value: 40,
    max_row: 300,
};

/// A file holding `data`, read through its own handle (the xlsx reader's
/// thread may still hold an earlier one).
pub fn file_with(data: &[u8]) -> File {
    let mut f = tempfile::tempfile().expect("a temp file");
    f.write_all(data).expect("write the temp file");
    f.rewind().expect("rewind the temp file");
    f
}

/// The drop-folder readers, as `folder.rs` opens them.
#[derive(Debug, Clone, Copy)]
pub enum Format {
    Csv(Charset),
    Jsonl(Charset),
    Xlsx,
}

/// Opens `data` as the folder source does, into the agent's own [`Rows`].
pub fn open(format: Format, data: &[u8], from: Pos, limits: Limits) -> Result<Rows, Unreadable> {
    let mapping = people_mapping();
    let file = file_with(data);
    Ok(match format {
        Format::Csv(charset) => Rows::Csv(Box::new(CsvRows::open(file, charset, mapping, from, limits)?)),
        Format::Jsonl(charset) => Rows::Json(JsonRows::open(file, charset, from, limits)?),
        Format::Xlsx => Rows::Xlsx(XlsxRows::open(file, mapping, from, limits)?),
    })
}


/// Every row of a file, each checked; `complete` is false when the read
/// ended on an I/O error (a file the folder retries later).
pub struct Read {
    pub rows: Vec<(String, Pos)>,
    pub complete: bool,
}

/// Reads every row of `data` from `from`, checking each record the way
/// the hub will.
pub fn read_all(format: Format, data: &[u8], from: Pos, limits: Limits) -> Option<Read> {
    if let Format::Xlsx = format {
        reader_thread::watch();
    }
    let read = read_rows(format, data, from, limits);
    if let Format::Xlsx = format
        && let Some((message, location)) = reader_thread::settle()
        && read.as_ref().is_some_and(|r| r.complete)
    {
        panic!("the xlsx-reader thread panicked at {location}: {message}, yet the sheet read as complete");
    }
    read
}

fn read_rows(format: Format, data: &[u8], from: Pos, limits: Limits) -> Option<Read> {
    let mut reader = match open(format, data, from, limits) {
        Ok(r) => r,
        Err(e) => {
            if verbose() {
                eprintln!("{format:?} {limits:?} from {from:?}: unreadable file: {}", e.0);
            }
            return None;
        }
    };
    let mut rows = Vec::new();
    loop {
        match reader.next(people_mapping()) {
            Ok(Some((row, pos))) => {
                // The row as text, for comparing two reads of the same file.
                let outcome = people_mapping().apply(row, "fuzz", 0);
                if let Outcome::Record { bytes, .. } = &outcome {
                    check_record(bytes);
                }
                let text = format!("{outcome:?}");
                if verbose() {
                    eprintln!("{format:?} {limits:?} from {from:?}: {text} at {pos:?}");
                }
                rows.push((text, pos));
            }
            Ok(None) => {
                if verbose() {
                    eprintln!(
                        "{format:?} {limits:?} from {from:?}: end of file after {} rows",
                        rows.len()
                    );
                }
                return Some(Read { rows, complete: true });
            }
            Err(e) => {
                if verbose() {
                    eprintln!("{format:?} {limits:?} from {from:?}: read error: {e}");
                }
                return Some(Read { rows, complete: false });
            }
        }
    }
}

/// Known findings, set aside while fuzzing for new ones (README.md).
/// `run.sh` sets `QIANZHI_FUZZ_SKIP_KNOWN=1` when it fuzzes; without it
/// (`run.sh replay`, or running a reproducer by hand) each known finding
/// still fails, until it is fixed.
pub mod known {
    use std::sync::OnceLock;

    pub fn skip() -> bool {
        static SKIP: OnceLock<bool> = OnceLock::new();
        *SKIP.get_or_init(|| std::env::var_os("QIANZHI_FUZZ_SKIP_KNOWN").is_some())
    }
}

/// The agent reads a workbook on a thread of its own (`xlsx-reader`) and
/// catches a panic of calamine's there (the file is then unreadable). The
/// hook records such a panic instead of aborting at once (libfuzzer-sys
/// aborts on any panic, caught or not), so that the thread unwinds as it
/// does in the agent; [`settle`] says after the read whether one
/// happened, and the input fails only if the file still read as complete
/// (rows lost without a word).
mod reader_thread {
    use std::sync::{Mutex, OnceLock};

    static PANIC: Mutex<Option<(String, String)>> = Mutex::new(None);

    pub fn watch() {
        static ONCE: OnceLock<()> = OnceLock::new();
        ONCE.get_or_init(|| {
            let abort = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                if std::thread::current().name() != Some("xlsx-reader") {
                    return abort(info);
                }
                let message = info.payload_as_str().unwrap_or("(not a string)").to_owned();
                let location = info.location().map_or(String::new(), |l| l.to_string());
                let mut first = PANIC.lock().unwrap_or_else(|e| e.into_inner());
                first.get_or_insert((message, location));
            }));
        });
    }

    /// Waits for the reader threads of this input (one whose consumer
    /// stopped early ends at its next row), then returns the first panic
    /// one of them had, with its location.
    pub fn settle() -> Option<(String, String)> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while running() {
            assert!(
                std::time::Instant::now() < deadline,
                "an xlsx-reader thread still runs 60 s after its file was dropped"
            );
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        PANIC.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Whether a thread named `xlsx-reader` is alive (Linux: the names of
    /// this process's threads are in /proc).
    fn running() -> bool {
        let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
            return false;
        };
        tasks
            .flatten()
            .any(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|name| name.trim_end() == "xlsx-reader"))
    }
}

/// `QIANZHI_FUZZ_VERBOSE=1` prints every row read (to look at a
/// reproducer: `cargo fuzz run TARGET FILE`).
fn verbose() -> bool {
    static VERBOSE: OnceLock<bool> = OnceLock::new();
    *VERBOSE.get_or_init(|| std::env::var_os("QIANZHI_FUZZ_VERBOSE").is_some())
}

/// What the agent sends is what the hub accepts: a record made by
/// `normalize` passes the hub's `Resource::check`.
pub fn check_record(bytes: &[u8]) {
    let record = proto::view::RecordView::decode(bytes).expect("the agent's record reads as the hub reads it");
    let resource = catalog()
        .resource(&record.resource)
        .expect("the agent's record names a catalog resource");
    if let Err(v) = resource.check(AGENCY, &record) {
        panic!("the hub refuses a record the agent made: {v}\nrecord: {record:?}");
    }
}

/// Reads `data` in full, then again from the position after a row in its
/// middle (as after a crash): the rows after it must be the same.
pub fn read_and_resume(format: Format, data: &[u8], limits: Limits) {
    let Some(whole) = read_all(format, data, Pos::default(), limits) else {
        return;
    };
    if !whole.complete || whole.rows.len() < 2 {
        return;
    }
    let k = whole.rows.len() / 2;
    let from = whole.rows[k - 1].1;
    if known::skip() && matches!(format, Format::Xlsx) && whole.rows.windows(2).any(|w| w[1].1.line <= w[0].1.line) {
        // Known: a workbook resumes by sheet line, so rows out of order are
        // skipped after a resume (README.md, finding 4).
        return;
    }
    let resumed = read_all(format, data, from, limits).expect("a file that opened opens again to resume");
    assert!(resumed.complete, "a resumed read fails where the whole read did not");
    let expected: Vec<&(String, Pos)> = whole.rows[k..].iter().collect();
    let got: Vec<&(String, Pos)> = resumed.rows.iter().collect();
    assert_eq!(got, expected, "resuming at {from:?} reads other rows than reading on");
}

/// The encoding evidence of a whole file does not depend on how its bytes
/// were cut into chunks; deciding the charset does not panic.
pub fn check_evidence(data: &[u8]) -> Charset {
    let mut whole = Utf8Evidence::default();
    whole.update(data);
    whole.finish();
    let mut chunked = Utf8Evidence::default();
    // Odd chunk sizes: 1, 3, 5, 7, 1, 3, …, so that multi-byte sequences
    // are cut at every offset.
    let mut rest = data;
    let mut size = 1;
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(size.min(rest.len()));
        chunked.update(chunk);
        rest = tail;
        size = if size >= 7 { 1 } else { size + 2 };
    }
    chunked.finish();
    assert_eq!(chunked, whole, "the evidence depends on the chunk boundaries");
    let _ = whole.is_clearly_utf8();
    whole.charset()
}

/// A catalog of the rules the example catalog does not use: items checked
/// by their type alone, and custom elements with a pattern, a minimum
/// length or a decimal scale.
pub const RULES_CATALOG: &str = r#"
[[element]]
id = "XKZH"
name = "许可证号"
pattern = "[A-Z]{2}[0-9]{4,8}"
min_len = 6
max_len = 10

[[element]]
id = "ZCZB"
name = "注册资本"
type = "decimal"
scale = 4

[[element]]
id = "RS"
name = "人数"
type = "integer"
codes = ["0", "1", "10", "-1"]

[[resource]]
code = "9000000/0001"
name = "规则"
provider = "320282-gaj"
sharing = "无条件共享"
cycle = "每日"

[[resource.item]]
id = "P1"
name = "整数"
type = "integer"
key = true
required = true

[[resource.item]]
id = "P2"
name = "小数"
type = "decimal"
max_len = 12

[[resource.item]]
id = "P3"
name = "日期"
type = "date"

[[resource.item]]
id = "P4"
name = "日期时间"
type = "datetime"

[[resource.item]]
id = "P5"
name = "文本"
max_len = 8

[[resource.item]]
id = "C1"
name = "许可证号"
element = "XKZH"

[[resource.item]]
id = "C2"
name = "注册资本"
element = "ZCZB"

[[resource.item]]
id = "C3"
name = "人数"
element = "RS"
"#;

/// [`RULES_CATALOG`], parsed once.
pub fn rules_catalog() -> &'static Catalog {
    static CATALOG: OnceLock<Catalog> = OnceLock::new();
    CATALOG.get_or_init(|| Catalog::from_toml_str(RULES_CATALOG).expect("the rules catalog parses"))
}

/// The parts of a one-sheet workbook around the sheet itself.
const CONTENT_TYPES: &str = r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types"><Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/><Default Extension="xml" ContentType="application/xml"/><Override PartName="/xl/workbook.xml" ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/><Override PartName="/xl/worksheets/sheet1.xml" ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/><Override PartName="/xl/sharedStrings.xml" ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sharedStrings+xml"/><Override PartName="/xl/styles.xml" ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.styles+xml"/></Types>"#;
const ROOT_RELS: &str = r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships"><Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument" Target="xl/workbook.xml"/></Relationships>"#;
const WORKBOOK: &str = r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<workbook xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships"><sheets><sheet name="Sheet1" sheetId="1" r:id="rId1"/></sheets></workbook>"#;
const WORKBOOK_RELS: &str = r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships"><Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/worksheet" Target="worksheets/sheet1.xml"/><Relationship Id="rId2" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/sharedStrings" Target="sharedStrings.xml"/><Relationship Id="rId3" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/styles" Target="styles.xml"/></Relationships>"#;

/// A well-formed .xlsx (stored, not deflated) around fuzzed parts: the
/// worksheet, the shared strings and the styles, separated by NUL bytes
/// (which XML cannot hold); a missing part is left out. So the fuzzer
/// spends its time in the XML the workbook reader parses, not in zip
/// checksums.
pub fn workbook(parts: &[u8]) -> Vec<u8> {
    use zip::write::SimpleFileOptions;
    let mut parts = parts.splitn(3, |&b| b == 0);
    let sheet = parts.next().unwrap_or_default();
    let shared = parts.next();
    let styles = parts.next();
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let stored = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let fixed = [
        ("[Content_Types].xml", CONTENT_TYPES.as_bytes()),
        ("_rels/.rels", ROOT_RELS.as_bytes()),
        ("xl/workbook.xml", WORKBOOK.as_bytes()),
        ("xl/_rels/workbook.xml.rels", WORKBOOK_RELS.as_bytes()),
        ("xl/worksheets/sheet1.xml", sheet),
    ];
    let fuzzed = [("xl/sharedStrings.xml", shared), ("xl/styles.xml", styles)];
    let present = fuzzed.iter().filter_map(|(n, p)| Some((*n, (*p)?)));
    for (name, bytes) in fixed.into_iter().chain(present) {
        zip.start_file(name, stored).expect("a zip entry in memory");
        zip.write_all(bytes).expect("a zip entry in memory");
    }
    zip.finish().expect("a zip in memory").into_inner()
}
