//! A synthetic organisation's mail, for benchmarks and load tests: a graph
//! of a chosen size with a realistic shape (teams, a skewed popularity of
//! colleagues, external partners, group messages), built without any real
//! data.
//!
//! Shape: `people` addresses at `corp.example` in teams of 20. Each person's
//! circle is their team, about 60 other colleagues drawn with a skew towards
//! popular people, and about 20 external contacts at 2,000 partner domains.
//! Every circle member is written to at least once, in messages of 1 to 5
//! recipients; then as many messages again go to circle members drawn with a
//! Zipf-like rank weighting, some of them to larger groups.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{Graph, GraphConfig, LearnInput, Ts};
use crate::message::{Field, Recipient};

/// Average circle size per person.
pub const CIRCLE: usize = 100;
const TEAM: usize = 20;
const PARTNER_DOMAINS: usize = 2000;
/// Start of the synthetic mail history (2026-01-01).
pub const START: Ts = 1_767_225_600;

/// The address of synthetic person `i`.
pub fn person(i: usize) -> String {
    format!("p{i}@corp.example")
}

fn external(i: usize) -> String {
    format!("x{i}@partner{}.example", i % PARTNER_DOMAINS)
}

/// A synthetic organisation of `people` persons.
#[derive(Debug, Clone)]
pub struct Org {
    pub people: usize,
    circles: Vec<Vec<String>>,
}

impl Org {
    /// Build circles deterministically from `seed`.
    pub fn new(people: usize, seed: u64) -> Org {
        let people = people.max(TEAM);
        let mut rng = StdRng::seed_from_u64(seed);
        let mut circles = Vec::with_capacity(people);
        for i in 0..people {
            let team = i / TEAM * TEAM;
            let mut c: Vec<String> = (team..(team + TEAM).min(people))
                .filter(|j| *j != i)
                .map(person)
                .collect();
            for _ in 0..60 {
                // Skewed towards low ids: popular people.
                let u: f64 = rng.gen();
                let j = ((u * u) * people as f64) as usize % people;
                if j != i {
                    c.push(person(j));
                }
            }
            for _ in 0..20 {
                c.push(external(rng.gen_range(0..people * 20)));
            }
            c.sort();
            c.dedup();
            // Shuffle so rank (popularity for this sender) is random.
            for k in (1..c.len()).rev() {
                let j = rng.gen_range(0..=k);
                c.swap(k, j);
            }
            circles.push(c);
        }
        Org { people, circles }
    }

    /// People needed for about `edges` sender-recipient edges.
    pub fn people_for_edges(edges: usize) -> usize {
        (edges / (CIRCLE - 3)).max(TEAM)
    }

    /// The circle (known contacts, most frequent first) of person `i`.
    pub fn circle(&self, i: usize) -> &[String] {
        &self.circles[i % self.people]
    }

    /// Feed the organisation's mail to `f`, in time order: first every circle
    /// member at least once, then as many messages again drawn by rank.
    pub fn for_each_message(&self, seed: u64, mut f: impl FnMut(&str, &[Recipient], Ts)) {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
        let mut ts = START;
        let mut rcpts: Vec<Recipient> = Vec::with_capacity(64);
        for (i, circle) in self.circles.iter().enumerate() {
            let sender = person(i);
            let mut k = 0;
            while k < circle.len() {
                let n = rng.gen_range(1..=5).min(circle.len() - k);
                rcpts.clear();
                for (idx, a) in circle[k..k + n].iter().enumerate() {
                    rcpts.push(Recipient {
                        address: a.clone(),
                        name: None,
                        field: if idx == 0 { Field::To } else { Field::Cc },
                    });
                }
                k += n;
                ts += 1;
                f(&sender, &rcpts, ts);
            }
        }
        let total = self.circles.len() * CIRCLE / 3;
        for _ in 0..total {
            let i = rng.gen_range(0..self.people);
            let circle = &self.circles[i];
            if circle.is_empty() {
                continue;
            }
            let n = match rng.gen_range(0..100) {
                0..=59 => 1,
                60..=94 => rng.gen_range(2..=5),
                _ => rng.gen_range(6..=30),
            };
            rcpts.clear();
            for _ in 0..n {
                let u: f64 = rng.gen();
                let r = ((u * u * u) * circle.len() as f64) as usize % circle.len();
                let a = &circle[r];
                if !rcpts.iter().any(|x| &x.address == a) {
                    rcpts.push(Recipient {
                        address: a.clone(),
                        name: None,
                        field: if rcpts.is_empty() {
                            Field::To
                        } else {
                            Field::Cc
                        },
                    });
                }
            }
            ts += 1;
            f(&person(i), &rcpts, ts);
        }
    }

    /// Build the in-memory graph of this organisation.
    pub fn graph(&self, seed: u64, cfg: GraphConfig) -> Graph {
        let mut g = Graph::new(cfg);
        self.for_each_message(seed, |sender, rcpts, ts| {
            g.learn(&LearnInput {
                sender,
                sender_name: None,
                recipients: rcpts,
                message_id: None,
                subject: None,
                attachments: Vec::new(),
                ts,
            })
        });
        g
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::GraphView;

    #[test]
    fn org_graph_has_requested_shape() {
        let org = Org::new(200, 7);
        let g = org.graph(7, GraphConfig::default());
        // Every circle member was written to at least once.
        for i in [0, 57, 199] {
            for c in org.circle(i) {
                assert!(g.edge(&person(i), c).is_some(), "{i} -> {c}");
            }
        }
        let per_person = g.edge_count() as f64 / 200.0;
        assert!((70.0..=110.0).contains(&per_person), "{per_person}");
        // Deterministic.
        assert_eq!(
            Org::new(200, 7)
                .graph(7, GraphConfig::default())
                .edge_count(),
            g.edge_count()
        );
    }
}
