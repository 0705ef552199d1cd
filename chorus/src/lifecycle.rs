//! The ordered shutdown of a node, in one idiom: a `CancellationToken` per phase, and a
//! `TaskTracker` per phase that every task of the node is spawned on (nothing is detached).
//!
//! A node's tasks belong to one of two phases, stopped in this order by [`NodeTasks::shutdown`]:
//!
//! 1. **edge**: the HTTP server and the WebSocket sessions (and what keeps the edge's presence
//!    and broadcast tail). Its token is cancelled first: the server stops accepting, open HTTP
//!    connections finish their request in flight, sessions write the acks they owe and close
//!    with 1012 (reconnect now); the phase is awaited until every one of them ended.
//! 2. **pipeline**: the router, the projector (under its supervisor), the shared-history
//!    follower and the dependency probes. Cancelled once the edge is down; each finishes its
//!    batch in flight, and the phase is awaited.
//!
//! Then the caller closes the log (`chorus serve`: the embedded log is closed last). Both phase
//! tokens are children of one node token, cancelled when the node's tasks are dropped without
//! a shutdown (every task is then asked to stop, unawaited). A task that ends by itself before
//! shutdown (a failure) is reported by [`NodeTasks::failed`].

use std::future::Future;

use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;

/// How a task ended: its name and result.
type Outcome = (&'static str, anyhow::Result<()>);

/// One phase of a node's shutdown: its token and its tasks.
struct Phase {
    token: CancellationToken,
    tracker: TaskTracker,
}

impl Phase {
    fn new(node: &CancellationToken) -> Self {
        Phase {
            token: node.child_token(),
            tracker: TaskTracker::new(),
        }
    }

    /// Cancels the phase and waits until every one of its tasks ended.
    async fn stop(&self) {
        self.token.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

/// Which phase a task belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    /// Stopped first: the HTTP server, sessions, what the edge keeps running beside them.
    Edge,
    /// Stopped once the edge is down: router, projector, followers, probes.
    Pipeline,
}

/// Every task of a node, by phase (see the module docs).
pub(crate) struct NodeTasks {
    /// Cancels both phases when dropped.
    node: DropGuard,
    edge: Phase,
    pipeline: Phase,
    outcomes: mpsc::UnboundedSender<Outcome>,
    finished: mpsc::UnboundedReceiver<Outcome>,
}

impl NodeTasks {
    pub(crate) fn new() -> Self {
        let node = CancellationToken::new();
        let (outcomes, finished) = mpsc::unbounded_channel();
        NodeTasks {
            edge: Phase::new(&node),
            pipeline: Phase::new(&node),
            node: node.drop_guard(),
            outcomes,
            finished,
        }
    }

    /// The token a task of `stage` stops on.
    pub(crate) fn token(&self, stage: Stage) -> CancellationToken {
        self.phase(stage).token.clone()
    }

    fn phase(&self, stage: Stage) -> &Phase {
        match stage {
            Stage::Edge => &self.edge,
            Stage::Pipeline => &self.pipeline,
        }
    }

    /// Runs `task` in `stage`; its outcome is reported when it ends.
    pub(crate) fn spawn(
        &self,
        stage: Stage,
        name: &'static str,
        task: impl Future<Output = anyhow::Result<()>> + Send + 'static,
    ) {
        let outcomes = self.outcomes.clone();
        self.phase(stage).tracker.spawn(async move {
            let outcome = task.await;
            let _ = outcomes.send((name, outcome));
        });
    }

    /// Resolves when a task ends by itself (before shutdown); returns which and why.
    pub(crate) async fn failed(&mut self) -> (String, anyhow::Error) {
        match self.finished.recv().await {
            Some((name, Ok(()))) => (name.to_owned(), anyhow::anyhow!("stopped")),
            Some((name, Err(error))) => (name.to_owned(), error),
            None => ("all".to_owned(), anyhow::anyhow!("no task running")),
        }
    }

    /// Stops the edge and waits for it, then stops the pipeline and waits for it. Returns what
    /// failed, in the order it ended.
    pub(crate) async fn shutdown(mut self) -> Vec<(&'static str, anyhow::Error)> {
        self.edge.stop().await;
        self.pipeline.stop().await;
        drop(self.node);
        drop(self.outcomes);
        let mut failures = Vec::new();
        while let Some((name, outcome)) = self.finished.recv().await {
            if let Err(error) = outcome {
                failures.push((name, error));
            }
        }
        failures
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn the_pipeline_stops_only_after_every_edge_task_ended() {
        let tasks = NodeTasks::new();
        let order = Arc::new(Mutex::new(Vec::new()));
        let (edge, pipeline) = (tasks.token(Stage::Edge), tasks.token(Stage::Pipeline));
        let (edge_order, pipeline_order) = (order.clone(), order.clone());
        let pipeline_seen_by_edge = pipeline.clone();
        tasks.spawn(Stage::Edge, "edge", async move {
            edge.cancelled().await;
            // a session draining: the pipeline keeps running meanwhile
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert!(!pipeline_seen_by_edge.is_cancelled());
            edge_order.lock().unwrap().push("edge ended");
            Ok(())
        });
        tasks.spawn(Stage::Pipeline, "pipeline", async move {
            pipeline.cancelled().await;
            pipeline_order.lock().unwrap().push("pipeline stopping");
            anyhow::bail!("failed while stopping")
        });
        let failures = tasks.shutdown().await;
        assert_eq!(*order.lock().unwrap(), ["edge ended", "pipeline stopping"]);
        assert_eq!(failures.len(), 1);
        assert_eq!(failures[0].0, "pipeline");
    }

    #[tokio::test]
    async fn a_task_that_ends_by_itself_is_reported() {
        let mut tasks = NodeTasks::new();
        tasks.spawn(Stage::Pipeline, "router", async { anyhow::bail!("fenced") });
        let (name, error) = tasks.failed().await;
        assert_eq!(
            (name.as_str(), error.to_string().as_str()),
            ("router", "fenced")
        );
        assert!(tasks.shutdown().await.is_empty());
    }
}
