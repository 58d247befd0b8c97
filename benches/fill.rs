//! A synthetic customer fill: N customers with one ORDER each through `Engine::apply`,
//! then the process's peak and current RSS per customer and the ORDER path's rate.
//!
//!     cargo bench --bench fill -- 10000000
//!
//! The events are made one at a time (not held in memory), spread over 4 tasks and
//! over a day of event time, with the allocator of the `engaged` binary (mimalloc).
//! Prints the RSS before the fill (the process and the empty engine), after it, and
//! the peak; "per customer" is (peak − before) / N, which includes every growth
//! step's transient copies.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Instant;

use engaged::event::{Event, Purchase, PurchaseType};
use engaged::state::{CoreConfig, Engine, TopicPartition};

/// mimalloc (the binary's allocator), counting the bytes the process holds.
struct Counting;

static LIVE: AtomicI64 = AtomicI64::new(0);

// The one way to count a process's heap: wrap the allocator.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as i64, Ordering::Relaxed);
        unsafe { mimalloc::MiMalloc.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as i64, Ordering::Relaxed);
        unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// `VmRSS` and `VmHWM` of this process, in bytes.
fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn main() {
    let n: u64 = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let engine = Engine::new(CoreConfig::default());
    let start = engaged::demo::generator::DEFAULT_START;
    let step = (86_400_000 / n.max(1)).max(1) as i64;
    let (before, _) = rss();
    let heap_before = LIVE.load(Ordering::Relaxed);
    let t0 = Instant::now();
    let mut rejected = 0u64;
    for i in 0..n {
        let e = Event::Purchase(Purchase {
            event_id: format!("fill-order-{i:09}"),
            event_time: start + i as i64 * step,
            customer_id: format!("fill-customer-{i:09}"),
            order_id: format!("fill-order-{i:09}"),
            kind: PurchaseType::Order,
            amount_minor: 1_000 + (i % 5_000) as i64,
            currency: "EUR".into(),
            cost_minor: None,
            items: 1,
            campaign_id: None,
        });
        let tp = TopicPartition::new("purchases", (i % 4) as i32);
        rejected += u64::from(engine.apply(&tp, &e).is_err());
    }
    let heap_filled = LIVE.load(Ordering::Relaxed) - heap_before;
    let secs = t0.elapsed().as_secs_f64();
    let (after, peak) = rss();
    let size = engine.state_size();
    println!(
        "fill: {n} customers ({rejected} rejected) in {secs:.2} s ({:.0} ORDERs/s incl. building each event)",
        n as f64 / secs
    );
    println!(
        "rss: before {:.0} MB, after {:.0} MB, peak {:.0} MB; per customer {:.0} B at the peak, {:.0} B after",
        before as f64 / 1e6,
        after as f64 / 1e6,
        peak as f64 / 1e6,
        peak.saturating_sub(before) as f64 / n.max(1) as f64,
        after.saturating_sub(before) as f64 / n.max(1) as f64
    );
    println!("state (the memory model's bound): {size}");
    // Every input's watermark an hour past the last ORDER: what only recent orders
    // need (attribution, remembered event ids) is forgotten, as in steady state.
    let end = start + n as i64 * step + 3_600_000;
    for topic in ["pageviews", "emails", "purchases", "surveys"] {
        for p in 0..4 {
            engine.advance(&TopicPartition::new(topic, p), end);
        }
    }
    engine.evict(end);
    let heap_steady = LIVE.load(Ordering::Relaxed) - heap_before;
    println!(
        "heap: {:.0} B per customer after the fill, {:.0} B once the watermark passed (state: {})",
        heap_filled as f64 / n.max(1) as f64,
        heap_steady as f64 / n.max(1) as f64,
        engine.state_size()
    );
}
