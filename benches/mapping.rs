//! What mapping costs next to parsing: the 7 KB Shopify order through the shipped
//! `mappings/shopify-orders.yaml`, against `serde_json::from_slice` of the same bytes and the
//! pruned parse ingest does (only what the mapping reads is built), measured in the same run.
//! Prints nanoseconds and heap allocations per event.
//!
//! `cargo bench --bench mapping` (add `-- --quick` for a short run).

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use casegate::env::Env;
use casegate::inbound::{Headers, InboundRequest};
use casegate::mapping::{CompiledMapping, EventInput, prune};
use casegate::verify::Verified;
use serde_json::Value;

/// Counts every allocation (and reallocation) made through the global allocator.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

struct Measured {
    ns: f64,
    allocations: f64,
    bytes: f64,
}

/// Runs `f` repeatedly for `budget` in rounds and keeps the fastest round's time per call
/// (the least disturbed by the machine); allocations are the same every call.
fn measure(budget: Duration, mut f: impl FnMut()) -> Measured {
    for _ in 0..100 {
        f();
    }
    let per_round = {
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < Duration::from_millis(20) {
            f();
            n += 1;
        }
        n.max(1)
    };
    let (a0, b0) = (
        ALLOCATIONS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
    );
    f();
    let allocations = (ALLOCATIONS.load(Ordering::Relaxed) - a0) as f64;
    let bytes = (BYTES.load(Ordering::Relaxed) - b0) as f64;
    let start = Instant::now();
    let mut best = f64::INFINITY;
    while start.elapsed() < budget {
        let round = Instant::now();
        for _ in 0..per_round {
            f();
        }
        best = best.min(round.elapsed().as_nanos() as f64 / per_round as f64);
    }
    Measured {
        ns: best,
        allocations,
        bytes,
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let budget = Duration::from_millis(if quick { 300 } else { 2_000 });
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mapping_path = root.join("mappings/shopify-orders.yaml");
    let text = std::fs::read_to_string(&mapping_path).expect("mappings/shopify-orders.yaml");
    let mapping = CompiledMapping::compile(&mapping_path, &text, &Env::default())
        .expect("the shipped mapping compiles");
    let body = std::fs::read(root.join("tests/fixtures/shopify/order.json"))
        .expect("tests/fixtures/shopify/order.json");
    let headers: Headers = [
        ("X-Shopify-Topic", "orders/create"),
        ("X-Shopify-Event-Id", "98880550-7158-44d4-b7cd-2c97c8a091b5"),
        (
            "X-Shopify-Shop-Domain",
            "northwind-outfitters.myshopify.com",
        ),
        ("X-Shopify-API-Version", "2024-04"),
    ]
    .into_iter()
    .collect();
    let payload: Value = serde_json::from_slice(&body).unwrap();
    let request = Verified::trusted_local_input(InboundRequest::local(headers, body.clone()));
    let input = EventInput::new(&request, &payload)
        .request_id("bench")
        .delivery_id(Some("98880550-7158-44d4-b7cd-2c97c8a091b5"));
    let cases = mapping.apply(&input).unwrap();
    assert_eq!(cases.len(), 1, "the order makes one case");

    let parse = measure(budget, || {
        black_box(serde_json::from_slice::<Value>(black_box(&body)).unwrap());
    });
    let text = std::str::from_utf8(&body).expect("the order is UTF-8");
    let pruned = measure(budget, || {
        black_box(prune::from_str(black_box(text), &mapping.keep).unwrap());
    });
    let map = measure(budget, || {
        black_box(mapping.apply(black_box(&input)).unwrap());
    });
    let filtered_headers: Headers = [("X-Shopify-Topic", "orders/updated")]
        .into_iter()
        .collect();
    let filtered_request =
        Verified::trusted_local_input(InboundRequest::local(filtered_headers, body.clone()));
    let filtered_input = EventInput::new(&filtered_request, &payload)
        .request_id("bench")
        .delivery_id(Some("98880550-7158-44d4-b7cd-2c97c8a091b5"));
    let filtered = measure(budget, || {
        black_box(mapping.apply(black_box(&filtered_input)).unwrap());
    });

    println!(
        "mapping benchmark: tests/fixtures/shopify/order.json ({} bytes) through \
         mappings/shopify-orders.yaml ({} case, {} bytes of data)",
        body.len(),
        cases.len(),
        cases[0].data.len()
    );
    println!();
    println!(
        "| {:<34} | {:>10} | {:>11} | {:>12} | {:>9} |",
        "step (per event)", "ns", "allocations", "bytes alloc", "vs parse"
    );
    println!(
        "|{:-<36}|{:->12}|{:->13}|{:->14}|{:->11}|",
        "", "", "", "", ""
    );
    for (name, m) in [
        ("serde_json::from_slice (7 KB)", &parse),
        ("parse of what the mapping reads", &pruned),
        ("CompiledMapping::apply (1 case)", &map),
        ("apply, filtered out (0 cases)", &filtered),
    ] {
        println!(
            "| {:<34} | {:>10.0} | {:>11.0} | {:>12.0} | {:>8.2}x |",
            name,
            m.ns,
            m.allocations,
            m.bytes,
            m.ns / parse.ns
        );
    }
}
