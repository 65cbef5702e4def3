//! An Excel workbook dropped in a people folder: every row of its first
//! sheet read by `XlsxRows` (zip checks, calamine streaming the cells on
//! its own thread), then read again from a middle row's position.
//!
//! The first input byte picks what the rest is: even = the file as is
//! (zip and all), odd = the worksheet, shared strings and styles XML,
//! packed here into a well-formed workbook (`qianzhi_fuzz::workbook`).

#![no_main]

use agent::source::format::Limits;
use libfuzzer_sys::fuzz_target;
use qianzhi_fuzz::{Format, SMALL, read_all, read_and_resume, workbook};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let file = if mode & 1 == 0 { rest.to_vec() } else { workbook(rest) };
    read_and_resume(Format::Xlsx, &file, Limits::default());
    read_all(Format::Xlsx, &file, Default::default(), SMALL);
});
