use calamine::{Data, ExcelDateTime, ExcelDateTimeType};

use std::fs::File;
use std::io::Seek;

use super::*;
use crate::normalize::Outcome;

fn text(d: &Data, item: &str) -> Result<String, &'static str> {
    let catalog =
        rules::catalog::Catalog::from_toml_str(include_str!("../../../../deploy/catalog.example.toml")).unwrap();
    let item = catalog.resource("1010100/0001").unwrap().item(item).unwrap();
    match cell(d, Some(item)) {
        Some(Ok(v)) => Ok(v.into_owned()),
        Some(Err(e)) => Err(e.code),
        None => Err("empty"),
    }
}

#[test]
fn excel_serial_dates_in_both_systems() {
    // docs/standards.md: serials 42544 / 59 / 61 in the 1900 system.
    assert_eq!(text(&Data::Float(42544.0), "DE00004"), Ok("2016-06-23".into()));
    assert_eq!(text(&Data::Int(59), "DE00004"), Ok("1900-02-28".into()));
    assert_eq!(text(&Data::Int(61), "DE00004"), Ok("1900-03-01".into()));
    let d1904 = Data::DateTime(ExcelDateTime::new(0.0, ExcelDateTimeType::DateTime, true));
    assert_eq!(text(&d1904, "DE00004"), Ok("1904-01-01".into()));
    let d1900 = Data::DateTime(ExcelDateTime::new(42544.0, ExcelDateTimeType::DateTime, false));
    assert_eq!(text(&d1900, "DE00008"), Ok("2016-06-23".into()));
}

#[test]
fn numbers_never_stand_for_identifiers() {
    assert_eq!(
        text(&Data::Float(3.20282199001019e17), "DE00001"),
        Err("NUMERIC_IDENTIFIER")
    );
    assert_eq!(text(&Data::Int(214200), "DE00001"), Err("NUMERIC_IDENTIFIER"));
    // A mobile number is exact as a number; a name is not an identifier.
    assert_eq!(text(&Data::Float(13912345678.0), "DE00007"), Ok("13912345678".into()));
    assert_eq!(text(&Data::Int(1), "DE00003"), Ok("1".into()));
    assert_eq!(text(&Data::Empty, "DE00002"), Err("empty"));
}

#[test]
fn utf8_evidence_is_the_same_whatever_the_chunks() {
    let mut text = "公民身份号码,姓名\n320282199001019995,李四\n".repeat(50).into_bytes();
    text.insert(200, 0xB0);
    let mut whole = Utf8Evidence::default();
    whole.update(&text);
    whole.finish();
    assert_eq!(whole.invalid, 1);
    assert_eq!(whole.multibyte as usize, "公民身份号码姓名李四".chars().count() * 50);
    assert_eq!(whole.charset(), Charset::Utf8);
    for size in [1, 2, 3, 7, 64] {
        let mut parts = Utf8Evidence::default();
        for chunk in text.chunks(size) {
            parts.update(chunk);
        }
        parts.finish();
        assert_eq!(
            (parts.multibyte, parts.invalid),
            (whole.multibyte, whole.invalid),
            "{size}"
        );
    }
    // GBK text: its bytes are mostly not UTF-8.
    let (gbk, _, _) = encoding_rs::GB18030.encode("姓名,李四,王五,赵六\n");
    let mut e = Utf8Evidence::default();
    e.update(&gbk);
    e.finish();
    assert_eq!(e.charset(), Charset::Gb18030);
    let bytes: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
    assert_eq!(leads(&bytes), bytes.iter().filter(|&&b| b >= 0xC0).count() as u64);
}

fn people_mapping() -> Mapping {
    let catalog =
        rules::catalog::Catalog::from_toml_str(include_str!("../../../../deploy/catalog.example.toml")).unwrap();
    let columns = [
        ("公民身份号码", "DE00001"),
        ("姓名", "DE00002"),
        ("性别", "DE00003"),
        ("出生日期", "DE00004"),
    ];
    let mapping = crate::config::MappingConfig {
        columns: columns
            .iter()
            .map(|(c, e)| ((*c).to_owned(), (*e).to_owned()))
            .collect(),
        ..Default::default()
    };
    Mapping::new(
        "320282-gaj",
        "people",
        &mapping,
        catalog.resource("1010100/0001").unwrap(),
    )
}

fn temp_file(bytes: &[u8]) -> File {
    use std::io::Write as _;
    let mut f = tempfile::tempfile().unwrap();
    f.write_all(bytes).unwrap();
    f.rewind().unwrap();
    f
}

/// Found by fuzzing: a row that starts with the bytes of a BOM, read
/// again from its position after a restart, lost them (csv-core strips a
/// BOM at what it takes for the start of a file).
#[test]
fn a_csv_resumed_before_bom_bytes_reads_the_same_rows() {
    let m = people_mapping();
    let text = "公民身份号码,姓名,性别,出生日期\n320282199001019995,李四,1,1990-01-01\n\u{FEFF}320282199001019995,王五,2,1990-01-01\n";
    let read = |from: Pos| {
        let mut rows = CsvRows::open(temp_file(text.as_bytes()), Charset::Utf8, &m, from, Limits::default()).unwrap();
        let mut out = Vec::new();
        while let Some((row, pos)) = rows.next_row().unwrap() {
            let kind = match m.apply(row, "f.csv", 0) {
                Outcome::Record { bytes, .. } => format!("record {bytes:?}"),
                Outcome::Quarantine(q) => format!("quarantine {q:?}"),
            };
            out.push((kind, pos));
        }
        out
    };
    let whole = read(Pos::default());
    assert_eq!(whole.len(), 2);
    assert_eq!(read(whole[0].1), whole[1..]);
}

/// A workbook of one worksheet with the people header (shared strings 0 to
/// 3) then `rows` (the `<row>` elements from sheet line 2), and `filler`
/// shared strings more. The worksheet comes before the shared strings, as
/// Excel writes them.
fn workbook(rows: &str, filler: usize, method: zip::CompressionMethod) -> Vec<u8> {
    use std::io::Write as _;
    let ns = "http://schemas.openxmlformats.org/";
    // Strings that do not compress away: the table's share of the file.
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let filler: String = (0..filler)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            format!("<si><t>{x:016x}</t></si>")
        })
        .collect();
    let parts = [
        (
            "[Content_Types].xml",
            format!(
                r#"<?xml version="1.0"?><Types xmlns="{ns}package/2006/content-types"><Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/><Default Extension="xml" ContentType="application/xml"/><Override PartName="/xl/workbook.xml" ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/><Override PartName="/xl/worksheets/sheet1.xml" ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/><Override PartName="/xl/sharedStrings.xml" ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sharedStrings+xml"/></Types>"#
            ),
        ),
        (
            "_rels/.rels",
            format!(
                r#"<?xml version="1.0"?><Relationships xmlns="{ns}package/2006/relationships"><Relationship Id="rId1" Type="{ns}officeDocument/2006/relationships/officeDocument" Target="xl/workbook.xml"/></Relationships>"#
            ),
        ),
        (
            "xl/workbook.xml",
            format!(
                r#"<?xml version="1.0"?><workbook xmlns="{ns}spreadsheetml/2006/main" xmlns:r="{ns}officeDocument/2006/relationships"><sheets><sheet name="S" sheetId="1" r:id="rId1"/></sheets></workbook>"#
            ),
        ),
        (
            "xl/_rels/workbook.xml.rels",
            format!(
                r#"<?xml version="1.0"?><Relationships xmlns="{ns}package/2006/relationships"><Relationship Id="rId1" Type="{ns}officeDocument/2006/relationships/worksheet" Target="worksheets/sheet1.xml"/><Relationship Id="rId2" Type="{ns}officeDocument/2006/relationships/sharedStrings" Target="sharedStrings.xml"/></Relationships>"#
            ),
        ),
        (
            "xl/worksheets/sheet1.xml",
            format!(
                r#"<?xml version="1.0"?><worksheet xmlns="{ns}spreadsheetml/2006/main"><sheetData><row r="1"><c r="A1" t="s"><v>0</v></c><c r="B1" t="s"><v>1</v></c><c r="C1" t="s"><v>2</v></c><c r="D1" t="s"><v>3</v></c></row>{rows}</sheetData></worksheet>"#
            ),
        ),
        (
            "xl/sharedStrings.xml",
            format!(
                r#"<?xml version="1.0"?><sst xmlns="{ns}spreadsheetml/2006/main"><si><t>公民身份号码</t></si><si><t>姓名</t></si><si><t>性别</t></si><si><t>出生日期</t></si>{filler}</sst>"#
            ),
        ),
    ];
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default().compression_method(method);
    for (name, text) in &parts {
        zip.start_file(*name, options).unwrap();
        zip.write_all(text.as_bytes()).unwrap();
    }
    zip.finish().unwrap().into_inner()
}

/// Found by fuzzing: calamine panics on a shared-string index past the
/// table. The file is unreadable (an error), never a silent end of the
/// sheet that would move unread rows to done/.
#[test]
fn a_worksheet_calamine_panics_on_is_an_error_not_an_end() {
    let m = people_mapping();
    // Row 2 is a person; row 3 names shared string 99 of a table of four.
    let rows = r#"<row r="2"><c r="A2" t="inlineStr"><is><t>320282199001019995</t></is></c><c r="B2" t="inlineStr"><is><t>李四</t></is></c></row><row r="3"><c r="A3" t="s"><v>99</v></c></row><row r="4"><c r="A4" t="inlineStr"><is><t>x</t></is></c></row>"#;
    let bytes = workbook(rows, 0, zip::CompressionMethod::Stored);
    let mut rows = XlsxRows::open(temp_file(&bytes), &m, Pos::default(), Limits::default()).unwrap();
    loop {
        match rows.next_row(&m) {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the sheet ended silently: rows after the bad cell would be lost"),
            Err(e) => {
                assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}");
                break;
            }
        }
    }
}

/// A workbook's read counts in its worksheet's compressed bytes: the
/// shared strings are read whole before the rows and lie after the
/// worksheet, so the file's offset would stop far short of the end.
#[test]
fn a_workbook_read_counts_the_compressed_bytes_of_its_worksheet() {
    let m = people_mapping();
    const ROWS: u32 = 20_000;
    let rows: String = (2..ROWS + 2)
        .map(|r| format!(r#"<row r="{r}"><c r="A{r}" t="inlineStr"><is><t>3202821990{r:08}</t></is></c><c r="B{r}" t="inlineStr"><is><t>名{r}</t></is></c></row>"#))
        .collect();
    let bytes = workbook(&rows, 50_000, zip::CompressionMethod::Deflated);
    let sheet = zip::ZipArchive::new(std::io::Cursor::new(&bytes))
        .unwrap()
        .by_name("xl/worksheets/sheet1.xml")
        .unwrap()
        .compressed_size();
    assert!(
        sheet < bytes.len() as u64 / 2,
        "the shared strings are most of the file: {sheet} of {}",
        bytes.len()
    );

    let mut reader = Rows::Xlsx(XlsxRows::open(temp_file(&bytes), &m, Pos::default(), Limits::default()).unwrap());
    let mut seen = Vec::new();
    while reader.next(&m).unwrap().is_some() {
        seen.push(reader.consumed());
    }
    assert_eq!(seen.len(), ROWS as usize);
    let read: Vec<u64> = seen
        .iter()
        .map(|c| match c {
            Consumed::Sheet { read, size } if *size == sheet => *read,
            other => panic!("not the worksheet's bytes: {other:?}"),
        })
        .collect();
    assert!(read.windows(2).all(|w| w[0] <= w[1]), "the count never goes back");
    let half = read[read.len() / 2];
    assert!(
        half > sheet / 4 && half < sheet * 3 / 4,
        "{half} of {sheet} at half the rows"
    );
    assert_eq!(read.last(), Some(&sheet));
}
