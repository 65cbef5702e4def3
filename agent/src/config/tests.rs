use super::raw::parse_size;
use super::*;
use crate::normalize::Transform;

const CATALOG: &str = include_str!("../../../deploy/catalog.example.toml");

const GOOD: &str = r#"
agency = "320282-gaj"
data_dir = "data"
catalog = "catalog.toml"
[hub]
url = "https://hub.example:7443"
ca = "ca.pem"
cert = "a.pem"
key = "a.key"
[[source]]
name = "people"
type = "folder"
resource = "1010100/0001"
path = "drop"
[source.columns]
"身份证号" = "DE00001"
"姓名" = "DE00002"
"#;

fn parse(text: &str) -> Result<Config, Error> {
    Config::from_toml_str(text, Path::new("/etc/qianzhi/agent.toml"), |_| Ok(CATALOG.to_owned()))
}

fn message(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

#[test]
fn good_config_gets_defaults_and_resolved_paths() {
    let c = parse(GOOD).unwrap();
    assert_eq!(c.data_dir, PathBuf::from("/etc/qianzhi/data"));
    assert_eq!(c.hub.server_name, "hub.example");
    assert_eq!(c.hub.compression, Compression::Zstd);
    assert_eq!(c.health_listen.to_string(), "127.0.0.1:9720");
    let s = &c.sources[0];
    let f = s.folder().unwrap();
    assert_eq!(f.path, PathBuf::from("/etc/qianzhi/drop"));
    assert_eq!(f.complete, Completion::Rename);
    assert_eq!(s.mapping.columns.len(), 2);
}

#[test]
fn unknown_key_names_key_and_line() {
    let m = message(&GOOD.replace("[hub]\n", "[hub]\nurll = \"x\"\n"));
    assert!(m.contains("urll") && m.contains("line 6"), "{m}");
}

#[test]
fn bad_values_name_the_key() {
    let m = message(&GOOD.replace("[hub]\n", "[hub]\nlinger = \"soon\"\n"));
    assert!(m.contains("linger") && m.contains("not a duration"), "{m}");
    let m = message(&GOOD.replace("https://hub.example:7443", "http://hub"));
    assert!(m.contains("hub.url") && m.contains(":6:"), "{m}");
    let m = message(&GOOD.replace("[hub]\n", "[outbox]\nmax_bytes = \"12 parsecs\"\n[hub]\n"));
    assert!(m.contains("max_bytes") || m.contains("not a size"), "{m}");
}

#[test]
fn sources_are_checked_against_the_catalog() {
    let m = message(&GOOD.replace("1010100/0001", "9999/1"));
    assert!(
        m.contains("source.people.resource") && m.contains("not in the catalog"),
        "{m}"
    );
    let m = message(&GOOD.replace("1010100/0001", "2010100/0001"));
    assert!(m.contains("one data, one source"), "{m}");
    let m = message(&GOOD.replace("\"姓名\" = \"DE00002\"", "\"姓名\" = \"DE09999\""));
    assert!(m.contains("columns.姓名") && m.contains("DE09999"), "{m}");
    let m = message(&GOOD.replace("\"身份证号\" = \"DE00001\"\n", ""));
    assert!(m.contains("key item DE00001"), "{m}");
}

#[test]
fn transforms_are_checked_when_the_config_loads() {
    let with = |t: &str| format!("{GOOD}[source.transforms]\n{t}\n");
    let c = parse(&with("\"姓名\" = [\"remove_spaces\", \"map:无=未知\"]")).unwrap();
    let t = &c.sources[0].mapping.transforms["姓名"];
    assert_eq!(
        t,
        &vec![Transform::RemoveSpaces, Transform::Map("无".into(), "未知".into())]
    );
    assert_eq!(t.iter().fold(" 无 ".to_owned(), |v, t| t.apply(&v)), "未知");
    let m = message(&with("\"姓名\" = [\"reverse\"]"));
    assert!(
        m.contains("source.people.transforms.姓名") && m.contains("unknown transform") && m.contains(":19:"),
        "{m}"
    );
    let m = message(&with("\"电话\" = [\"digits_only\"]"));
    assert!(
        m.contains("transforms.电话") && m.contains("not in source.people.columns"),
        "{m}"
    );
}

#[test]
fn sizes_parse() {
    assert_eq!(parse_size("512MiB"), Some(512 << 20));
    assert_eq!(parse_size("2GB"), Some(2_000_000_000));
    assert_eq!(parse_size("10"), Some(10));
    assert_eq!(parse_size("1.5GB"), None);
}

#[test]
fn the_shipped_example_config_is_valid() {
    let text = include_str!("../../../deploy/agent.example.toml");
    let c = Config::from_toml_str(text, Path::new("/etc/qianzhi/agent.toml"), |_| Ok(CATALOG.to_owned())).unwrap();
    assert_eq!(c.sources[0].mapping.columns.len(), 8);
    assert_eq!(c.health_listen.to_string(), "127.0.0.1:9720");
}

const DB: &str = r#"
agency = "320282-gaj"
data_dir = "data"
catalog = "catalog.toml"
[hub]
url = "https://hub.example:7443"
ca = "ca.pem"
cert = "a.pem"
key = "a.key"
[[source]]
name = "db"
type = "postgres"
resource = "1010100/0001"
url = "postgres://qianzhi@127.0.0.1:5432/hukou"
table = "hr.people"
[source.columns]
sfzh = "DE00001"
xm = "DE00002"
"#;

#[test]
fn database_source_gets_defaults() {
    let c = parse(DB).unwrap();
    let db = c.sources[0].database().unwrap();
    assert_eq!(db.capture, CaptureMode::Changelog);
    assert_eq!(db.install, InstallMode::Auto);
    assert!(db.snapshot);
    assert_eq!(db.poll, Duration::from_secs(5));
    assert_eq!(db.table, "hr.people");
}

#[test]
fn database_source_errors_name_the_key() {
    let m = message(&DB.replace(
        "table = \"hr.people\"\n",
        "table = \"hr.people\"\ncapture = \"incremental\"\n",
    ));
    assert!(
        m.contains("source.db.watermark") && m.contains("cannot see deletes"),
        "{m}"
    );
    let m = message(&DB.replace("postgres://", "mysql://"));
    assert!(m.contains("source.db.url") && m.contains("postgres://"), "{m}");
    let m = message(&DB.replace("table = \"hr.people\"", "table = \"a.b.c\""));
    assert!(m.contains("source.db.table"), "{m}");
    let m = message(&DB.replace("sfzh =", "\"s`x\" ="));
    assert!(m.contains("source.db.columns"), "{m}");
    let m = message(&DB.replace("url = \"postgres://qianzhi@127.0.0.1:5432/hukou\"\n", ""));
    assert!(m.contains("needs `url`"), "{m}");
}

/// A mistyped catalog path is the `catalog` key's fault, with its line.
#[test]
fn an_unreadable_catalog_names_the_key_and_line() {
    let e = Config::from_toml_str(GOOD, Path::new("/etc/qianzhi/agent.toml"), |p| {
        Err(Error::Read {
            path: p.to_owned(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        })
    })
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("agent.toml:4: key `catalog`") && e.contains("/etc/qianzhi/catalog.toml"),
        "{e}"
    );
}

#[test]
fn the_data_dir_is_found_in_a_config_that_is_refused() {
    let origin = Path::new("/etc/qianzhi/agent.toml");
    let hint = |text: &str| data_dir_hint(text, origin);
    // Refused (an unknown key), but TOML.
    assert_eq!(
        hint(&format!("{GOOD}frobnicate = 1\n")),
        Some(PathBuf::from("/etc/qianzhi/data"))
    );
    // Not even TOML: the top-level line still says it.
    assert_eq!(
        hint("agency = \"x\"\ndata_dir = \"/srv/qz\"\n[hub\nurl = "),
        Some(PathBuf::from("/srv/qz"))
    );
    // Inside a table it is another key.
    assert_eq!(hint("agency = \"x\"\n[hub]\ndata_dir = \"/srv/qz\"\n[oops\n"), None);
    assert_eq!(hint("agency = \"x\"\n"), None);
}
