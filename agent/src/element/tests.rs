//! Every test vector of shared/standards.md Appendix A, and properties.

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
    let alphabet: Vec<char> = "0123456789Xx-/. 年月日时分秒:T+E,一二〇十ＡＢ１２　\u{200B}汉族男"
        .chars()
        .collect();
    let rules = [
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
        Rule::Amount(2),
    ];
    for _ in 0..20_000 {
        let len = g.next(24) as usize;
        let s: String = (0..len)
            .map(|_| alphabet[g.next(alphabet.len() as u64) as usize])
            .collect();
        for rule in rules {
            if let Ok(n) = rule.normalize("x", &s) {
                let again = rule.normalize("x", &n.value).map(|m| m.value);
                assert_eq!(again, Ok(n.value.clone()), "{rule:?} {s:?}");
            }
        }
    }
}
