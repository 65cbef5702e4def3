use super::*;

#[test]
fn short_text_is_kept_and_controls_are_escaped() {
    assert_eq!(shown("ob-1"), "ob-1");
    assert_eq!(shown("宜兴市"), "宜兴市");
    assert_eq!(shown("a\nb\u{1b}[31m\u{202e}"), "a\\nb\\u{1b}[31m\\u{202e}");
}

#[test]
fn long_text_is_cut_with_its_length() {
    let long = "x".repeat(10_000);
    let s = shown(&long);
    assert_eq!(s, format!("{}… (10000 bytes)", "x".repeat(64)));
}

#[test]
fn reasons_are_cut_at_a_character_boundary() {
    let long = format!("item DE00002: {:?}", "身".repeat(100_000));
    let r = reason(&long);
    assert!(r.len() <= REASON_BYTES + 48, "{}", r.len());
    assert!(
        r.ends_with(&format!("… (reason of {} bytes truncated)", long.len())),
        "{r}"
    );
    assert_eq!(reason("short"), "short");
    assert!(!reason(&"\n".repeat(1000)).contains('\n'));
}
