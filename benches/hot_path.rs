//! Micro-benchmarks of the per-request work that does not touch a socket:
//! cutting lines out of a read, and answering them.
//!
//! Run: `cargo bench --bench hot_path`

use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use loopline::framing::{cut_line, Cut};
use loopline::protocol::Loopline;
use loopline::service::{Context, Service};
use loopline::stats::Stats;

/// Cuts every line of `buf` and answers it into `out`, as a connection does
/// with one read (authentication off).
fn serve_read(buf: &[u8], stats: &Stats, now: Instant, out: &mut Vec<u8>) -> usize {
    let mut session = Loopline.session(&Context::new(stats, now));
    // One context per read, as a connection builds one per batch of lines.
    let context = Context::new(stats, now);
    let mut used = 0;
    let mut lines = 0;
    while let Cut::Line { line, used: n } = cut_line(&buf[used..], 1024) {
        used += n;
        Loopline.respond(line, &mut session, &context, out);
        lines += 1;
    }
    lines
}

fn benches(c: &mut Criterion) {
    let now = Instant::now();
    let stats = Stats::new(now);

    let pings = b"PING\r\n".repeat(32);
    let mut group = c.benchmark_group("pipelined_32");
    group.throughput(Throughput::Elements(32));
    let mut out = Vec::with_capacity(64 * 1024);
    group.bench_function("PING", |b| {
        b.iter(|| {
            out.clear();
            black_box(serve_read(black_box(&pings), &stats, now, &mut out))
        })
    });
    let echoes = format!("ECHO {}\n", "x".repeat(512)).repeat(32);
    group.bench_function("ECHO_512", |b| {
        b.iter(|| {
            out.clear();
            black_box(serve_read(
                black_box(echoes.as_bytes()),
                &stats,
                now,
                &mut out,
            ))
        })
    });
    group.finish();

    c.bench_function("cut_line/1KiB_partial", |b| {
        let partial = vec![b'x'; 1024];
        b.iter(|| black_box(cut_line(black_box(&partial), 1024)))
    });
    c.bench_function("respond/STATS", |b| {
        b.iter(|| {
            out.clear();
            let context = Context::new(&stats, now);
            black_box(Loopline.respond(
                b"STATS",
                &mut Loopline.session(&context),
                &context,
                &mut out,
            ))
        })
    });
}

criterion_group!(hot_path, benches);
criterion_main!(hot_path);
