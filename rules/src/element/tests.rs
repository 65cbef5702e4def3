//! Every test vector of docs/standards.md Appendix A, and properties.

use super::calendar::{civil_from_days, days_from_civil};
use super::id::USCC_CHARS;
use super::*;

/// `value` or `!CODE` (refused) or `value ~CODE` (accepted with a warning).
fn check(rule: Rule, raw: &str) -> String {
    match rule.normalize("x", raw) {
        Ok(n) if n.warnings.is_empty() => n.value,
        Ok(n) => format!(
            "{} ~{}",
            n.value,
            n.warnings.iter().map(|w| w.code).collect::<Vec<_>>().join(",")
        ),
        Err(e) => format!("!{}", e.code),
    }
}

#[test]
fn citizen_ids() {
    let cases = [
        ("320282199001019995", "320282199001019995"),
        ("320282199512319981", "320282199512319981"),
        ("320211200002299976", "320211200002299976"),
        ("320200197006159969", "320200197006159969"),
        ("11010519491001995X", "11010519491001995X"),
        ("32028219960615118X", "32028219960615118X"),
        ("320282199001019990", "!CHECK_DIGIT"),
        ("320282199902301234", "!BIRTH_DATE"),
        ("32028219951231998", "!LENGTH"),
        ("3202821985123199A8", "!FORMAT"),
        ("990282198512311234", "!REGION"),
        ("32028219960615118x", "32028219960615118X"),
        ("320282190001019994", "320282190001019994"),
        ("320282800101123", "320282198001011235 ~UPGRADED_15"),
        ("３２０２８２１９０００１０１９９９Ｘ", "!CHECK_DIGIT"),
        (" 3202 8219 9001 0199 95\u{3000}", "320282199001019995"),
        ("3.20282E+17", "!SCIENTIFIC_NOTATION"),
    ];
    for (raw, want) in cases {
        assert_eq!(check(Rule::CitizenId, raw), want, "{raw}");
    }
    // The normalization vector: full-width digits fold to this value.
    assert_eq!(
        compact_code("３２０２８２１９０００１０１９９９Ｘ"),
        "32028219000101999X"
    );
}

#[test]
fn check_digit_message_names_standard_and_expected() {
    let e = Rule::CitizenId
        .normalize("公民身份号码", "320282199001019990")
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "CHECK_DIGIT: 公民身份号码 校验位错误 (GB 11643): expected 5, got 0"
    );
}

#[test]
fn usccs() {
    let cases = [
        ("91350100M000100Y43", "91350100M000100Y43"),
        ("91320282MA1P4Q7RXF", "91320282MA1P4Q7RXF"),
        ("123202824660123452", "123202824660123452"),
        ("52320282MJ5A8C3E8D", "52320282MJ5A8C3E8D"),
        ("92320282MA1T9K3H7K", "92320282MA1T9K3H7K"),
        ("31320282MD0123454J", "31320282MD0123454J"),
        ("Y1320282MG7W2K4NXG", "Y1320282MG7W2K4NXG"),
        ("91320282MA0000066Y", "91320282MA0000066Y"),
        ("91320282MA00001110", "91320282MA00001110"),
        ("91320282MA1P4Q7RXA", "!CHECK_DIGIT"),
        ("91320282MAOP4Q7RX0", "!FORMAT"),
        ("91320282MI1P4Q7RXF", "!FORMAT"),
        ("91320282MA1P4Q7RX", "!LENGTH"),
        ("01320282MA1P4Q7RXQ", "!AUTHORITY"),
        ("94320282MA1P4Q7RX6", "!CATEGORY"),
        ("91320282ma1p4q7rxf", "91320282MA1P4Q7RXF"),
        ("91320282MA1P4Q7R0M", "91320282MA1P4Q7R0M ~ORG_CODE_CHECK"),
    ];
    for (raw, want) in cases {
        assert_eq!(check(Rule::Uscc, raw), want, "{raw}");
    }
    assert_eq!(uscc_check(b"91350100M000100Y4"), Some('3'));
    assert_eq!(compact_code(" 9132 0282 MA1P 4Q7R \u{3000}"), "91320282MA1P4Q7R");
}

#[test]
fn org_codes() {
    for (raw, want) in [
        ("MA1P4Q7R-X", "MA1P4Q7RX"),
        ("46601234-5", "466012345"),
        ("D2143569-X", "D2143569X"),
        ("12345678-8", "123456788"),
        ("AAAAAAAA-4", "AAAAAAAA4"),
        ("12345678-9", "!CHECK_DIGIT"),
    ] {
        assert_eq!(check(Rule::OrgCode, raw), want, "{raw}");
    }
}

#[test]
fn dates_and_times() {
    for raw in [
        "2016年6月23日",
        "２０１６年６月２３日",
        "2016.6.23",
        "2016/06/23",
        "2016-06-23",
        "20160623",
        "二〇一六年六月二十三日",
    ] {
        assert_eq!(check(Rule::Date, raw), "20160623", "{raw}");
    }
    for (raw, want) in [
        ("1999-02-30", "!DATE"),
        ("2016-13-01", "!DATE"),
        ("16/6/23", "!DATE"),
        ("20000229", "20000229"),
        ("19000229", "!DATE"),
    ] {
        assert_eq!(check(Rule::Date, raw), want, "{raw}");
    }
    for (raw, want) in [
        ("2016年6月23日 14时05分", "20160623140500"),
        ("2016-06-23 14:05:09", "20160623140509"),
        ("20160623T140509", "20160623140509"),
        ("2016062314:05:09", "20160623140509"),
        ("20160623140509", "20160623140509"),
        ("2016-06-23 24:00:00", "!DATETIME"),
    ] {
        assert_eq!(check(Rule::DateTime, raw), want, "{raw}");
    }
}

/// Every form in which the databases, Excel and people write a date-time
/// with a fraction of a second or an offset.
#[test]
fn date_times_with_fractions_and_offsets() {
    for (raw, want) in [
        // PostgreSQL `timestamp`: to_jsonb, and text output.
        ("2026-11-25T17:15:46.586856", "20261125171546.586856"),
        ("2026-11-25 17:15:46.586856", "20261125171546.586856"),
        ("2026-11-25T17:15:46.5", "20261125171546.5"),
        ("2026-11-25T17:15:46", "20261125171546"),
        // PostgreSQL `timestamptz`: to_jsonb in the session's time zone, and
        // text output (`+00`, `+05:30`, local mean time to the second).
        ("2026-11-25T17:15:46.586856+00:00", "20261126011546.586856"),
        ("2026-11-25T17:15:46.586856+08:00", "20261125171546.586856"),
        ("2026-11-25 17:15:46.586856+00", "20261126011546.586856"),
        ("2026-11-25T12:15:46.5-05:00", "20261126011546.5"),
        ("2026-11-25 23:45:00+05:30", "20261126021500"),
        ("1900-01-01T00:00:00+08:05:43", "18991231235417"),
        // MySQL/MariaDB DATETIME(6), TIMESTAMP(6); MySQL's JSON keeps six
        // digits even for DATETIME(0).
        ("2026-11-25 17:15:46.586856", "20261125171546.586856"),
        ("2026-11-25 17:15:46.000000", "20261125171546"),
        ("2026-11-25 17:15:46.500000", "20261125171546.5"),
        // SQLite: strftime('%Y-%m-%d %H:%M:%f'), datetime('now'), ISO.
        ("2026-11-25 17:15:46.586", "20261125171546.586"),
        ("2026-11-25 17:15:46.000", "20261125171546"),
        ("2026-11-25 17:15:46", "20261125171546"),
        ("2026-11-25T17:15:46.586Z", "20261126011546.586"),
        ("2026-11-25T17:15:46z", "20261126011546"),
        // Excel (via calamine) and people.
        ("2016-06-23 14:05:00", "20160623140500"),
        ("2016年6月23日 14时05分09.25秒", "20160623140509.25"),
        ("２０２６-１１-２５ １７:１５:４６．５", "20261125171546.5"),
        // ISO 8601 basic and extended forms, comma as the decimal sign, a
        // space before the offset.
        ("20261125T171546+0800", "20261125171546"),
        ("20261125T171546,25Z", "20261126011546.25"),
        ("2026-11-25 17:15:46+08", "20261125171546"),
        ("2026-11-25 17:15:46.586856 +08:00", "20261125171546.586856"),
        ("2026-11-25T17:15:46-00:00", "20261126011546"),
        // Canonical values are fixed points.
        ("20261125171546.586856", "20261125171546.586856"),
        ("20261125171546.5", "20261125171546.5"),
        ("20261125171546", "20261125171546"),
        // More than six digits: rounded half up to the microsecond.
        ("2026-11-25T17:15:46.5868565", "20261125171546.586857"),
        ("2026-11-25T17:15:46.586856499", "20261125171546.586856"),
        ("2026-12-31 23:59:59.9999995", "20270101000000"),
        // Offsets across days, months, years and leap days.
        ("2026-12-31T16:00:00Z", "20270101000000"),
        ("2024-02-28T16:30:00Z", "20240229003000"),
        ("2024-03-01T07:59:59+08:00", "20240301075959"),
        ("2024-03-01T01:00:00+10:00", "20240229230000"),
    ] {
        assert_eq!(check(Rule::DateTime, raw), want, "{raw}");
        assert_eq!(check(Rule::DateTime, want), want, "{want} is a fixed point");
    }
    for raw in [
        "2026-11-25 17:15.5",
        "2026-11-25 17:15:46.",
        "2026-11-25 17:15:46.5.5",
        "2026-11-25 17:15:46.abc",
        "2026-11-25 17:15:46+8",
        "2026-11-25 17:15:46+16:00",
        "2026-11-25 17:15:46+08:60",
        "2026-11-25 17:15:46+080",
        "2026-11-25 17:15:46+",
        "2026-11-25 17:15:46ZZ",
        "2026-11-25+08:00",
        "2026-11-25 24:00:00.5",
        "9999-12-31T20:00:00Z",
        "0001-01-01T00:00:00+09:00",
        "infinity",
        "20261125171546.5868565Z+08",
    ] {
        assert_eq!(check(Rule::DateTime, raw), "!DATETIME", "{raw}");
    }
    let e = Rule::DateTime
        .normalize("更新时间", "2026-11-25T17:15:46.586856x")
        .unwrap_err();
    assert!(
        e.message.contains("fraction of a second") && e.message.contains("UTC+08:00"),
        "{e}"
    );
    assert_eq!(builtin("RQSJ").map(|e| e.max_len), Some("20261125171546.586856".len()));
}

/// Every combination of date, separator, time, fraction and offset pieces:
/// no panic, and whatever is accepted normalizes to a fixed point.
#[test]
fn date_time_pieces_normalize_to_fixed_points() {
    let dates = [
        "2026-11-25",
        "20261125",
        "2026/1/5",
        "2026年1月5日",
        "２０２６-１１-２５",
        "",
    ];
    let seps = [" ", "T", "", "t", "  "];
    let times = [
        "17:15:46",
        "171546",
        "17:15",
        "1715",
        "17时15分46秒",
        "23:59:59",
        "1:2:3",
        "",
    ];
    let points = [".", ",", ""];
    let fractions = ["5", "586856", "5868565", "9999999", "0", "000000", ""];
    let zones = [
        "Z",
        "+08:00",
        "-0530",
        "+08",
        " +08:00",
        "+15:59:59",
        "+",
        "-",
        "+1",
        "",
    ];
    let mut accepted = 0;
    for d in dates {
        for sep in seps {
            for t in times {
                for p in points {
                    for f in fractions {
                        for z in zones {
                            let raw = format!("{d}{sep}{t}{p}{f}{z}");
                            if let Ok(n) = Rule::DateTime.normalize("x", &raw) {
                                accepted += 1;
                                let again = Rule::DateTime.normalize("x", &n.value).map(|m| m.value);
                                assert_eq!(again, Ok(n.value.clone()), "{raw:?}");
                                assert!(n.value.len() == 14 || n.value.as_bytes()[14] == b'.', "{raw:?}");
                            }
                        }
                    }
                }
            }
        }
    }
    assert!(accepted > 1000, "{accepted}");
}

/// The calendar arithmetic agrees with the `time` crate on every day of
/// years 1 to 9999, and offsets convert as it converts them.
#[test]
fn offsets_convert_like_the_time_crate() {
    let epoch = time::Date::from_calendar_date(1970, time::Month::January, 1).unwrap();
    let mut day = time::Date::from_calendar_date(1, time::Month::January, 1).unwrap();
    let last = time::Date::from_calendar_date(9999, time::Month::December, 31).unwrap();
    loop {
        let (y, m, d) = (day.year() as u32, u8::from(day.month()) as u32, u32::from(day.day()));
        let days = i64::from(day.to_julian_day() - epoch.to_julian_day());
        assert_eq!(days_from_civil(y, m, d), days, "{day}");
        assert_eq!(civil_from_days(days), (i64::from(y), m, d), "{day}");
        if day == last {
            break;
        }
        day = day.next_day().unwrap();
    }
    let cst = time::UtcOffset::from_hms(8, 0, 0).unwrap();
    let mut g = Gen(7);
    for _ in 0..20_000 {
        let date = time::Date::from_julian_day(epoch.to_julian_day() - 400_000 + g.next(800_000) as i32).unwrap();
        let at = time::Time::from_hms_micro(
            g.next(24) as u8,
            g.next(60) as u8,
            g.next(60) as u8,
            g.next(1_000_000) as u32,
        )
        .unwrap();
        let (oh, om) = (g.next(15) as i8, [0, 30, 45][g.next(3) as usize] as i8);
        let sign = if g.next(2) == 0 { 1 } else { -1 };
        let offset = time::UtcOffset::from_hms(sign * oh, sign * om, 0).unwrap();
        let raw = format!(
            "{date}T{:02}:{:02}:{:02}.{:06}{}{oh:02}:{om:02}",
            at.hour(),
            at.minute(),
            at.second(),
            at.microsecond(),
            if sign > 0 { '+' } else { '-' }
        );
        let local = time::PrimitiveDateTime::new(date, at)
            .assume_offset(offset)
            .to_offset(cst);
        let mut want = format!(
            "{:04}{:02}{:02}{:02}{:02}{:02}",
            local.year(),
            u8::from(local.month()),
            local.day(),
            local.hour(),
            local.minute(),
            local.second()
        );
        if local.microsecond() != 0 {
            want.push('.');
            want.push_str(format!("{:06}", local.microsecond()).trim_end_matches('0'));
        }
        assert_eq!(check(Rule::DateTime, &raw), want, "{raw}");
    }
}

#[test]
fn phones_codes_amounts() {
    let cases = [
        (Rule::Mobile, "+86 139 1234 5678", "13912345678"),
        (Rule::Mobile, "12912345678", "!MOBILE"),
        (Rule::Mobile, "19412345678", "19412345678 ~MOBILE_PREFIX"),
        (Rule::Phone, "0510-87654321", "0510-87654321"),
        (Rule::Phone, "１３９１２３４５６７８", "13912345678"),
        (Rule::Phone, "call me", "!PHONE"),
        (Rule::Postcode, "214200", "214200"),
        (Rule::Postcode, "21420", "!POSTCODE"),
        (Rule::Gender, "男", "1"),
        (Rule::Gender, "女性", "2"),
        (Rule::Gender, "２", "2"),
        (Rule::Gender, "M", "!CODE_SET"),
        (Rule::Ethnicity, "汉族", "01"),
        (Rule::Ethnicity, "汉", "01"),
        (Rule::Ethnicity, "1", "01"),
        (Rule::Ethnicity, "基诺族", "56"),
        (Rule::Ethnicity, "崩龙族", "46"),
        (Rule::Ethnicity, "火星族", "!CODE_SET"),
        (Rule::Division, "320282", "320282"),
        (Rule::Division, "990282", "!REGION"),
        (Rule::Amount(2), "1,234.5", "1234.50"),
        (Rule::Amount(2), "-0.00", "0.00"),
        (Rule::Amount(2), "１２.３", "12.30"),
        (Rule::Amount(2), "1.234", "!AMOUNT"),
        (Rule::Text, "宜兴市，人民路", "宜兴市，人民路"),
    ];
    for (rule, raw, want) in cases {
        assert_eq!(check(rule, raw), want, "{rule:?} {raw}");
    }
}

#[test]
fn width_folding_leaves_prose_and_roman_numerals_alone() {
    assert_eq!(fold_width("ＡＢＣ１２３"), "ABC123");
    assert_eq!(fold_width("第Ⅰ期①号"), "第Ⅰ期①号");
    assert_eq!(Rule::Text.normalize("x", "第Ⅰ期，①号").unwrap().value, "第Ⅰ期，①号");
}

/// Every rule, amounts at three scales.
const EVERY_RULE: [Rule; 15] = [
    Rule::CitizenId,
    Rule::Uscc,
    Rule::OrgCode,
    Rule::Gender,
    Rule::Ethnicity,
    Rule::Date,
    Rule::DateTime,
    Rule::Division,
    Rule::Mobile,
    Rule::Phone,
    Rule::Postcode,
    Rule::Text,
    Rule::Amount(0),
    Rule::Amount(2),
    Rule::Amount(4),
];

/// A small deterministic generator, so failures reproduce.
struct Gen(u64);

impl Gen {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn random_citizen_id(g: &mut Gen) -> String {
    let provinces = [11, 32, 44, 65, 82];
    let mut body = format!(
        "{:02}{:04}{:04}{:02}{:02}{:03}",
        provinces[g.next(5) as usize],
        g.next(10_000),
        1900 + g.next(120),
        1 + g.next(12),
        1 + g.next(28),
        g.next(1000)
    );
    body.push(citizen_check(body.as_bytes()));
    body
}

fn random_uscc(g: &mut Gen) -> String {
    let mut body = format!("91{:06}", 320000 + g.next(1000));
    for _ in 0..9 {
        body.push(USCC_CHARS[g.next(31) as usize] as char);
    }
    let check = uscc_check(body.as_bytes()).unwrap();
    body.push(check);
    body
}

/// Full-width, spaced and lower-case variants of a code.
fn variants(v: &str) -> Vec<String> {
    let full: String = v.chars().map(|c| char::from_u32(c as u32 + 0xFEE0).unwrap()).collect();
    let spaced: String = v
        .chars()
        .enumerate()
        .flat_map(|(i, c)| if i % 4 == 3 { vec![c, ' '] } else { vec![c] })
        .collect();
    vec![
        v.to_owned(),
        full,
        format!(" {spaced}\u{3000}"),
        v.to_lowercase(),
        format!("{}-{}", &v[..6], &v[6..]),
    ]
}

#[test]
fn valid_codes_round_trip_and_their_variants_agree() {
    let mut g = Gen(0x9E37_79B9_7F4A_7C15);
    for _ in 0..2000 {
        for (rule, v) in [
            (Rule::CitizenId, random_citizen_id(&mut g)),
            (Rule::Uscc, random_uscc(&mut g)),
        ] {
            let canonical = rule.normalize("x", &v).unwrap_or_else(|e| panic!("{v}: {e}")).value;
            assert_eq!(canonical, v);
            for variant in variants(&v) {
                assert_eq!(
                    rule.normalize("x", &variant).map(|n| n.value),
                    Ok(v.clone()),
                    "{variant:?}"
                );
            }
        }
    }
}

#[test]
fn no_input_panics_and_canonical_values_are_fixed_points() {
    let mut g = Gen(42);
    let alphabet: Vec<char> = "0123456789Xx-/. 年月日时分秒:T+E,Zz一二〇十ＡＢ１２　\u{200B}汉族男"
        .chars()
        .collect();
    for _ in 0..20_000 {
        let len = g.next(24) as usize;
        let s: String = (0..len)
            .map(|_| alphabet[g.next(alphabet.len() as u64) as usize])
            .collect();
        for rule in EVERY_RULE {
            if let Ok(n) = rule.normalize("x", &s) {
                let again = rule.normalize("x", &n.value).map(|m| m.value);
                assert_eq!(again, Ok(n.value.clone()), "{rule:?} {s:?}");
            }
        }
    }
}

#[test]
fn push_padded_writes_what_the_formatter_writes() {
    for n in [
        0u64,
        1,
        9,
        10,
        42,
        99,
        100,
        999,
        1000,
        2024,
        9999,
        10_000,
        123_456,
        999_999,
        u64::MAX,
    ] {
        for width in [0usize, 1, 2, 4, 6, 20, 25] {
            let mut out = String::from("x");
            super::push_padded(&mut out, n, width);
            assert_eq!(out, format!("x{n:0width$}"), "{n} width {width}");
        }
    }
}

/// One-character edits of `v`: each character replaced by, and each gap
/// given, one of `alphabet` (three picked per position), each character
/// deleted, and every prefix.
fn near_misses(v: &str, alphabet: &[char], g: &mut Gen) -> Vec<String> {
    let chars: Vec<char> = v.chars().collect();
    let pick = |g: &mut Gen| alphabet[g.next(alphabet.len() as u64) as usize];
    let mut out = Vec::new();
    for i in 0..=chars.len() {
        out.push(chars[..i].iter().collect());
        for _ in 0..3 {
            let c = pick(g);
            out.push(chars[..i].iter().chain([&c]).chain(&chars[i..]).collect());
            if i < chars.len() {
                out.push(chars[..i].iter().chain([&c]).chain(&chars[i + 1..]).collect());
            }
        }
        if i < chars.len() {
            out.push(chars[..i].iter().chain(&chars[i + 1..]).collect());
        }
    }
    out
}

#[test]
fn is_canonical_is_exactly_what_normalize_keeps() {
    let mut g = Gen(0x2545_F491_4F6C_DD1D);
    // Canonical values of every rule, and values each rule changes.
    // Split at |: some seeds hold spaces.
    let mut seeds: Vec<String> = concat!(
        "0|1|2|9|01|56|97|98|00|57|",
        "320282|320282001|990282|214200|",
        "13900000000|17400000000|14400000000|12000000000|0510-12345678|051012345678|008613900000000|0086051012345|",
        "0.00|-0.00|-12.50|1234.5|007|5|-5|1E+17|3.20282E+17|",
        "20240229|20230229|20241231235959|20241231240000|20260101000000.5|20260101000000.123456|",
        "20260101000000.50|20260101000000.1234567|00010101000000|99991231235959.999999|",
        "91320282MA1X2Y3Z4A| 1|1 |测试|男|汉族"
    )
    .split('|')
    .map(str::to_owned)
    .collect();
    for _ in 0..40 {
        seeds.push(random_citizen_id(&mut g));
        seeds.push(random_uscc(&mut g));
        // One whose embedded 组织机构代码 checks too (random_uscc's does one
        // time in eleven).
        let mut uscc: String = format!("91{:06}", 320000 + g.next(1000));
        uscc.extend((0..8).map(|_| USCC_CHARS[g.next(31) as usize] as char));
        uscc.push(super::org_check(&uscc.as_bytes()[8..]).unwrap());
        uscc.push(uscc_check(uscc.as_bytes()).unwrap());
        seeds.push(uscc);
        let mut org: String = (0..8).map(|_| USCC_CHARS[g.next(31) as usize] as char).collect();
        org.push(super::org_check(org.as_bytes()).unwrap());
        seeds.push(org);
        seeds.push(format!(
            "{:04}{:02}{:02}{:02}{:02}{:02}",
            1 + g.next(9999),
            1 + g.next(12),
            1 + g.next(31),
            g.next(25),
            g.next(61),
            g.next(61)
        ));
        seeds.push(format!("1{}{:09}", 3 + g.next(7), g.next(1_000_000_000)));
        seeds.push(format!("{}.{:02}", g.next(100_000), g.next(100)));
    }
    let alphabet: Vec<char> = "0123456789X-. ET+,:x１".chars().collect();
    let mut candidates = Vec::new();
    for s in &seeds {
        candidates.extend(near_misses(s, &alphabet, &mut g));
        candidates.push(s.clone());
    }
    let mut kept = [0usize; EVERY_RULE.len()];
    for v in &candidates {
        for (i, rule) in EVERY_RULE.iter().enumerate() {
            let keeps = matches!(rule.normalize("x", v), Ok(n) if n.value == *v && n.warnings.is_empty());
            assert_eq!(rule.is_canonical(v), keeps, "{rule:?} {v:?}");
            kept[i] += usize::from(keeps);
        }
    }
    // Every rule's fast path was taken, not only refused.
    for (rule, n) in EVERY_RULE.iter().zip(kept) {
        assert!(
            n >= 4,
            "{rule:?}: only {n} of {} candidates canonical",
            candidates.len()
        );
    }
}
