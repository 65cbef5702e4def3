//! A CSV file dropped in a people folder: every row read by `CsvRows` as
//! UTF-8 and as GB18030, with the default limits and with small ones, then
//! read again from a middle row's position (a resume after a crash).

#![no_main]

use agent::source::format::{Charset, Limits};
use libfuzzer_sys::fuzz_target;
use qianzhi_fuzz::{Format, SMALL, check_evidence, read_all, read_and_resume};

fuzz_target!(|data: &[u8]| {
    let charset = check_evidence(data);
    read_and_resume(Format::Csv(Charset::Utf8), data, Limits::default());
    read_and_resume(Format::Csv(Charset::Gb18030), data, Limits::default());
    read_all(Format::Csv(charset), data, Default::default(), SMALL);
});
