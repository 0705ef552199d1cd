//! Projection scenarios: the projector (history + search) against raw Tantivy indexing of the same
//! documents, search latency over a large history, and replay (rebuilding every projection).
//!
//! Stub: being written.

use crate::report::Report;

/// Options of the projection scenarios.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Messages in the timeline the projections are built from.
    #[arg(long, default_value_t = 1_000_000)]
    pub messages: u64,
}

pub async fn run(_args: &Args) -> anyhow::Result<Vec<Report>> {
    anyhow::bail!("not written yet")
}
