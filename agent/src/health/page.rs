//! The status page at `/`: the `/status` document ([`Status`]) as one screen
//! of HTML for a person at the machine, in Chinese with the English codes
//! that the logs, `qianzhi status` and the operations guide use. It reloads
//! itself every 5 seconds with a meta refresh and needs nothing from the
//! network: no script, no external asset, the style inline. Every value that
//! is not this file's own text (names, errors, reasons, codes) goes through
//! [`esc`], since file names and reasons come from the drop folder and the
//! hub.
//!
//! Not here: the data (`status`) or the route (`server`).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::units::{bytes, count, duration, percent};
use super::{ByteMeasure, FileProgress, LinkState, SourceStatus, Status};

/// Seconds between reloads.
const REFRESH: u32 = 5;

/// `s` with the characters HTML gives a meaning escaped: safe as text and
/// inside a quoted attribute.
pub fn esc(s: &str) -> Cow<'_, str> {
    if !s.contains(['&', '<', '>', '"', '\'']) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// The whole page.
pub fn render(s: &Status) -> String {
    let mut o = String::with_capacity(16 << 10);
    let _ = write!(
        o,
        "<!DOCTYPE html>\n<html lang=\"zh-CN\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH}\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>前置 · {} · 状态</title><style>{STYLE}</style></head><body>\n",
        esc(&s.agency)
    );
    header(&mut o, s);
    warnings(&mut o, &s.degraded);
    o.push_str("<div class=\"row\">");
    link(&mut o, s);
    queue(&mut o, s);
    quarantine(&mut o, s);
    o.push_str("</div>\n");
    sources(&mut o, &s.sources);
    o.push_str("<div class=\"row\">");
    rejected(&mut o, &s.sources);
    freshness(&mut o, s);
    subscriptions(&mut o, s);
    o.push_str("</div>\n</body></html>\n");
    o
}

fn header(o: &mut String, s: &Status) {
    let ready = if s.ready == "ok" {
        "<span class=\"tag ok\">READY</span> 就绪".to_owned()
    } else {
        format!("<span class=\"tag bad\">NOT READY</span> 未就绪: {}", esc(&s.ready))
    };
    let _ = writeln!(
        o,
        "<header><h1>前置交换代理 <small>Qianzhi agent</small></h1><p>{ready}</p>\
         <p class=\"dim\">机构 agency <b>{}</b> · 版本 {} · outbox {} · 每 {REFRESH} 秒自动刷新 · {}</p></header>",
        esc(&s.agency),
        esc(&s.version),
        esc(&s.outbox_id),
        beijing(SystemTime::now(), f64::INFINITY)
    );
}

/// The degraded conditions, each with its code set apart: what the
/// operator must act on comes first.
fn warnings(o: &mut String, degraded: &[String]) {
    if degraded.is_empty() {
        o.push_str("<section class=\"calm\"><h2>告警 Warnings</h2><p>无告警 (no warnings)</p></section>\n");
        return;
    }
    let _ = write!(
        o,
        "<section class=\"alarm\"><h2>告警 Warnings ({})</h2><ul>",
        degraded.len()
    );
    for d in degraded {
        match d.split_once(": ") {
            Some((code, why)) => {
                let _ = write!(o, "<li><code>{}</code> {}</li>", esc(code), esc(why));
            }
            None => {
                let _ = write!(o, "<li>{}</li>", esc(d));
            }
        }
    }
    o.push_str("</ul></section>\n");
}

fn link(o: &mut String, s: &Status) {
    let l = &s.link;
    // After a failure the link is down through every reconnect attempt.
    let (tag, class, word) = match (l.state, l.error.is_some()) {
        (LinkState::Up, _) => ("UP", "ok", "已连接"),
        (LinkState::Connecting, false) => ("CONNECTING", "warn", "连接中"),
        _ => ("DOWN", "bad", "已断开"),
    };
    // Down counts from the first failure, through every retry.
    let when = match (&l.down_since, l.down_seconds) {
        (Some(since), Some(down)) if l.state != LinkState::Up => {
            let at = humantime::parse_rfc3339(since).map_or_else(|_| since.clone(), |t| beijing(t, down));
            format!("{} · 自 {at}", duration(down))
        }
        _ => duration(l.since_seconds),
    };
    let _ = write!(
        o,
        "<section><h2>链路 Link</h2><p><span class=\"tag {class}\">{tag}</span> {word} {when}</p>\
         <p class=\"dim\">中心 hub {}</p><table>\
         <tr><th>最后确认 last ack</th><td class=\"n\">{}</td></tr>\
         <tr><th>已发送 sent</th><td class=\"n\">{}</td></tr><tr><th>已确认 acked</th><td class=\"n\">{}</td></tr>\
         <tr><th>中心拒收 rejected</th><td class=\"n\">{}</td></tr></table>",
        esc(&l.hub),
        ago(l.last_ack_seconds_ago),
        count(l.sent),
        count(l.acked),
        count(l.rejected)
    );
    if let Some(e) = &l.error {
        let _ = write!(o, "<p class=\"err\">最后错误 last error: {}</p>", esc(e));
    }
    o.push_str("</section>");
}

fn queue(o: &mut String, s: &Status) {
    let q = &s.queue;
    let full = if q.full {
        " <span class=\"tag bad\">FULL</span> 数据源已暂停"
    } else {
        ""
    };
    let _ = write!(
        o,
        "<section><h2>队列 Queue</h2><p><b>{}</b> 条待确认 records{full}</p>{}\
         <p class=\"dim\">{} / {} (outbox.max_bytes)</p><table><tr><th>最旧记录 oldest</th><td class=\"n\">{}</td></tr>\
         <tr><th>最后序号 last seq</th><td class=\"n\">{}</td></tr></table>",
        count(q.records),
        bar(percent(q.bytes, q.max_bytes)),
        bytes(q.bytes),
        bytes(q.max_bytes),
        q.oldest_age_seconds.map_or_else(|| "-".to_owned(), duration),
        count(q.last_seq)
    );
    if let Some(e) = &q.error {
        let _ = write!(o, "<p class=\"err\">{}</p>", esc(e));
    }
    o.push_str("</section>");
}

/// What the quarantine holds, and since the start by rule (the outbox
/// counts entries, not their rules).
fn quarantine(o: &mut String, s: &Status) {
    let mut by_rule: BTreeMap<&str, u64> = BTreeMap::new();
    for src in &s.sources {
        for (rule, n) in &src.quarantined_by_rule {
            *by_rule.entry(rule).or_default() += n;
        }
    }
    let _ = write!(
        o,
        "<section><h2>隔离区 Quarantine</h2><p><b>{}</b> 条待处理 held</p>",
        count(s.quarantine)
    );
    if by_rule.is_empty() {
        o.push_str("<p class=\"dim\">本次启动以来无新隔离 (none since start)</p>");
    } else {
        o.push_str("<table><tr><th>规则 rule</th><th class=\"n\">本次启动以来 since start</th></tr>");
        for (rule, n) in by_rule {
            let _ = write!(
                o,
                "<tr><td><code>{}</code></td><td class=\"n\">{}</td></tr>",
                esc(rule),
                count(n)
            );
        }
        o.push_str("</table>");
    }
    o.push_str("<p class=\"dim\">查看 see <code>qianzhi quarantine list --rule CODE</code></p></section>");
}

fn sources(o: &mut String, sources: &[SourceStatus]) {
    o.push_str(
        "<section><h2>数据源 Sources</h2><table class=\"wide\"><tr><th>名称 source</th><th class=\"n\">读取行 rows</th>\
         <th class=\"n\">记录 records</th><th class=\"n\">隔离 quarantined</th><th class=\"n\">警示 warnings</th>\
         <th class=\"n\">完成文件 done</th><th class=\"n\">拒收文件 rejected</th><th>状态 state</th></tr>",
    );
    if sources.is_empty() {
        o.push_str("<tr><td colspan=\"8\" class=\"dim\">无数据源 (no source)</td></tr>");
    }
    for src in sources {
        let state = match &src.error {
            Some(e) => format!("<span class=\"tag bad\">FAILING</span> {}", esc(e)),
            None if src.reading.is_some() => "<span class=\"tag ok\">READING</span> 读取中".to_owned(),
            None => "<span class=\"tag ok\">OK</span>".to_owned(),
        };
        let _ = write!(
            o,
            "<tr><td><b>{}</b></td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
             <td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{state}</td></tr>",
            esc(&src.name),
            count(src.rows),
            count(src.records),
            count(src.quarantined),
            count(src.warnings),
            count(src.files_done),
            count(src.files_rejected)
        );
        if let Some(p) = &src.reading {
            let _ = write!(o, "<tr class=\"sub\"><td colspan=\"8\">{}</td></tr>", reading(p));
        }
        for problem in &src.problems {
            let _ = write!(
                o,
                "<tr class=\"sub\"><td colspan=\"8\" class=\"err\">重试中 retrying: {}</td></tr>",
                esc(problem)
            );
        }
    }
    o.push_str("</table></section>\n");
}

/// One file's read: its name, a bar and the figures.
fn reading(p: &FileProgress) -> String {
    let mut figures = format!("{} 行 rows", count(p.rows));
    let pct = match (p.bytes, p.bytes_of) {
        (Some(read), Some(of)) => {
            let what = match p.measure {
                ByteMeasure::File => "",
                ByteMeasure::CompressedSheet => " (工作表压缩字节 compressed worksheet)",
            };
            let _ = write!(figures, " · {} / {}{what}", bytes(read), bytes(of));
            percent(read, of)
        }
        _ => None,
    };
    let _ = write!(figures, " · {} 行/秒", count(p.rows_per_second as u64));
    if let Some(rate) = p.bytes_per_second {
        let _ = write!(figures, " · {}/秒", bytes(rate as u64));
    }
    if let Some(left) = p.seconds_left {
        let _ = write!(figures, " · 约剩 {}", duration(left));
    }
    format!(
        "<div class=\"file\"><span>正在读取 reading <b>{}</b></span>{}<span class=\"dim\">{figures}</span></div>",
        esc(&p.file),
        bar(pct)
    )
}

fn rejected(o: &mut String, sources: &[SourceStatus]) {
    o.push_str("<section><h2>被拒文件 Rejected files</h2>");
    let folders: Vec<&SourceStatus> = sources.iter().filter(|s| s.rejected_held.is_some()).collect();
    if folders.is_empty() {
        o.push_str("<p class=\"dim\">无文件夹数据源 (no drop folder)</p>");
    }
    for src in folders {
        let held = src.rejected_held.unwrap_or(0);
        let class = if held > 0 { "bad" } else { "ok" };
        let _ = write!(
            o,
            "<p><b>{}</b>: <span class=\"tag {class}\">{held}</span> 个文件在 rejected/</p>",
            esc(&src.name)
        );
        if !src.rejected_files.is_empty() {
            o.push_str("<ul class=\"names\">");
            for name in &src.rejected_files {
                let _ = write!(o, "<li>{}</li>", esc(name));
            }
            let more = held.saturating_sub(src.rejected_files.len() as u64);
            if more > 0 {
                let _ = write!(o, "<li class=\"dim\">… 另有 {more} 个 (and {more} more)</li>");
            }
            o.push_str("</ul><p class=\"dim\">原因见 NAME.error.txt; 修正后重新放入</p>");
        }
    }
    o.push_str("</section>");
}

fn freshness(o: &mut String, s: &Status) {
    o.push_str("<section><h2>资源新鲜度 Freshness</h2>");
    if s.resources.is_empty() {
        o.push_str("<p class=\"dim\">本机构不提供资源 (provides nothing)</p></section>");
        return;
    }
    o.push_str("<table><tr><th>资源 resource</th><th>周期 cycle</th><th>最后变更 last change</th><th></th></tr>");
    for r in &s.resources {
        let last = r.last_change_us.map_or_else(
            || "尚无 none yet".to_owned(),
            |us| {
                let at = UNIX_EPOCH + Duration::from_micros(us.max(0) as u64);
                let ago = SystemTime::now().duration_since(at).unwrap_or_default();
                format!(
                    "{} ({} 前)",
                    beijing(at, ago.as_secs_f64()),
                    duration(ago.as_secs_f64())
                )
            },
        );
        let tag = if r.overdue {
            "<span class=\"tag bad\">OVERDUE</span>"
        } else {
            "<span class=\"tag ok\">OK</span>"
        };
        let _ = write!(
            o,
            "<tr><td><code>{}</code> {}</td><td>{}</td><td>{last}</td><td>{tag}</td></tr>",
            esc(&r.resource),
            esc(&r.name),
            esc(&r.cycle)
        );
    }
    o.push_str("</table></section>");
}

fn subscriptions(o: &mut String, s: &Status) {
    o.push_str("<section><h2>订阅 Subscriptions</h2>");
    if s.subscriptions.is_empty() {
        o.push_str("<p class=\"dim\">未订阅 (receives nothing)</p></section>");
        return;
    }
    o.push_str(
        "<table><tr><th>资源 resource</th><th>状态 state</th><th class=\"n\">已应用 applied</th><th>延迟 lag</th></tr>",
    );
    for sub in &s.subscriptions {
        let class = match sub.state.as_str() {
            "receiving" => "ok",
            "refused" | "revoked" | "failing" => "bad",
            _ => "warn",
        };
        let from = if sub.provider.is_empty() {
            String::new()
        } else {
            format!("<br><span class=\"dim nowrap\">来自 {}</span>", esc(&sub.provider))
        };
        let lag = sub.lag_seconds.map_or_else(
            || "-".to_owned(),
            |l| {
                let behind = count(sub.lag_changes);
                format!("{}<br><span class=\"dim nowrap\">落后 {behind} 条</span>", duration(l))
            },
        );
        let _ = write!(
            o,
            "<tr><td><code>{}</code>{from}</td><td><span class=\"tag {class}\">{}</span></td>\
             <td class=\"n\">{} (seq {})</td><td>{lag}</td></tr>",
            esc(&sub.resource),
            esc(&sub.state.to_uppercase()),
            count(sub.applied),
            sub.applied_seq
        );
        if let Some(e) = &sub.error {
            let _ = write!(
                o,
                "<tr class=\"sub\"><td colspan=\"4\" class=\"err\">{}</td></tr>",
                esc(e)
            );
        }
    }
    o.push_str("</table></section>");
}

/// A bar filled to `pct`; an empty frame when unknown.
fn bar(pct: Option<u64>) -> String {
    match pct {
        Some(p) => format!("<span class=\"bar\"><i style=\"width:{p}%\"></i></span><b class=\"pct\">{p} %</b>"),
        None => "<span class=\"bar\"></span>".to_owned(),
    }
}

fn ago(secs: Option<f64>) -> String {
    secs.map_or_else(|| "从未 never".to_owned(), |s| format!("{} 前", duration(s)))
}

/// An instant as Beijing time (UTC+8, the time of the regulation's
/// records): the time of day, with the date when it is `secs_ago` more
/// than half a day ago.
fn beijing(t: SystemTime, secs_ago: f64) -> String {
    let text = humantime::format_rfc3339_seconds(t + Duration::from_secs(8 * 3600)).to_string();
    match (text.get(..10), text.get(11..19)) {
        (Some(date), Some(time)) if secs_ago >= 43_200.0 => format!("{date} {time} 北京时间"),
        (_, Some(time)) => format!("{time} 北京时间"),
        _ => text,
    }
}

const STYLE: &str = "\
*{box-sizing:border-box}\
body{margin:0;padding:12px 18px;font:14px/1.45 'Noto Sans CJK SC','Source Han Sans SC','WenQuanYi Micro Hei',\
'Microsoft YaHei',sans-serif;color:#1f2328;background:#f4f6f8}\
header{display:flex;flex-wrap:wrap;align-items:baseline;gap:4px 18px;margin-bottom:8px}\
h1{font-size:20px;margin:0}h1 small{font-size:13px;color:#59636e;font-weight:normal}\
header p{margin:0}\
h2{font-size:15px;margin:0 0 6px;color:#24292f;border-bottom:1px solid #d0d7de;padding-bottom:3px}\
section{background:#fff;border:1px solid #d0d7de;border-radius:6px;padding:8px 12px;margin-bottom:10px}\
.row{display:grid;grid-template-columns:repeat(3,minmax(0,1fr));gap:10px}.row section{margin-bottom:10px}\
section.alarm{border-color:#cf222e;background:#fff5f5}section.alarm h2{color:#cf222e;border-color:#ffc1c0}\
section.calm{padding:4px 12px}section.calm h2{display:inline;border:0;margin-right:10px}section.calm p{display:inline;color:#1a7f37}\
ul{margin:0;padding-left:18px}li{margin:2px 0;word-break:break-all}\
code{font:12px/1.4 ui-monospace,'DejaVu Sans Mono',monospace;background:#eef1f4;padding:0 4px;border-radius:3px}\
.alarm code{background:#ffe1e0;color:#a40e26;font-weight:bold}\
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:2px 6px;vertical-align:top}\
th{color:#59636e;font-weight:normal;white-space:nowrap}tr+tr td{border-top:1px solid #eaeef2}\
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}\
tr.sub td{border-top:0;padding-left:22px}\
.tag{display:inline-block;padding:0 7px;border-radius:10px;font:bold 12px/18px sans-serif;color:#fff}\
.ok{background:#1a7f37}.bad{background:#cf222e}.warn{background:#9a6700}\
p{margin:3px 0}.dim{color:#59636e}.err{color:#cf222e;word-break:break-all}\
.bar{display:inline-block;width:220px;height:10px;background:#eaeef2;border-radius:5px;overflow:hidden;\
vertical-align:middle;margin:0 8px}.bar i{display:block;height:100%;background:#0969da}\
.pct{margin-right:10px}\
.file{display:flex;flex-wrap:wrap;align-items:center;gap:2px 6px}\
.nowrap{white-space:nowrap}\
.names{font-family:ui-monospace,'DejaVu Sans Mono',monospace;font-size:12px}";
