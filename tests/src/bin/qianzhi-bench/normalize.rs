//! `qianzhi-bench normalize [ROWS]`: normalization alone, on this thread,
//! no I/O: messy but valid people rows through every data-element rule and
//! the protobuf encoding.

use std::borrow::Cow;
use std::path::Path;
use std::time::Instant;

use agent::normalize::{Field, Mapping, Origin, Outcome};
use tests::*;

/// The config of an agent of 320282-gaj with the people folder source and
/// every default (the paths are never opened).
pub fn gaj_config() -> agent::config::Config {
    let text = format!(
        "agency = \"{GAJ}\"\ndata_dir = \"d\"\ncatalog = \"c\"\n[hub]\nurl = \"https://h:1\"\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n{}",
        people_source("people", "drop", "")
    );
    agent::config::Config::from_toml_str(&text, Path::new("/x/agent.toml"), |_| Ok(CATALOG.to_owned())).expect("config")
}

/// The people source's mapping of the example catalog, as that agent
/// builds it from its config.
pub fn people_mapping() -> Mapping {
    let catalog = rules::catalog::Catalog::from_toml_str(CATALOG).expect("catalog");
    let config = gaj_config();
    Mapping::new(
        GAJ,
        &config.sources[0].name,
        &config.sources[0].mapping,
        catalog.resource(PEOPLE).expect("resource"),
    )
}

/// Person `i`'s values in the order `mapping` reads its columns.
pub fn fields_of(mapping: &Mapping, person: &[String; 8]) -> Vec<String> {
    mapping
        .columns()
        .map(|c| {
            let at = PEOPLE_COLUMNS.iter().position(|(h, _)| *h == c).expect("column");
            person[at].clone()
        })
        .collect()
}

/// A record as the agent encodes it from `values` (in column order).
pub fn encode(mapping: &Mapping, values: &[String], line: u64) -> Option<Vec<u8>> {
    let fields: Vec<Field<'_>> = values.iter().map(|v| Some(Ok(Cow::Borrowed(v.as_str())))).collect();
    match mapping.normalize(
        &fields,
        Origin {
            object: "bench.csv",
            line,
        },
        0,
    ) {
        Outcome::Record { bytes, .. } => Some(bytes),
        _ => None,
    }
}

pub fn run(rows: u64) {
    let mapping = people_mapping();
    // The kinds of mess real exports have.
    let distinct = 10_000u64;
    let inputs: Vec<Vec<String>> = (0..distinct)
        .map(|i| {
            let mut p = person(i);
            p[0] = p[0].to_lowercase();
            p[1] = format!(" {} ", p[1]);
            p[2] = if i % 2 == 0 { "男".into() } else { "女".into() };
            p[4] = "汉族".into();
            p[6] = format!("+86 {}", p[6]);
            p[7] = "2024年3月1日".into();
            fields_of(&mapping, &p)
        })
        .collect();
    let start = Instant::now();
    let (mut ok, mut bytes) = (0u64, 0usize);
    for n in 0..rows {
        if let Some(r) = encode(&mapping, &inputs[(n % distinct) as usize], n) {
            ok += 1;
            bytes += r.len();
        }
    }
    let elapsed = start.elapsed();
    assert_eq!(ok, rows, "every bench row is valid");
    println!("| figure | value |");
    println!("|---|---|");
    println!("| rows normalized (8 fields, one core) | {rows} |");
    println!("| time | {:.2} s |", elapsed.as_secs_f64());
    println!("| **records/s** | **{:.0}** |", rows as f64 / elapsed.as_secs_f64());
    println!("| mean encoded record | {} bytes |", bytes as u64 / rows.max(1));
}
