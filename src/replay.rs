//! Offline replay: process archived messages in Date order as the daemon
//! would. Each message is scored against the graph as it stands, one JSON
//! line is printed, and the message is then learnt from when the verdict
//! is `deliver` (unless `--no-learn`).
//!
//! The JSON line is the contract for every offline evaluation:
//! `{"message_id": "...", "date": "...", "from": "...", "score": 0.93,
//! "action": "hold", "model": "...", "recipients": [{"address": "...",
//! "field": "to", "score": 0.93, "reasons": ["..."]}]}`

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;

use serde::Serialize;

use crate::config::TenantsConfig;
use crate::graph::memory::format_ts;
use crate::graph::{Graph, GraphConfig, LearnInput};
use crate::import::{ImportedMessage, ReadCounts};
use crate::policy::Policy;
use crate::scorer::{ScoreInput, Scorer};
use crate::verdict::{Action, RecipientScore};

/// One output line.
#[derive(Debug, Serialize)]
pub struct ReplayLine<'a> {
    pub message_id: Option<&'a str>,
    pub date: String,
    pub from: &'a str,
    pub score: f64,
    pub action: Action,
    pub model: String,
    pub recipients: Vec<RecipientScore>,
}

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReplaySummary {
    pub history: u64,
    pub scored: u64,
    pub learnt: u64,
    pub score_errors: u64,
    pub actions: std::collections::BTreeMap<String, u64>,
    pub read: ReadCounts,
}

/// Replay state: one in-memory graph per tenant.
pub struct Replay {
    pub graphs: HashMap<String, Graph>,
    pub graph_cfg: GraphConfig,
    pub tenants: TenantsConfig,
    pub scorer: Arc<dyn Scorer>,
    pub policy: Policy,
    pub learn: bool,
}

fn by_date(msgs: &mut [ImportedMessage]) {
    msgs.sort_by_key(|m| m.ts);
}

impl Replay {
    fn learn_one(&mut self, m: &ImportedMessage) {
        let Some(sender) = m.meta.sender() else {
            return;
        };
        let tenant = self.tenants.tenant_for(sender).to_string();
        if let Some(input) = LearnInput::from_meta(&m.meta, &m.meta.recipients, m.ts) {
            self.graphs
                .entry(tenant)
                .or_insert_with(|| Graph::new(self.graph_cfg.clone()))
                .learn(&input);
        }
    }

    /// Learn from history messages (in Date order), printing nothing.
    pub fn history(&mut self, mut msgs: Vec<ImportedMessage>) -> u64 {
        by_date(&mut msgs);
        for m in &msgs {
            self.learn_one(m);
        }
        msgs.len() as u64
    }

    /// Score messages in Date order, writing one JSON line each.
    pub fn run(
        &mut self,
        mut msgs: Vec<ImportedMessage>,
        out: &mut dyn Write,
        summary: &mut ReplaySummary,
    ) -> std::io::Result<()> {
        by_date(&mut msgs);
        let empty = Graph::default();
        for m in &msgs {
            let Some(sender) = m.meta.sender() else {
                continue;
            };
            let tenant = self.tenants.tenant_for(sender);
            let g = self.graphs.get(tenant).unwrap_or(&empty);
            let input = ScoreInput {
                meta: &m.meta,
                recipients: &m.meta.recipients,
                now: m.ts,
            };
            let scores = match self.scorer.score(g, &input) {
                Ok(s) => s,
                Err(_) => {
                    summary.score_errors += 1;
                    continue;
                }
            };
            let verdict = self.policy.decide(scores);
            let line = ReplayLine {
                message_id: m.meta.message_id.as_deref(),
                date: format_ts(m.ts),
                from: sender,
                score: verdict.score,
                action: verdict.action,
                model: verdict.model,
                recipients: verdict.recipients,
            };
            serde_json::to_writer(&mut *out, &line)?;
            out.write_all(b"\n")?;
            summary.scored += 1;
            *summary
                .actions
                .entry(verdict.action.as_str().to_string())
                .or_default() += 1;
            if self.learn && verdict.action == Action::Deliver {
                self.learn_one(m);
                summary.learnt += 1;
            }
        }
        Ok(())
    }
}
