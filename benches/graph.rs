//! Graph lookups for a 5-recipient message on a synthetic graph of
//! realistic shape, and heap bytes per edge (counting allocator).
//!
//! `cargo bench --bench graph` (GRAPH_BENCH_EDGES sets the size; default
//! 1,000,000 sender-recipient edges).

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};

use criterion::{criterion_group, criterion_main, Criterion};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use misdirect::graph::{Graph, GraphConfig, GraphView, LearnInput};
use misdirect::message::{Field, Recipient};

struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size(), Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new, Ordering::Relaxed);
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static A: Counting = Counting;

/// Skewed pick in 0..n (small indices far more likely), like real contact
/// frequencies.
fn skewed(rng: &mut StdRng, n: usize) -> usize {
    let u: f64 = rng.gen();
    ((u * u * u) * n as f64) as usize % n.max(1)
}

struct Synthetic {
    graph: Graph,
    senders: Vec<String>,
    contacts: Vec<Vec<String>>,
    messages: usize,
}

/// Senders with 20..400 contacts each, drawn from a shared pool (colleagues
/// shared across senders, external domains), 1-5 recipients per message,
/// every message with a Message-ID and subject when `threads`.
fn build(target_edges: usize, threads: bool) -> Synthetic {
    let mut rng = StdRng::seed_from_u64(7);
    let pool_size = (target_edges / 4).max(1000);
    let pool: Vec<String> = (0..pool_size)
        .map(|i| format!("user{i}@dom{}.example", i % 5000))
        .collect();
    let mut graph = Graph::new(GraphConfig::default());
    let mut senders = Vec::new();
    let mut contacts = Vec::new();
    let mut messages = 0usize;
    let mut s = 0usize;
    while graph.edge_count() < target_edges {
        let sender = format!("sender{s}@corp.example");
        let n = 20 + skewed(&mut rng, 380);
        let mine: Vec<String> = (0..n)
            .map(|_| pool[skewed(&mut rng, pool_size)].clone())
            .collect();
        let msgs = n * 2;
        for m in 0..msgs {
            let k = 1 + skewed(&mut rng, 5);
            let rcpts: Vec<Recipient> = (0..k)
                .map(|j| Recipient {
                    address: mine[skewed(&mut rng, n)].clone(),
                    name: None,
                    field: if j == 0 { Field::To } else { Field::Cc },
                })
                .collect();
            let mid = format!("<{s}.{m}@corp.example>");
            let subject = format!("topic {}", m % 50);
            graph.learn(&LearnInput {
                sender: &sender,
                sender_name: Some("Sender Name"),
                recipients: &rcpts,
                message_id: threads.then_some(mid.as_str()),
                subject: threads.then_some(subject.as_str()),
                attachments: Vec::new(),
                ts: 1_700_000_000 + (m as i64) * 600,
            });
            messages += 1;
        }
        senders.push(sender);
        contacts.push(mine);
        s += 1;
    }
    Synthetic {
        graph,
        senders,
        contacts,
        messages,
    }
}

/// What a scorer reads for one message with 5 recipients.
fn lookups(g: &Graph, sender: &str, rcpts: &[&str; 5]) -> u64 {
    let mut acc = g.sender(sender).messages as u64;
    for r in rcpts {
        if let Some(e) = g.edge(sender, r) {
            acc += e.total() as u64;
        }
        acc += g.address(r).senders as u64;
        let d = misdirect::address::domain_of(r);
        acc += g.sender_domain(sender, d).map(|e| e.total()).unwrap_or(0) as u64;
        acc += g.domain(d).addresses as u64;
        acc += g.display_names(r).len() as u64;
    }
    for i in 0..5 {
        for j in i + 1..5 {
            acc += g.co_count(sender, rcpts[i], rcpts[j]) as u64;
        }
    }
    acc += g
        .thread_participants(&["0.1@corp.example".to_string()])
        .len() as u64;
    acc += g.subject_participants(sender, "RE: topic 3").len() as u64;
    acc
}

fn bench(c: &mut Criterion) {
    let edges: usize = std::env::var("GRAPH_BENCH_EDGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    for threads in [false, true] {
        let mut syn = build(edges, threads);
        // A loaded graph has exact-size lists; a learning one grows them by
        // doubling. Report both. The graph's own heap is what dropping it
        // frees (the generator's address lists are not counted).
        let before_shrink = LIVE.load(Ordering::Relaxed);
        syn.graph.shrink_to_fit();
        let saved = before_shrink - LIVE.load(Ordering::Relaxed);
        let (edges_n, co_n, addrs_n, approx) = (
            syn.graph.edge_count(),
            syn.graph.co_count_total(),
            syn.graph.address_count(),
            syn.graph.approx_bytes(),
        );
        let bytes = {
            let live = LIVE.load(Ordering::Relaxed);
            let moved = std::mem::take(&mut syn.graph);
            drop(moved);
            let freed = live - LIVE.load(Ordering::Relaxed);
            // Build it again for the lookups (same seed, same graph).
            syn = build(edges, threads);
            syn.graph.shrink_to_fit();
            freed
        };
        eprintln!(
            "graph ({}): {} edges, {} co-recipient pairs, {} addresses, {} senders, {} messages; \
             heap {} MB = {:.1} bytes/edge, {:.1} per edge or co-recipient pair \
             (Graph::approx_bytes: {:.1}); {:.1} bytes/edge before shrink_to_fit",
            if threads {
                "with thread index"
            } else {
                "without thread index"
            },
            edges_n,
            co_n,
            addrs_n,
            syn.senders.len(),
            syn.messages,
            bytes / 1_000_000,
            bytes as f64 / edges_n as f64,
            bytes as f64 / (edges_n + co_n) as f64,
            approx as f64 / edges_n as f64,
            (bytes + saved) as f64 / edges_n as f64,
        );
        let g = &syn.graph;
        if threads {
            // Timing is measured once, on the full graph.
            let mut rng = StdRng::seed_from_u64(11);
            let probes: Vec<(usize, [usize; 5])> = (0..1024)
                .map(|_| {
                    let s = rng.gen_range(0..syn.senders.len());
                    let n = syn.contacts[s].len();
                    let mut r = [0usize; 5];
                    for x in r.iter_mut() {
                        *x = rng.gen_range(0..n);
                    }
                    (s, r)
                })
                .collect();
            let mut i = 0usize;
            c.bench_function("graph lookups, 5-recipient message", |b| {
                b.iter(|| {
                    let (s, r) = &probes[i % probes.len()];
                    i += 1;
                    let cs = &syn.contacts[*s];
                    let rcpts = [
                        cs[r[0]].as_str(),
                        cs[r[1]].as_str(),
                        cs[r[2]].as_str(),
                        cs[r[3]].as_str(),
                        "stranger@unknown.example",
                    ];
                    black_box(lookups(g, &syn.senders[*s], &rcpts))
                })
            });
        }
        drop(syn);
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50);
    targets = bench
}
criterion_main!(benches);
