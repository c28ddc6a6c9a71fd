//! The HTML report: one self-contained page (inline CSS and SVG charts, no scripts, fonts or
//! images) drawn from a run's [`Summary`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Write as _};

use crate::server_metrics::ServerSample;
use crate::summary::{
    BaselineReport, CheckReport, ClusterReport, EndpointSummary, PercentilePoint, Percentiles,
    SCHEMA_VERSION, SeatsTimeline, SellOut, SloResult, Summary, TimelinePoint,
};
use crate::verdict::Status;

/// Violations listed per check; `summary.json` holds them all, and thousands of lines would
/// only bury the rest of the page.
const MAX_VIOLATIONS_SHOWN: usize = 200;

/// Provinces named in the seats chart's legend, the largest first; the others stay grey.
const LABELLED_PROVINCES: usize = 8;

/// Every chart's canvas, in SVG units (the page scales it to its width).
const CHART_WIDTH: f64 = 900.0;
const CHART_HEIGHT: f64 = 360.0;
/// The plot area inside the canvas; the legend sits to its right.
const PLOT_LEFT: f64 = 70.0;
const PLOT_RIGHT: f64 = 690.0;
const PLOT_TOP: f64 = 40.0;
const PLOT_BOTTOM: f64 = 305.0;
const LEGEND_LEFT: f64 = 705.0;
const LEGEND_ROW: f64 = 18.0;
/// Longer legend labels are cut so they stay inside the canvas.
const LEGEND_LABEL_CHARS: usize = 24;
/// A log axis spans at most this many decades, so one tiny value cannot flatten the rest.
const MAX_LOG_DECADES: f64 = 6.0;

/// Outcome classes bottom-up in the throughput stack, each with its colour: answers at the
/// bottom, failures on top where they catch the eye.
const OUTCOME_COLORS: [(&str, &str); 8] = [
    ("ok", "#2e7d32"),
    ("not_modified", "#81c784"),
    ("rejected", "#1e88e5"),
    ("shed", "#fbc02d"),
    ("unexpected", "#8e24aa"),
    ("server_error", "#d32f2f"),
    ("timeout", "#f57c00"),
    ("transport", "#5d4037"),
];

/// Colours for series without a colour of their own.
const PALETTE: [&str; 8] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];
const OTHER_PROVINCE_COLOR: &str = "#c3c8d0";
const NATIONAL_COLOR: &str = "#111827";

const STYLE: &str = r#"body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;background:#f5f6f8;color:#1d2330;line-height:1.4}
main{max-width:1000px;margin:0 auto;padding:1.5rem}
h1{margin:0 0 .75rem}
h2{margin:0 0 .5rem;font-size:1.25rem}
h3{margin:1rem 0 .25rem;font-size:1.05rem}
section,header{background:#fff;border:1px solid #dde1e7;border-radius:6px;padding:1rem 1.25rem;margin:1rem 0}
table{border-collapse:collapse;margin:.5rem 0}
th,td{padding:.25rem .75rem;border-bottom:1px solid #e5e8ec;text-align:left;vertical-align:top}
th{font-weight:600;background:#f0f2f5}
td:first-child{font-weight:600}
.num{text-align:right;font-variant-numeric:tabular-nums}
.verdict{font-size:1.6rem;font-weight:700;padding:.6rem 1rem;border-radius:6px;color:#fff;margin-bottom:.75rem}
.verdict ul{font-size:1rem;font-weight:400;margin:.4rem 0 0}
.verdict.pass,.badge.pass{background:#2e7d32}
.verdict.fail,.badge.fail{background:#c62828}
.verdict.none,.badge.none{background:#6b7280}
table.verdicts td:nth-child(2){white-space:nowrap}
figcaption{font-size:.9rem;color:#374151}
figcaption dt{font-weight:600;float:left;clear:left;margin-right:.4rem}
figcaption dd{margin:0 0 .2rem}
.badge{color:#fff;border-radius:4px;padding:.1rem .5rem;font-size:.85rem;margin-left:.5rem}
td.pass{color:#2e7d32;font-weight:600}
td.fail{color:#c62828;font-weight:600}
.tables{display:flex;flex-wrap:wrap;gap:0 2.5rem}
.nodata{color:#6b7280;font-style:italic}
figure{margin:1rem 0}
svg.chart{width:100%;height:auto;display:block}
svg text{font-size:12px;fill:#374151}
svg text.title{font-size:15px;font-weight:600;fill:#1d2330}
.grid{stroke:#e5e7eb;stroke-width:1}
.axis{stroke:#6b7280;stroke-width:1}
.opening{stroke:#111827;stroke-width:1.2;stroke-dasharray:6 4}
svg text.halo{stroke:#fff;stroke-width:3px;paint-order:stroke}
"#;

/// Renders `summary` as a complete HTML5 page that needs nothing beyond itself.
pub fn render(summary: &Summary) -> String {
    let mut page = String::with_capacity(64 * 1024);
    write_head(&mut page);
    write_header(&mut page, summary);
    write_key_figures(&mut page, summary);
    write_count_tables(&mut page, summary);
    write_endpoints(&mut page, &summary.endpoints);
    write_charts(&mut page, summary);
    write_sell_out(&mut page, &summary.sell_out, summary.seats.provinces.len());
    if let Some(cluster) = &summary.cluster {
        write_cluster(&mut page, cluster);
    }
    write_checks(&mut page, &summary.checks);
    write_slo(&mut page, &summary.slo);
    write_baseline(&mut page, summary.baseline.as_ref());
    page.push_str("</main>\n</body>\n</html>\n");
    page
}

// ---- Text and tables -------------------------------------------------------------------

/// Escapes text for HTML content and quoted attribute values alike.
fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            _ => escaped.push(c),
        }
    }
    escaped
}

/// A float with fixed decimals, or `n/a` for a value that is not a number.
fn fixed(value: f64, decimals: usize) -> String {
    if value.is_finite() {
        format!("{value:.decimals$}")
    } else {
        "n/a".to_string()
    }
}

/// A float as short as it prints (`60`, `1.5`), or `n/a`.
fn plain(value: f64) -> String {
    if value.is_finite() {
        value.to_string()
    } else {
        "n/a".to_string()
    }
}

/// A count with thousands separators.
fn count(value: u64) -> String {
    let digits = value.to_string();
    let mut grouped = String::with_capacity(digits.len() + digits.len() / 3);
    for (position, digit) in digits.chars().enumerate() {
        if position > 0 && (digits.len() - position).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    grouped
}

/// `part` as a percentage of `whole`.
fn share(part: u64, whole: u64) -> String {
    if whole == 0 {
        return "n/a".to_string();
    }
    format!("{:.1}%", part as f64 * 100.0 / whole as f64)
}

/// Median, tail and worst case on one line.
fn percentile_line(latency: &Percentiles) -> String {
    format!(
        "p50 {} ms · p99 {} ms · max {} ms",
        fixed(latency.p50_ms, 2),
        fixed(latency.p99_ms, 2),
        fixed(latency.max_ms, 1)
    )
}

/// One table cell; its text is escaped when written.
enum Cell {
    /// Left-aligned words.
    Text(String),
    /// A right-aligned figure.
    Figure(String),
    /// A word coloured by whether something held.
    Verdict(bool, String),
}

fn text(content: impl Into<String>) -> Cell {
    Cell::Text(content.into())
}

fn figure(content: impl Into<String>) -> Cell {
    Cell::Figure(content.into())
}

fn verdict_class(passed: bool) -> &'static str {
    if passed { "pass" } else { "fail" }
}

/// Writes a table; no headers makes a label/value table. A header is right-aligned when
/// the first row's cell below it holds a figure.
fn write_table(out: &mut String, headers: &[&str], rows: &[Vec<Cell>]) {
    out.push_str("<table>\n");
    if !headers.is_empty() {
        out.push_str("<thead><tr>");
        let first_row = rows.first();
        for (column, header) in headers.iter().enumerate() {
            let numeric = first_row
                .and_then(|row| row.get(column))
                .is_some_and(|cell| matches!(cell, Cell::Figure(_)));
            let class = if numeric { " class=\"num\"" } else { "" };
            let _ = write!(out, "<th{class}>{}</th>", escape(header));
        }
        out.push_str("</tr></thead>\n");
    }
    out.push_str("<tbody>\n");
    for row in rows {
        out.push_str("<tr>");
        for cell in row {
            write_cell(out, cell);
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody>\n</table>\n");
}

fn write_cell(out: &mut String, cell: &Cell) {
    let _ = match cell {
        Cell::Text(content) => write!(out, "<td>{}</td>", escape(content)),
        Cell::Figure(content) => write!(out, "<td class=\"num\">{}</td>", escape(content)),
        Cell::Verdict(passed, content) => write!(
            out,
            "<td class=\"{}\">{}</td>",
            verdict_class(*passed),
            escape(content)
        ),
    };
}

fn write_no_data(out: &mut String, why: &str) {
    let _ = writeln!(out, "<p class=\"nodata\">no data: {}</p>", escape(why));
}

fn open_section(out: &mut String, heading: &str) {
    let _ = writeln!(out, "<section>\n<h2>{}</h2>", escape(heading));
}

fn close_section(out: &mut String) {
    out.push_str("</section>\n");
}

// ---- Page sections ---------------------------------------------------------------------

fn write_head(out: &mut String) {
    out.push_str(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>Miqat load test report</title>\n<style>\n",
    );
    out.push_str(STYLE);
    out.push_str("</style>\n</head>\n<body>\n<main>\n");
}

fn write_header(out: &mut String, summary: &Summary) {
    out.push_str("<header>\n<h1>Miqat load test report</h1>\n");
    write_verdict(out, summary);
    let plan = &summary.plan;
    let rows = vec![
        vec![text("Target"), text(summary.target.as_str())],
        vec![text("Run started"), text(summary.started_at.as_str())],
        vec![text("Wave opened"), text(summary.opens_at.as_str())],
        vec![
            text("Plan"),
            text(format!(
                "seed {}, speed {}×, {} journeys",
                plan.seed,
                plain(plan.speed),
                count(plan.journeys as u64)
            )),
        ],
        vec![
            text("Duration"),
            text(format!("{} s", fixed(summary.duration_s, 1))),
        ],
        vec![
            text("Server"),
            text(
                summary
                    .server_version
                    .clone()
                    .unwrap_or_else(|| "did not report its version".to_owned()),
            ),
        ],
        vec![
            text("Load tester"),
            text(format!(
                "{} (summary.json schema {})",
                env!("CARGO_PKG_VERSION"),
                SCHEMA_VERSION
            )),
        ],
    ];
    write_table(out, &[], &rows);
    out.push_str("</header>\n");
}

/// The overall verdict as a banner, then one row per verdict with the figures it was judged
/// by: the same lines the terminal prints.
fn write_verdict(out: &mut String, summary: &Summary) {
    let verdicts = summary.verdicts();
    let class = match verdicts.overall {
        Status::Passed => "pass",
        Status::Failed => "fail",
        Status::NotJudged => "none",
    };
    let _ = writeln!(
        out,
        "<div class=\"verdict {class}\">{}</div>",
        escape(&verdicts.headline())
    );
    out.push_str("<table class=\"verdicts\">\n<tbody>\n");
    for line in verdicts.lines() {
        let class = match line.good {
            Some(good) => verdict_class(good),
            None => "none",
        };
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td><span class=\"badge {class}\">{}</span></td><td>{}</td></tr>",
            escape(line.label),
            escape(line.word),
            escape(&line.detail)
        );
    }
    out.push_str("</tbody>\n</table>\n");
    if !summary.client_violations.is_empty() {
        out.push_str("<p>Contradictions the client saw:</p>\n<ul>\n");
        for violation in &summary.client_violations {
            let _ = writeln!(out, "<li>{}</li>", escape(violation));
        }
        out.push_str("</ul>\n");
    }
}

fn write_key_figures(out: &mut String, summary: &Summary) {
    open_section(out, "Key figures");
    let plan = &summary.plan;
    let lag = &summary.send_lag;
    let rows = vec![
        vec![text("Requests sent"), figure(count(summary.requests))],
        vec![
            text("Requests planned"),
            figure(count(plan.planned_requests)),
        ],
        vec![
            text("First request due before the opening"),
            figure(format!("{} s", fixed(plan.lead_s, 1))),
        ],
        vec![
            text("Throughput"),
            figure(format!("{} req/s", fixed(summary.throughput_rps, 1))),
        ],
        vec![
            text("Busiest second"),
            figure(format!("{} req/s", count(summary.peak_rps))),
        ],
        vec![
            text("Goodput"),
            figure(format!("{} seated/s", fixed(summary.goodput_per_s, 2))),
        ],
        vec![
            text("Retry amplification"),
            figure(format!("{}×", fixed(summary.retry_amplification, 2))),
        ],
        vec![
            text("Send lag"),
            figure(format!(
                "p50 {} ms · p99 {} ms · max {} ms",
                fixed(lag.p50_ms, 2),
                fixed(lag.p99_ms, 2),
                fixed(lag.max_ms, 1)
            )),
        ],
        vec![text("Generator"), lag_verdict(lag.valid, lag.limit_ms)],
        vec![
            text("Time to a seat"),
            figure(percentile_line(&summary.journeys.time_to_seat)),
        ],
    ];
    write_table(out, &[], &rows);
    close_section(out);
}

/// Whether the generator kept to the plan: a late generator makes every latency suspect.
fn lag_verdict(valid: bool, limit_ms: f64) -> Cell {
    let words = if valid {
        format!("kept to the plan (p99 lag within {} ms)", plain(limit_ms))
    } else {
        format!(
            "INVALID RUN: fell behind the plan (p99 lag above {} ms)",
            plain(limit_ms)
        )
    };
    Cell::Verdict(valid, words)
}

fn write_count_tables(out: &mut String, summary: &Summary) {
    open_section(out, "Outcomes");
    out.push_str("<div class=\"tables\">\n");
    write_count_table(out, "Requests by outcome", "outcome", &summary.outcomes);
    write_count_table(out, "Answers", "answer", &summary.answers);
    write_count_table(
        out,
        "Journeys by ending",
        "ending",
        &summary.journeys.endings,
    );
    out.push_str("</div>\n");
    close_section(out);
}

fn write_count_table(
    out: &mut String,
    caption: &str,
    key_header: &str,
    counts: &BTreeMap<String, u64>,
) {
    let _ = writeln!(out, "<div>\n<h3>{}</h3>", escape(caption));
    if counts.is_empty() {
        write_no_data(out, "nothing was counted");
    } else {
        let total = counts.values().fold(0_u64, |sum, &n| sum.saturating_add(n));
        let rows: Vec<Vec<Cell>> = counts
            .iter()
            .map(|(key, &n)| {
                vec![
                    text(key.as_str()),
                    figure(count(n)),
                    figure(share(n, total)),
                ]
            })
            .collect();
        write_table(out, &[key_header, "count", "share"], &rows);
    }
    out.push_str("</div>\n");
}

fn write_endpoints(out: &mut String, endpoints: &[EndpointSummary]) {
    open_section(out, "Latency per endpoint");
    if endpoints.is_empty() {
        write_no_data(out, "no endpoint was called");
        close_section(out);
        return;
    }
    let rows: Vec<Vec<Cell>> = endpoints.iter().map(endpoint_row).collect();
    let headers = [
        "endpoint", "requests", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms", "outcomes",
    ];
    write_table(out, &headers, &rows);
    out.push_str("<p>Latency runs from each request's intended send time, answered or not.</p>\n");
    close_section(out);
}

fn endpoint_row(endpoint: &EndpointSummary) -> Vec<Cell> {
    let latency = &endpoint.latency;
    let outcomes: Vec<String> = endpoint
        .outcomes
        .iter()
        .map(|(class, n)| format!("{class} {}", count(*n)))
        .collect();
    vec![
        text(endpoint.name.as_str()),
        figure(count(endpoint.requests)),
        figure(fixed(latency.p50_ms, 2)),
        figure(fixed(latency.p90_ms, 2)),
        figure(fixed(latency.p99_ms, 2)),
        figure(fixed(latency.p999_ms, 2)),
        figure(fixed(latency.max_ms, 1)),
        text(outcomes.join(", ")),
    ]
}

fn write_charts(out: &mut String, summary: &Summary) {
    open_section(out, "Over time");
    // Every chart over time shares one x axis, so a moment lines up down the page.
    let x_range = time_range(summary);
    let on_run_axis = |mut chart: Chart| {
        chart.x_range = x_range;
        chart
    };
    let throughput = on_run_axis(throughput_chart(&summary.timeline));
    let bands = throughput_caption(&throughput);
    write_chart(out, &throughput, "no timeline was recorded", &bands);
    write_chart(
        out,
        &on_run_axis(latency_chart(&summary.timeline)),
        "no second of the timeline has a latency",
        &latency_caption(summary),
    );
    write_chart(
        out,
        &on_run_axis(client_server_latency_chart(summary)),
        "the server exported no metrics during the run",
        &[(
            "client against server".to_string(),
            "the client's p99 counts from each request's intended send time to its answer \
             (queueing in the client and the network included); the server's counts from \
             the request's arrival at its router to its answer, from its own /metrics, \
             scraped once a second; fsync is the log's, which every reservation waits for"
                .to_string(),
        )],
    );
    write_chart(
        out,
        &on_run_axis(server_traffic_chart(summary)),
        "the server exported no metrics during the run",
        &[(
            "server".to_string(),
            "requests the server answered and shed or rate-limited per second, from its own \
             /metrics; the client's line counts answers it received, by the second it got them"
                .to_string(),
        )],
    );
    write_chart(
        out,
        &on_run_axis(seats_chart(&summary.seats)),
        "no seat samples to draw",
        &[(
            "A line that rises".to_string(),
            "seats came back: a hold whose stage deadline passed expired, a holder \
             cancelled, or a registration ended at the medical stage; each freed seat goes \
             first to the province's waiting list as an offer (which takes it again), else \
             back to the pool"
                .to_string(),
        )],
    );
    close_section(out);
    open_section(out, "Latency distribution");
    write_chart(
        out,
        &distribution_chart(&summary.latency_distribution),
        "no request was recorded",
        &[(
            "x axis".to_string(),
            "percentile in nines: 1 is p90, 2 is p99, 3 is p99.9, 4 is p99.99; the last point \
             is the maximum; every request counts, answered or not, from its intended send time"
                .to_string(),
        )],
    );
    close_section(out);
}

/// The run's time span over the timeline, the seat samples and the server's samples.
fn time_range(summary: &Summary) -> Option<(f64, f64)> {
    let times = summary
        .timeline
        .iter()
        .map(|p| p.t_s)
        .chain(summary.seats.samples.iter().map(|(t, _)| *t))
        .chain(summary.server_metrics.iter().map(|s| s.t_s))
        .filter(|t| t.is_finite());
    let (low, high) = times.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), t| {
        (lo.min(t), hi.max(t))
    });
    (high > low).then_some((low, high))
}

fn client_server_latency_chart(summary: &Summary) -> Chart {
    let server = |name: &str, color, width, pick: fn(&ServerSample) -> f64| Series {
        name: name.to_string(),
        color,
        width,
        fill: false,
        points: summary
            .server_metrics
            .iter()
            .map(|s| (s.t_s, pick(s)))
            .collect(),
    };
    let mut series = vec![
        server("server: p99 reserve", PALETTE[2], 2.0, |s| s.reserve_p99_ms),
        server("server: p99 fsync", PALETTE[5], 1.5, |s| s.fsync_p99_ms),
    ];
    if !series.iter().all(|s| s.points.is_empty()) {
        series.insert(
            0,
            Series {
                name: "client: p99 reserve".to_string(),
                color: PALETTE[3],
                width: 2.0,
                fill: false,
                points: summary
                    .timeline
                    .iter()
                    .map(|p| (p.t_s, p.reserve_p99_ms))
                    .collect(),
            },
        );
    }
    Chart {
        title: "Reservation latency: client against server (log scale)".to_string(),
        x_label: "seconds since the opening (run time)",
        y_label: "milliseconds",
        y_scale: YScale::Log,
        opening_marker: true,
        x_range: None,
        legend: series.iter().map(Series::legend_entry).collect(),
        series,
    }
}

fn server_traffic_chart(summary: &Summary) -> Chart {
    let server = |name: &str, color, pick: fn(&ServerSample) -> f64| Series {
        name: name.to_string(),
        color,
        width: 1.5,
        fill: false,
        points: summary
            .server_metrics
            .iter()
            .map(|s| (s.t_s, pick(s)))
            .collect(),
    };
    let mut series = vec![
        server("server: answered/s", PALETTE[0], |s| s.requests_per_s),
        server("server: shed, limited/s", PALETTE[3], |s| s.shed_per_s),
    ];
    if !series.iter().all(|s| s.points.is_empty()) {
        series.push(Series {
            name: "client: answered/s".to_string(),
            color: PALETTE[7],
            width: 1.0,
            fill: false,
            points: summary
                .timeline
                .iter()
                .map(|p| (p.t_s, p.outcomes.values().sum::<u64>() as f64))
                .collect(),
        });
    }
    Chart {
        title: "Requests per second: the server's count".to_string(),
        x_label: "seconds since the opening (run time)",
        y_label: "requests per second",
        y_scale: YScale::Linear,
        opening_marker: true,
        x_range: None,
        legend: series.iter().map(Series::legend_entry).collect(),
        series,
    }
}

/// Where percentile `p` sits on an axis of nines: 90 at 1, 99 at 2, 99.9 at 3.
fn nines(percentile: f64) -> f64 {
    let tail = (100.0 - percentile) / 100.0;
    if tail <= 0.0 {
        // The maximum: half a nine past the finest percentile drawn.
        5.5
    } else {
        -tail.log10()
    }
}

fn distribution_chart(points: &[PercentilePoint]) -> Chart {
    let series = vec![Series {
        name: "latency at percentile".to_string(),
        color: PALETTE[0],
        width: 2.0,
        fill: false,
        points: points.iter().map(|p| (nines(p.percentile), p.ms)).collect(),
    }];
    Chart {
        title: "Latency by percentile, every request (log scale)".to_string(),
        x_label: "percentile in nines (1 = p90, 2 = p99, 3 = p99.9)",
        y_label: "milliseconds",
        y_scale: YScale::Log,
        opening_marker: false,
        x_range: None,
        legend: series.iter().map(Series::legend_entry).collect(),
        series,
    }
}

/// What each band of the throughput chart means, for the bands it draws.
fn throughput_caption(chart: &Chart) -> Vec<(String, String)> {
    let meaning = |class: &str| -> &'static str {
        match class {
            "ok" => "answered with success (2xx)",
            "not_modified" => "a list refresh whose caravans had not changed (304, cheap)",
            "rejected" => {
                "a correct refusal in a rush: caravan full, already reserved, not open yet, \
                 not called, the planned wrong credentials"
            }
            "shed" => {
                "refused by overload with Retry-After (429/503): the server protecting itself; \
                 the client waits and retries with the same key"
            }
            "unexpected" => "a 4xx the client did nothing to deserve (a failure)",
            "server_error" => "5xx, or 429/503 without Retry-After (a failure)",
            "timeout" => {
                "no answer within the client's timeout of the intended send time (a failure); \
                 a wide band means the server was asked for more than it can answer"
            }
            "transport" => "connection refused, reset or broken (a failure)",
            _ => "an outcome class this report does not know",
        }
    };
    let mut bands: Vec<(String, String)> = chart
        .series
        .iter()
        .rev()
        .map(|series| (series.name.clone(), meaning(&series.name).to_string()))
        .collect();
    if !bands.is_empty() {
        bands.push((
            "Stacking".to_string(),
            "bands are stacked bottom-up in this order; the top edge is every request \
             answered (or given up) in that second"
                .to_string(),
        ));
    }
    bands
}

fn latency_caption(summary: &Summary) -> Vec<(String, String)> {
    vec![
        (
            "p50, p99".to_string(),
            format!(
                "latency from each request's intended send time to its answer, over the \
                 requests answered in that second; a request without an answer counts at the \
                 client's timeout ({} s), so a line flat at that height means requests were \
                 going unanswered",
                plain(summary.timeout_s)
            ),
        ),
        (
            "p99 send lag".to_string(),
            format!(
                "how late the generator itself sent requests; above {} ms (p99 over the run) \
                 the run is invalid as a measurement",
                plain(summary.send_lag.limit_ms)
            ),
        ),
    ]
}

fn write_chart(out: &mut String, chart: &Chart, why_empty: &str, caption: &[(String, String)]) {
    match chart_svg(chart) {
        Some(svg) => {
            out.push_str("<figure>\n");
            out.push_str(&svg);
            if !caption.is_empty() {
                out.push_str("<figcaption><dl>\n");
                for (term, meaning) in caption {
                    let _ = writeln!(
                        out,
                        "<dt>{}:</dt><dd>{}</dd>",
                        escape(term),
                        escape(meaning)
                    );
                }
                out.push_str("</dl></figcaption>\n");
            }
            out.push_str("</figure>\n");
        }
        None => {
            let _ = writeln!(out, "<h3>{}</h3>", escape(&chart.title));
            write_no_data(out, why_empty);
        }
    }
}

fn write_sell_out(out: &mut String, sell_out: &[SellOut], provinces: usize) {
    open_section(out, "Sell-out");
    if sell_out.is_empty() {
        out.push_str("<p>No province sold out during the run.</p>\n");
        close_section(out);
        return;
    }
    let _ = writeln!(
        out,
        "<p>{} of {} provinces sold out (times after the opening, at sampling resolution).</p>",
        sell_out.len(),
        provinces
    );
    let rows: Vec<Vec<Cell>> = sell_out
        .iter()
        .map(|province| {
            vec![
                text(province.name.as_str()),
                figure(province.province_id.to_string()),
                figure(fixed(province.run_s, 1)),
                figure(fixed(province.day_s, 0)),
            ]
        })
        .collect();
    write_table(out, &["province", "id", "run s", "opening-day s"], &rows);
    close_section(out);
}

fn write_cluster(out: &mut String, cluster: &ClusterReport) {
    open_section(out, "Cluster: how the writes ended");
    let _ = writeln!(
        out,
        "<p>{} nodes: {}. Each write counts once, by its final outcome after redirects and \
         resends with the same idempotency key.</p>",
        cluster.targets.len(),
        escape(&cluster.targets.join(", "))
    );
    let mut rows = vec![
        vec![text("ok (acknowledged)"), figure(count(cluster.writes_ok))],
        vec![
            text("refused (a 4xx from the engine)"),
            figure(count(cluster.writes_refused)),
        ],
        vec![
            text("unknown (no definite answer; resolved by the check)"),
            figure(count(cluster.writes_unknown)),
        ],
        vec![
            text("421 not_leader followed"),
            figure(count(cluster.redirects)),
        ],
        vec![text("resends"), figure(count(cluster.resends))],
        vec![
            text("longest gap between acknowledged writes (ms)"),
            figure(fixed(cluster.longest_write_gap_ms, 0)),
        ],
    ];
    if let Some(gap) = cluster.failover_gap_ms {
        rows.push(vec![
            text("failover gap: kill to first acknowledged write (ms)"),
            figure(fixed(gap, 0)),
        ]);
    }
    write_table(out, &[], &rows);
    close_section(out);
}

fn write_checks(out: &mut String, checks: &[CheckReport]) {
    open_section(out, "After-run checks");
    if checks.is_empty() {
        write_no_data(out, "no check pass ran");
    }
    for check in checks {
        write_check(out, check);
    }
    close_section(out);
}

fn write_check(out: &mut String, check: &CheckReport) {
    let _ = writeln!(
        out,
        "<h3>{}<span class=\"badge {}\">{}</span></h3>",
        escape(&check.label),
        verdict_class(check.passed),
        if check.passed { "PASSED" } else { "FAILED" }
    );
    let correlation = check
        .fcfs_rank_correlation
        .map_or_else(|| "n/a".to_string(), |r| fixed(r, 3));
    let rows = vec![
        vec![
            text("Reservations on the server"),
            figure(count(check.reservations)),
        ],
        vec![text("Live among them"), figure(count(check.live))],
        vec![
            text("Acknowledged seats found"),
            figure(count(check.acknowledged)),
        ],
        vec![
            text("Unanswered requests resolved"),
            figure(count(check.resolved)),
        ],
        vec![
            text("FCFS rank correlation (1 is perfect)"),
            figure(correlation),
        ],
    ];
    write_table(out, &[], &rows);
    write_violations(out, &check.violations);
}

fn write_violations(out: &mut String, violations: &[String]) {
    if violations.is_empty() {
        out.push_str("<p>No violations.</p>\n");
        return;
    }
    let _ = writeln!(
        out,
        "<p>{} violations:</p>\n<ul>",
        count(violations.len() as u64)
    );
    for violation in violations.iter().take(MAX_VIOLATIONS_SHOWN) {
        let _ = writeln!(out, "<li>{}</li>", escape(violation));
    }
    out.push_str("</ul>\n");
    if violations.len() > MAX_VIOLATIONS_SHOWN {
        let _ = writeln!(
            out,
            "<p>{} more in summary.json.</p>",
            count((violations.len() - MAX_VIOLATIONS_SHOWN) as u64)
        );
    }
}

fn write_slo(out: &mut String, gates: &[SloResult]) {
    open_section(out, "Latency gates (SLO)");
    if gates.is_empty() {
        out.push_str("<p>No gate was asked for (<code>--slo</code>).</p>\n");
        close_section(out);
        return;
    }
    let rows: Vec<Vec<Cell>> = gates
        .iter()
        .map(|gate| {
            let word = if gate.passed { "held" } else { "MISSED" };
            vec![
                text(gate.gate.as_str()),
                figure(fixed(gate.measured_ms, 2)),
                Cell::Verdict(gate.passed, word.to_string()),
            ]
        })
        .collect();
    write_table(out, &["gate", "measured ms", "result"], &rows);
    close_section(out);
}

fn write_baseline(out: &mut String, baseline: Option<&BaselineReport>) {
    open_section(out, "Baseline: the same client against a trivial handler");
    match baseline {
        None => write_no_data(out, "the baseline was not run"),
        Some(report) => {
            write_baseline_figures(out, report);
            write_baseline_endpoints(out, report);
        }
    }
    close_section(out);
}

fn write_baseline_figures(out: &mut String, report: &BaselineReport) {
    let per_core = report
        .generator_rps_per_core
        .map_or_else(|| "n/a".to_string(), |r| format!("{} req/s", fixed(r, 0)));
    let rows = vec![
        vec![
            text("Ceiling (closed loop)"),
            figure(format!("{} req/s", fixed(report.ceiling_rps, 0))),
        ],
        vec![
            text("Ceiling latency"),
            figure(percentile_line(&report.ceiling_latency)),
        ],
        vec![text("Generator per CPU core"), figure(per_core)],
        vec![
            text("Our busiest second against the ceiling"),
            figure(format!("{}×", fixed(report.peak_ratio, 2))),
        ],
    ];
    write_table(out, &[], &rows);
}

fn write_baseline_endpoints(out: &mut String, report: &BaselineReport) {
    if report.endpoints.is_empty() {
        write_no_data(out, "no endpoint was compared");
        return;
    }
    let rows: Vec<Vec<Cell>> = report
        .endpoints
        .iter()
        .map(|endpoint| {
            vec![
                text(endpoint.name.as_str()),
                figure(fixed(endpoint.ours.p50_ms, 2)),
                figure(fixed(endpoint.baseline.p50_ms, 2)),
                figure(format!("{}×", fixed(endpoint.p50_ratio, 1))),
                figure(fixed(endpoint.ours.p99_ms, 2)),
                figure(fixed(endpoint.baseline.p99_ms, 2)),
                figure(format!("{}×", fixed(endpoint.p99_ratio, 1))),
            ]
        })
        .collect();
    let headers = [
        "endpoint",
        "p50 ours ms",
        "p50 baseline ms",
        "p50 ratio",
        "p99 ours ms",
        "p99 baseline ms",
        "p99 ratio",
    ];
    write_table(out, &headers, &rows);
}

// ---- The three charts ------------------------------------------------------------------

fn throughput_chart(timeline: &[TimelinePoint]) -> Chart {
    let classes = outcome_classes(timeline);
    let mut running_total = vec![0.0_f64; timeline.len()];
    let mut layers = Vec::with_capacity(classes.len());
    for (position, class) in classes.iter().enumerate() {
        for (total, point) in running_total.iter_mut().zip(timeline) {
            *total += point.outcomes.get(class).copied().unwrap_or(0) as f64;
        }
        layers.push(Series {
            name: class.clone(),
            color: outcome_color(class, position),
            width: 1.0,
            fill: true,
            points: timeline
                .iter()
                .zip(&running_total)
                .map(|(point, &total)| (point.t_s, total))
                .collect(),
        });
    }
    // Each layer is filled from the axis up to its running total, so the tallest is drawn
    // first and every later one covers all of it but its own band.
    layers.reverse();
    Chart {
        title: "Requests answered per second, by outcome (stacked)".to_string(),
        x_label: "seconds since the opening (run time)",
        y_label: "requests per second",
        y_scale: YScale::Linear,
        opening_marker: true,
        x_range: None,
        legend: layers.iter().map(Series::legend_entry).collect(),
        series: layers,
    }
}

/// The classes seen anywhere in the timeline, known ones in stack order, then the rest.
fn outcome_classes(timeline: &[TimelinePoint]) -> Vec<String> {
    let mut seen: BTreeSet<&str> = timeline
        .iter()
        .flat_map(|point| point.outcomes.keys().map(String::as_str))
        .collect();
    let mut ordered: Vec<String> = OUTCOME_COLORS
        .iter()
        .filter(|(class, _)| seen.remove(class))
        .map(|(class, _)| class.to_string())
        .collect();
    ordered.extend(seen.into_iter().map(str::to_string));
    ordered
}

fn outcome_color(class: &str, position: usize) -> &'static str {
    OUTCOME_COLORS
        .iter()
        .find(|(known, _)| *known == class)
        .map_or(PALETTE[position % PALETTE.len()], |(_, color)| color)
}

fn latency_chart(timeline: &[TimelinePoint]) -> Chart {
    let line = |name: &str, color, width, pick: fn(&TimelinePoint) -> f64| Series {
        name: name.to_string(),
        color,
        width,
        fill: false,
        points: timeline
            .iter()
            .map(|point| (point.t_s, pick(point)))
            .collect(),
    };
    let series = vec![
        line("p50, all requests", PALETTE[0], 1.5, |p| p.p50_ms),
        line("p99, all requests", PALETTE[1], 1.5, |p| p.p99_ms),
        line("p99, reservations", PALETTE[3], 2.0, |p| p.reserve_p99_ms),
        line("p99 send lag (generator)", PALETTE[4], 1.0, |p| {
            p.send_lag_p99_ms
        }),
    ];
    // A second without answers records 0 ms; the log axis leaves it out as a gap rather
    // than plunging the line to the floor.
    Chart {
        title: "Latency per second (log scale)".to_string(),
        x_label: "seconds since the opening (run time)",
        y_label: "milliseconds",
        y_scale: YScale::Log,
        opening_marker: true,
        x_range: None,
        legend: series.iter().map(Series::legend_entry).collect(),
        series,
    }
}

/// Seats left as a share of each province's own seats: the national total is dozens of
/// times any province, so on one absolute axis the provinces would be flat lines.
fn seats_chart(seats: &SeatsTimeline) -> Chart {
    let totals = province_totals(seats);
    let largest = largest_provinces(&totals);
    let mut series: Vec<Series> = (0..totals.len())
        .filter(|index| !largest.contains(index))
        .map(|index| province_series(seats, &totals, index, OTHER_PROVINCE_COLOR, 0.8))
        .collect();
    let has_others = !series.is_empty();
    let national = national_series(seats, &totals);
    let mut legend = vec![national.legend_entry()];
    for (rank, &index) in largest.iter().enumerate() {
        let color = PALETTE[rank % PALETTE.len()];
        let province = province_series(seats, &totals, index, color, 1.5);
        legend.push(province.legend_entry());
        series.push(province);
    }
    if has_others {
        legend.push(LegendEntry {
            label: "other provinces".to_string(),
            color: OTHER_PROVINCE_COLOR,
            width: 0.8,
            fill: false,
        });
    }
    series.push(national);
    Chart {
        title: "Seats left per province (% of its seats)".to_string(),
        x_label: "seconds since the opening (run time)",
        y_label: "% of seats left",
        y_scale: YScale::Linear,
        opening_marker: true,
        x_range: None,
        series,
        legend,
    }
}

/// Each province's seats at the start; the first sample stands in for a missing total.
fn province_totals(seats: &SeatsTimeline) -> Vec<u64> {
    let first_sample = seats.samples.first().map(|(_, free)| free.as_slice());
    (0..seats.provinces.len())
        .map(|index| {
            seats
                .seats_total
                .get(index)
                .or_else(|| first_sample.and_then(|free| free.get(index)))
                .copied()
                .unwrap_or(0)
        })
        .collect()
}

/// Indices of the provinces with the most seats, largest first.
fn largest_provinces(totals: &[u64]) -> Vec<usize> {
    let mut indices: Vec<usize> = (0..totals.len()).collect();
    indices.sort_by_key(|&index| std::cmp::Reverse(totals.get(index).copied().unwrap_or(0)));
    indices.truncate(LABELLED_PROVINCES);
    indices
}

fn province_series(
    seats: &SeatsTimeline,
    totals: &[u64],
    index: usize,
    color: &'static str,
    width: f64,
) -> Series {
    let total = totals.get(index).copied().unwrap_or(0);
    let name = seats.provinces.get(index).map_or("", |(_, name)| name);
    Series {
        name: name.to_string(),
        color,
        width,
        fill: false,
        points: seats
            .samples
            .iter()
            .map(|(t, free)| (*t, percent_left(free.get(index).copied(), total)))
            .collect(),
    }
}

fn national_series(seats: &SeatsTimeline, totals: &[u64]) -> Series {
    let national_total = totals.iter().fold(0_u64, |sum, &n| sum.saturating_add(n));
    let points = seats
        .samples
        .iter()
        .map(|(t, free)| {
            // A short sample cannot give the national figure; leave a gap there.
            let free_seats = (free.len() >= totals.len()).then(|| {
                free.iter()
                    .take(totals.len())
                    .fold(0_u64, |s, &n| s.saturating_add(n))
            });
            (*t, percent_left(free_seats, national_total))
        })
        .collect();
    Series {
        name: "national total".to_string(),
        color: NATIONAL_COLOR,
        width: 3.0,
        fill: false,
        points,
    }
}

/// Free seats as a percentage of `total`; NaN (a gap in the line) when unknown.
fn percent_left(free: Option<u64>, total: u64) -> f64 {
    match free {
        Some(free) if total > 0 => free as f64 * 100.0 / total as f64,
        _ => f64::NAN,
    }
}

// ---- A small SVG chart -----------------------------------------------------------------

/// How the y axis maps values.
#[derive(Clone, Copy)]
enum YScale {
    Linear,
    /// Base 10; values at or below zero are left out.
    Log,
}

impl YScale {
    fn accepts(self, value: f64) -> bool {
        value.is_finite() && (matches!(self, YScale::Linear) || value > 0.0)
    }

    fn apply(self, value: f64) -> f64 {
        match self {
            YScale::Linear => value,
            YScale::Log => value.log10(),
        }
    }
}

/// One line or filled area; points that are not finite (or not positive on a log axis)
/// break it into pieces.
struct Series {
    /// Shown when the pointer rests on the line.
    name: String,
    color: &'static str,
    width: f64,
    /// Fill down to zero.
    fill: bool,
    points: Vec<(f64, f64)>,
}

impl Series {
    fn legend_entry(&self) -> LegendEntry {
        LegendEntry {
            label: self.name.clone(),
            color: self.color,
            width: self.width,
            fill: self.fill,
        }
    }
}

struct LegendEntry {
    label: String,
    color: &'static str,
    width: f64,
    fill: bool,
}

struct Chart {
    title: String,
    x_label: &'static str,
    y_label: &'static str,
    y_scale: YScale,
    /// A dashed vertical line at x = 0, drawn over the series.
    opening_marker: bool,
    /// The x axis's range, when several charts must share one time axis; else fitted.
    x_range: Option<(f64, f64)>,
    /// Drawn in order, later over earlier.
    series: Vec<Series>,
    /// Top to bottom.
    legend: Vec<LegendEntry>,
}

/// An SVG coordinate: a tenth of a unit is finer than a pixel, and anything not finite is
/// written as 0, since a single `NaN` breaks the whole drawing.
struct Coord(f64);

impl fmt::Display for Coord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Adding 0.0 turns -0 into 0.
        write!(f, "{}", round_tenth(self.0) + 0.0)
    }
}

fn round_tenth(value: f64) -> f64 {
    if value.is_finite() {
        (value * 10.0).round() / 10.0
    } else {
        0.0
    }
}

/// Maps data to the plot area.
struct Frame {
    x_min: f64,
    x_max: f64,
    scale: YScale,
    /// The y range in scaled units (decades on a log axis).
    y_low: f64,
    y_high: f64,
}

impl Frame {
    /// Fits the axes to the chart's drawable points; `None` when there are none.
    fn fit(chart: &Chart) -> Option<Frame> {
        let scale = chart.y_scale;
        let usable: Vec<(f64, f64)> = chart
            .series
            .iter()
            .flat_map(|series| series.points.iter().copied())
            .filter(|&(x, y)| x.is_finite() && scale.accepts(y))
            .collect();
        if usable.is_empty() {
            return None;
        }
        let (x_min, x_max) = chart
            .x_range
            .filter(|(low, high)| low.is_finite() && high.is_finite() && high > low)
            .unwrap_or_else(|| spread(min_max(usable.iter().map(|point| point.0))));
        let ys = min_max(usable.iter().map(|point| point.1));
        let (y_low, y_high) = match scale {
            YScale::Linear => linear_y_range(ys),
            YScale::Log => log_y_range(ys),
        };
        Some(Frame {
            x_min,
            x_max,
            scale,
            y_low,
            y_high,
        })
    }

    fn x(&self, value: f64) -> f64 {
        let fraction = (value - self.x_min) / (self.x_max - self.x_min);
        PLOT_LEFT + fraction * (PLOT_RIGHT - PLOT_LEFT)
    }

    fn y(&self, value: f64) -> f64 {
        let scaled = self.scale.apply(value);
        let fraction = ((scaled - self.y_low) / (self.y_high - self.y_low)).clamp(0.0, 1.0);
        PLOT_BOTTOM - fraction * (PLOT_BOTTOM - PLOT_TOP)
    }

    /// Where filled areas start: zero, or the bottom of a log axis.
    fn baseline(&self) -> f64 {
        match self.scale {
            YScale::Linear => self.y(0.0),
            YScale::Log => PLOT_BOTTOM,
        }
    }

    fn y_ticks(&self) -> Vec<(f64, String)> {
        match self.scale {
            YScale::Linear => linear_ticks(self.y_low, self.y_high, 5.0),
            YScale::Log => log_ticks(self.y_low, self.y_high),
        }
    }
}

fn min_max(values: impl Iterator<Item = f64>) -> (f64, f64) {
    values.fold((f64::INFINITY, f64::NEG_INFINITY), |(low, high), v| {
        (low.min(v), high.max(v))
    })
}

/// Widens an empty range so that mapping onto it never divides by zero.
fn spread((low, high): (f64, f64)) -> (f64, f64) {
    if high - low > 0.0 {
        (low, high)
    } else {
        (low - 1.0, high + 1.0)
    }
}

/// Includes zero (counts and shares read wrong on a cut axis) and ends on round ticks.
fn linear_y_range((low, high): (f64, f64)) -> (f64, f64) {
    let (low, high) = spread((low.min(0.0), high.max(0.0)));
    let step = nice_step(high - low, 5.0);
    if step > 0.0 {
        ((low / step).floor() * step, (high / step).ceil() * step)
    } else {
        (low, high)
    }
}

/// Whole decades around the values, at most [`MAX_LOG_DECADES`] of them.
fn log_y_range((low, high): (f64, f64)) -> (f64, f64) {
    let top = high.log10().ceil();
    let bottom = low.log10().floor().max(top - MAX_LOG_DECADES);
    if top > bottom {
        (bottom, top)
    } else {
        (bottom, bottom + 1.0)
    }
}

/// A step of 1, 2 or 5 times a power of ten giving about `target` steps over `span`; 0 when
/// the span gives none.
fn nice_step(span: f64, target: f64) -> f64 {
    let raw = span / target;
    if !(raw.is_finite() && raw > 0.0) {
        return 0.0;
    }
    let magnitude = 10_f64.powf(raw.log10().floor());
    let nice = match raw / magnitude {
        r if r <= 1.0 => 1.0,
        r if r <= 2.0 => 2.0,
        r if r <= 5.0 => 5.0,
        _ => 10.0,
    };
    nice * magnitude
}

fn linear_ticks(low: f64, high: f64, target: f64) -> Vec<(f64, String)> {
    let step = nice_step(high - low, target);
    if step <= 0.0 {
        return Vec::new();
    }
    let first = (low / step).ceil() as i64;
    let last = (high / step).floor() as i64;
    (first..=last)
        .take(50)
        .map(|index| {
            let value = index as f64 * step;
            (value, tick_label(value, step))
        })
        .collect()
}

/// A tick value with as many decimals as the step needs, thousands as `k`, millions as `M`,
/// and absurd magnitudes in scientific notation.
fn tick_label(value: f64, step: f64) -> String {
    if value.abs() < step * 1e-9 {
        return "0".to_string();
    }
    if !(1e-6..1e9).contains(&step) {
        return format!("{value:e}");
    }
    let (divisor, suffix) = if step >= 1e6 {
        (1e6, "M")
    } else if step >= 1e3 {
        (1e3, "k")
    } else {
        (1.0, "")
    };
    let decimals = decimals_for(step / divisor);
    format!("{:.*}{suffix}", decimals, value / divisor)
}

/// Decimals that show `step` exactly for steps of 1, 2 or 5 times a power of ten.
fn decimals_for(step: f64) -> usize {
    if step >= 1.0 {
        0
    } else {
        // The small nudge keeps log10(0.1) = -0.99999... from asking for two decimals.
        (-step.log10() - 1e-9).ceil().clamp(0.0, 9.0) as usize
    }
}

/// A tick at every decade; with few decades, also at 2 and 5 times each.
fn log_ticks(low_exp: f64, high_exp: f64) -> Vec<(f64, String)> {
    let multipliers: &[f64] = if high_exp - low_exp <= 2.0 {
        &[1.0, 2.0, 5.0]
    } else {
        &[1.0]
    };
    let mut ticks = Vec::new();
    for exponent in (low_exp as i32)..=(high_exp as i32) {
        for multiplier in multipliers {
            let value = multiplier * 10_f64.powi(exponent);
            if value.log10() <= high_exp + 1e-9 {
                ticks.push((value, log_label(value)));
            }
        }
    }
    ticks
}

fn log_label(value: f64) -> String {
    if !(1e-6..1e9).contains(&value) {
        format!("{value:.0e}")
    } else if value >= 1e4 {
        format!("{:.0}k", value / 1e3)
    } else if value >= 1.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.*}", decimals_for(value))
    }
}

/// The chart as an `<svg>` element, or `None` when it has nothing to draw.
fn chart_svg(chart: &Chart) -> Option<String> {
    let frame = Frame::fit(chart)?;
    let title = escape(&chart.title);
    let mut svg = String::with_capacity(32 * 1024);
    let _ = writeln!(
        svg,
        "<svg class=\"chart\" viewBox=\"0 0 {CHART_WIDTH} {CHART_HEIGHT}\" \
         xmlns=\"http://www.w3.org/2000/svg\" role=\"img\" aria-label=\"{title}\">\n\
         <text class=\"title\" x=\"{PLOT_LEFT}\" y=\"22\">{title}</text>"
    );
    write_y_axis(&mut svg, &frame, chart.y_label);
    write_x_axis(&mut svg, &frame, chart.x_label);
    for series in &chart.series {
        write_series(&mut svg, &frame, series);
    }
    if chart.opening_marker {
        write_opening_marker(&mut svg, &frame);
    }
    write_legend(&mut svg, &chart.legend);
    svg.push_str("</svg>\n");
    Some(svg)
}

fn write_y_axis(svg: &mut String, frame: &Frame, label: &str) {
    for (value, tick) in frame.y_ticks() {
        let y = frame.y(value);
        let _ = writeln!(
            svg,
            "<line class=\"grid\" x1=\"{PLOT_LEFT}\" y1=\"{0}\" x2=\"{PLOT_RIGHT}\" y2=\"{0}\"/>\
             <text x=\"{1}\" y=\"{2}\" text-anchor=\"end\">{3}</text>",
            Coord(y),
            Coord(PLOT_LEFT - 6.0),
            Coord(y + 4.0),
            escape(&tick)
        );
    }
    let middle = (PLOT_TOP + PLOT_BOTTOM) / 2.0;
    let _ = writeln!(
        svg,
        "<line class=\"axis\" x1=\"{PLOT_LEFT}\" y1=\"{PLOT_TOP}\" x2=\"{PLOT_LEFT}\" y2=\"{PLOT_BOTTOM}\"/>\
         <text transform=\"translate(16 {}) rotate(-90)\" text-anchor=\"middle\">{}</text>",
        Coord(middle),
        escape(label)
    );
}

fn write_x_axis(svg: &mut String, frame: &Frame, label: &str) {
    for (value, tick) in linear_ticks(frame.x_min, frame.x_max, 8.0) {
        let x = Coord(frame.x(value));
        let _ = writeln!(
            svg,
            "<line class=\"axis\" x1=\"{x}\" y1=\"{PLOT_BOTTOM}\" x2=\"{x}\" y2=\"{}\"/>\
             <text x=\"{x}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            Coord(PLOT_BOTTOM + 5.0),
            Coord(PLOT_BOTTOM + 18.0),
            escape(&tick)
        );
    }
    let _ = writeln!(
        svg,
        "<line class=\"axis\" x1=\"{PLOT_LEFT}\" y1=\"{PLOT_BOTTOM}\" x2=\"{PLOT_RIGHT}\" y2=\"{PLOT_BOTTOM}\"/>\
         <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
        Coord((PLOT_LEFT + PLOT_RIGHT) / 2.0),
        Coord(PLOT_BOTTOM + 40.0),
        escape(label)
    );
}

fn write_opening_marker(svg: &mut String, frame: &Frame) {
    if !(frame.x_min <= 0.0 && 0.0 <= frame.x_max) {
        return;
    }
    let x = frame.x(0.0);
    let _ = writeln!(
        svg,
        "<line class=\"opening\" x1=\"{0}\" y1=\"{PLOT_TOP}\" x2=\"{0}\" y2=\"{PLOT_BOTTOM}\"/>\
         <text x=\"{1}\" y=\"{2}\" class=\"halo\">opening</text>",
        Coord(x),
        Coord(x + 6.0),
        Coord(PLOT_TOP + 12.0)
    );
}

fn write_series(svg: &mut String, frame: &Frame, series: &Series) {
    let pieces = pixel_pieces(frame, &series.points);
    if pieces.is_empty() {
        return;
    }
    let (path, fill) = if series.fill {
        (area_path(&pieces, frame.baseline()), series.color)
    } else {
        (line_path(&pieces), "none")
    };
    let _ = writeln!(
        svg,
        "<path d=\"{path}\" fill=\"{fill}\" stroke=\"{}\" stroke-width=\"{}\" \
         stroke-linejoin=\"round\" stroke-linecap=\"round\"><title>{}</title></path>",
        series.color,
        Coord(series.width),
        escape(&series.name)
    );
}

/// The drawable runs of `points` in canvas units, rounded and thinned.
fn pixel_pieces(frame: &Frame, points: &[(f64, f64)]) -> Vec<Vec<(f64, f64)>> {
    let mut pieces = Vec::new();
    let mut current = Vec::new();
    for &(x, y) in points {
        if x.is_finite() && frame.scale.accepts(y) {
            current.push((round_tenth(frame.x(x)), round_tenth(frame.y(y))));
        } else if !current.is_empty() {
            pieces.push(thin(std::mem::take(&mut current)));
        }
    }
    if !current.is_empty() {
        pieces.push(thin(current));
    }
    pieces
}

/// Drops points that change nothing on screen: repeats, and the inner points of a flat run
/// (a sold-out province stays at zero for most of the run).
fn thin(points: Vec<(f64, f64)>) -> Vec<(f64, f64)> {
    let mut kept: Vec<(f64, f64)> = Vec::with_capacity(points.len());
    for (index, &point) in points.iter().enumerate() {
        if kept.last() == Some(&point) {
            continue;
        }
        let level = |other: &(f64, f64)| other.1 == point.1;
        let inside_flat_run =
            kept.last().is_some_and(level) && points.get(index + 1).is_some_and(level);
        if !inside_flat_run {
            kept.push(point);
        }
    }
    kept
}

fn line_path(pieces: &[Vec<(f64, f64)>]) -> String {
    let mut path = String::new();
    for piece in pieces {
        path.push('M');
        write_points(&mut path, piece);
        if piece.len() == 1 {
            // A lone second would draw nothing; a tiny stroke with round caps shows a dot.
            path.push_str("h0.5");
        }
    }
    path
}

fn area_path(pieces: &[Vec<(f64, f64)>], baseline: f64) -> String {
    let mut path = String::new();
    for piece in pieces {
        let (Some(first), Some(last)) = (piece.first(), piece.last()) else {
            continue;
        };
        let _ = write!(path, "M{},{} ", Coord(first.0), Coord(baseline));
        write_points(&mut path, piece);
        let _ = write!(path, "{},{}Z", Coord(last.0), Coord(baseline));
    }
    path
}

/// Writes `x,y` pairs separated by spaces (after a move, SVG reads them as lines).
fn write_points(path: &mut String, points: &[(f64, f64)]) {
    for (x, y) in points {
        let _ = write!(path, "{},{} ", Coord(*x), Coord(*y));
    }
}

fn write_legend(svg: &mut String, entries: &[LegendEntry]) {
    let rows = ((PLOT_BOTTOM - PLOT_TOP) / LEGEND_ROW).floor() as usize;
    let shown = if entries.len() > rows {
        rows.saturating_sub(1)
    } else {
        entries.len()
    };
    for (row, entry) in entries.iter().take(shown).enumerate() {
        let top = PLOT_TOP + row as f64 * LEGEND_ROW;
        write_swatch(svg, entry, top);
        let label: String = entry.label.chars().take(LEGEND_LABEL_CHARS).collect();
        let _ = writeln!(
            svg,
            "<text x=\"{}\" y=\"{}\">{}</text>",
            Coord(LEGEND_LEFT + 20.0),
            Coord(top + 11.0),
            escape(&label)
        );
    }
    if shown < entries.len() {
        let _ = writeln!(
            svg,
            "<text x=\"{}\" y=\"{}\">+{} more</text>",
            Coord(LEGEND_LEFT + 20.0),
            Coord(PLOT_TOP + shown as f64 * LEGEND_ROW + 11.0),
            entries.len() - shown
        );
    }
}

fn write_swatch(svg: &mut String, entry: &LegendEntry, top: f64) {
    let _ = if entry.fill {
        writeln!(
            svg,
            "<rect x=\"{LEGEND_LEFT}\" y=\"{}\" width=\"14\" height=\"10\" fill=\"{}\"/>",
            Coord(top + 2.0),
            entry.color
        )
    } else {
        writeln!(
            svg,
            "<line x1=\"{LEGEND_LEFT}\" y1=\"{0}\" x2=\"{1}\" y2=\"{0}\" stroke=\"{2}\" stroke-width=\"{3}\"/>",
            Coord(top + 7.0),
            Coord(LEGEND_LEFT + 14.0),
            entry.color,
            Coord(entry.width.max(1.5))
        )
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(t_s: f64, ok: u64, timeouts: u64) -> TimelinePoint {
        let mut outcomes = BTreeMap::from([("ok".to_string(), ok)]);
        if timeouts > 0 {
            outcomes.insert("timeout".to_string(), timeouts);
        }
        TimelinePoint {
            t_s,
            outcomes,
            p50_ms: 2.0,
            p99_ms: 40.0,
            reserve_p99_ms: 0.0,
            send_lag_p99_ms: 1.0,
        }
    }

    fn small_run() -> Summary {
        let mut summary = Summary {
            timeline: vec![point(-2.0, 10, 0), point(-1.0, 12, 0), point(0.0, 900, 3)],
            ..Summary::default()
        };
        // A second that could not be measured must leave a gap, not a NaN coordinate.
        summary.timeline.push(TimelinePoint {
            t_s: 1.0,
            p50_ms: f64::NAN,
            p99_ms: f64::INFINITY,
            ..point(1.0, 400, 0)
        });
        summary.seats = SeatsTimeline {
            provinces: vec![(1, "Tehran".to_string()), (2, "Qom".to_string())],
            seats_total: vec![100, 40],
            samples: vec![
                (-1.0, vec![100, 40]),
                (0.0, vec![60, 40]),
                (1.0, vec![0, 35]),
            ],
        };
        summary.throughput_rps = f64::NAN;
        summary
    }

    #[test]
    fn a_run_with_a_timeline_draws_all_three_charts_without_nan() {
        let page = render(&small_run());
        assert_eq!(page.matches("<svg").count(), 3, "{page}");
        assert!(page.contains("opening"));
        assert!(!page.contains("NaN"));
        assert!(!page.contains("inf"));
    }

    #[test]
    fn inserted_text_is_escaped() {
        let summary = Summary {
            target: "<script>alert('x')</script>".to_string(),
            client_violations: vec!["a & b <script>".to_string()],
            ..small_run()
        };
        let page = render(&summary);
        assert!(!page.contains("<script>"));
        assert!(page.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"));
        assert!(page.contains("a &amp; b"));
        assert!(page.contains("FAILED"));
    }

    #[test]
    fn an_empty_summary_renders_a_page_saying_no_data() {
        let page = render(&Summary::default());
        assert!(page.starts_with("<!DOCTYPE html>"));
        assert!(page.ends_with("</html>\n"));
        assert!(page.contains("no data"));
        assert!(!page.contains("<svg"));
    }
}
